"""OpenTelemetry traces: one span per generation, a child span for each upstream HTTP call.

Off unless the `otel` extra is installed and tracing is asked for: `sluicegate serve --otel`,
or an OTLP endpoint in the environment (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). The exporter and the resource are the SDK's, configured by
the standard OTEL_* variables (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS...);
OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none keep it off. Off, the gateway holds no
Tracing and upstream calls no span: a generation pays one `is None` test.

A generation's span (`chat {model}`) follows the GenAI semantic conventions: the request's
model and sampling, the usage, the stop reason as `gen_ai.response.finish_reasons` (also
`cancelled`, `disconnected`, `timeout`, `error`), its id, and the first token as an event. It
is the current span while the provider starts, so the upstream call (`POST`, an HTTP client
span with `server.address` and `http.response.status_code`, open until the response body is
closed) is its child; it sends `traceparent` upstream, and a request that brings one makes
its generation's span a child of the caller's (routes/tracecontext.py). No prompt, answer,
key or header is ever recorded.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from sluicegate.config import Settings
from sluicegate.generation import Generation

try:
    from opentelemetry import context, propagate, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
except ImportError:  # the `otel` extra is not installed: tracing stays off
    INSTALLED = False
else:
    INSTALLED = True

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# gen_ai.provider.name for each kind of provider (well-known values where there is one).
SYSTEMS = {"openai": "openai", "anthropic": "anthropic", "bedrock": "aws.bedrock"}
BUILT_IN_SYSTEMS = {"local": "llama_cpp", "scripted": "sluicegate.scripted"}

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def wanted(flag: bool) -> bool:
    """Whether tracing is asked for: the flag, or an OTLP endpoint in the environment."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return False
    return flag or any(os.environ.get(name) for name in ENDPOINTS)


def configure(flag: bool) -> str | None:
    """Start exporting traces if asked for (see the module docstring); returns a line that
    says where to, or None when off. Raises RuntimeError if asked for without the extra."""
    if not wanted(flag):
        return None
    if not INSTALLED:
        raise RuntimeError("tracing needs the otel extra: pip install 'sluicegate[otel]'")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "sluicegate"}))
    exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # handlers' own instrumentation joins the same traces
    use(provider)
    env = os.environ.get
    where = (
        env(ENDPOINTS[1]) or env(ENDPOINTS[0], "http://localhost:4318").rstrip("/") + "/v1/traces"
    )
    return f"{resource.attributes.get(SERVICE_NAME)} to {where}"


def use(provider: TracerProvider | None) -> None:
    """Trace into `provider` from now on (None: stop). Gateways and upstream clients made
    after this call trace; those made before do not."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("sluicegate")


def shutdown() -> None:
    """Send the spans still buffered, then stop."""
    if _provider is not None:
        _provider.shutdown()
    use(None)


def tracing(settings: Settings) -> Tracing | None:
    """A gateway's Tracing, or None while tracing is off."""
    return None if _tracer is None else Tracing(_tracer, settings)


def upstream_span(method: str, url: str, headers: dict[str, str]) -> UpstreamSpan | None:
    """While tracing is on, a client span for an upstream call, its context added to the
    headers (after SigV4 signing: a header the signature does not name changes nothing), so
    that the upstream's own spans (another sluicegate's...) join the trace under it."""
    if _tracer is None:
        return None
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = host if parts.port is None else f"{host}:{parts.port}"  # no user or password
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "server.address": host,
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        "url.full": urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")),
    }
    span = _tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)
    propagate.inject(headers, context=trace.set_span_in_context(span))
    return UpstreamSpan(span)


def attach_caller(headers: dict[str, str]) -> object:
    """Make the caller's trace (W3C `traceparent`, `tracestate`) current until `detach`: what
    the request starts joins it."""
    return context.attach(propagate.extract(headers))


def detach(token: object) -> None:
    context.detach(token)  # type: ignore[arg-type]


def system_name(settings: Settings, provider: str) -> str:
    upstream = settings.providers.get(provider)
    if upstream is not None:
        return SYSTEMS[upstream.type]
    return BUILT_IN_SYSTEMS.get(provider, provider)


def wall_ns(monotonic: float) -> int:
    """A time.monotonic() reading as the wall-clock nanoseconds spans are stamped with."""
    return time.time_ns() - round((time.monotonic() - monotonic) * 1e9)


class Tracing:
    """The spans of one gateway's generations, from start to end."""

    def __init__(self, tracer: Tracer, settings: Settings) -> None:
        self.tracer = tracer
        self.settings = settings
        self.spans: dict[str, Span] = {}

    def begin(self, gen: Generation, upstream_model: str) -> object:
        """Open `gen`'s span and make it current (until `detach`), so that the provider's
        calls are its children."""
        r = gen.request
        system = system_name(self.settings, gen.provider)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": system,
            "gen_ai.system": system,
            "gen_ai.request.model": r.model,
            "gen_ai.response.model": upstream_model,
            "gen_ai.request.max_tokens": r.max_tokens,
            "gen_ai.response.id": gen.id,
            "sluicegate.door": gen.route,
            "sluicegate.provider": gen.provider,
        }
        for key, value in (("temperature", r.temperature), ("top_p", r.top_p), ("top_k", r.top_k)):
            if value is not None:
                attributes[f"gen_ai.request.{key}"] = value
        span = self.tracer.start_span(
            f"chat {r.model}",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=wall_ns(gen.timings.created),
        )
        self.spans[gen.id] = span
        return context.attach(trace.set_span_in_context(span))

    def detach(self, token: object) -> None:
        detach(token)

    def refused(self, gen: Generation, exc: BaseException) -> None:
        """`gen` never started: the provider refused it, or it was cancelled while queued."""
        span = self.spans.pop(gen.id, None)
        if span is not None:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()

    def ended(self, gen: Generation) -> None:
        span = self.spans.pop(gen.id, None)
        if span is None:
            return
        t, usage = gen.timings, gen.usage
        if t.first_token is not None:
            span.add_event(
                "gen_ai.first_token",
                {"gen_ai.server.time_to_first_token": t.first_token - t.created},
                timestamp=wall_ns(t.first_token),
            )
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.response.finish_reasons": [gen.stop_reason or "error"],
                "sluicegate.queue_ms": gen.metrics.queue_ms,
            }
        )
        if gen.request.temperature is None and gen.meter.sampling.get("temperature") is not None:
            span.set_attribute("gen_ai.request.temperature", gen.meter.sampling["temperature"])
        if gen.error is not None:
            span.set_attribute("error.type", type(gen.error).__name__)
            span.set_status(Status(StatusCode.ERROR, type(gen.error).__name__))
        span.end(end_time=wall_ns(t.ended) if t.ended is not None else None)


class UpstreamSpan:
    """An HTTP client span around an upstream call, ended when its answer is closed (a
    stream's span lasts as long as the stream)."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def status(self, code: int) -> None:
        self.span.set_attribute("http.response.status_code", code)
        if code >= 400:
            self.span.set_attribute("error.type", str(code))
            self.span.set_status(Status(StatusCode.ERROR))

    def end(self, exc: BaseException | None = None) -> None:
        if exc is not None:
            self.span.set_attribute("error.type", type(exc).__name__)
            self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self.span.end()
