"""OpenTelemetry traces through a real uvicorn, stock clients, and the SDK's in-memory exporter:
one span per generation with the GenAI attributes, the upstream call as its child span, and
the stop reason of a stream that was left or stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as Path

from sluicegate import telemetry
from sluicegate.config import Route, ScriptedSettings, Settings, UpstreamSettings
from sluicegate.gateway import Gateway
from sluicegate.providers.bedrock import BedrockProvider
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, free_port, serve, serve_command, stop, wait_ready, wait_until

PROMPT = "a prompt that must never reach a span"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use(provider)
    yield exporter
    telemetry.use(None)
    provider.shutdown()


def scripted_server() -> Server:
    settings = Settings(
        routes=[Route(match="*", provider="scripted")],
        scripted=ScriptedSettings(delay_ms=2, length=400),
    )
    return serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.002, length=400)}))


@pytest.fixture
def traced(exported: InMemorySpanExporter) -> Iterator[Server]:
    s = scripted_server()
    yield s
    stop(s)


def chat_spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    def found() -> list[ReadableSpan]:
        spans = exporter.get_finished_spans()
        return [s for s in spans if s.attributes and "gen_ai.operation.name" in s.attributes]

    assert wait_until(lambda: len(found()) >= count), exporter.get_finished_spans()
    return found()


def no_prompt_in(spans: list[ReadableSpan]) -> None:
    for span in spans:
        values = [*(span.attributes or {}).values()]
        values += [v for e in span.events for v in (e.attributes or {}).values()]
        assert not any(PROMPT in str(v) for v in values)


def test_a_generation_is_one_span_with_the_genai_attributes(
    traced: Server, exported: InMemorySpanExporter
) -> None:
    out = traced.bedrock().converse_stream(
        modelId="scripted-otel",
        messages=[{"role": "user", "content": [{"text": PROMPT}]}],
        inferenceConfig={"maxTokens": 5, "temperature": 0.25},
    )
    assert len(list(out["stream"])) > 3
    [span] = chat_spans(exported, 1)
    a = dict(span.attributes or {})
    assert span.name == "chat scripted-otel" and span.kind == SpanKind.INTERNAL
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "sluicegate.scripted"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "scripted-otel"
    assert a["gen_ai.request.max_tokens"] == 5 and a["gen_ai.request.temperature"] == 0.25
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] == 5
    assert a["gen_ai.response.finish_reasons"] == ("max_tokens",)
    assert a["gen_ai.response.id"] == out["ResponseMetadata"]["RequestId"]
    assert a["sluicegate.door"] == "bedrock" and a["sluicegate.provider"] == "scripted"
    [first] = [e for e in span.events if e.name == "gen_ai.first_token"]
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= first.timestamp <= span.end_time
    assert span.status.status_code == StatusCode.UNSET and span.parent is None
    no_prompt_in([span])


def test_a_stream_the_client_leaves_or_stops_says_so(
    traced: Server, exported: InMemorySpanExporter
) -> None:
    ask = {"model": "scripted", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    with httpx.stream("POST", traced.url + "/v1/chat/completions", json=ask) as r:
        data = (line for line in r.iter_lines() if line.startswith("data:"))
        for _ in range(4):
            next(data)

    async def stopped() -> None:
        async with websockets.connect(traced.ws_url) as ws:
            await ws.send(json.dumps({"action": "generate", "id": "s", "prompt": PROMPT}))
            while json.loads(await ws.recv())["type"] != "delta":
                pass
            await ws.send(json.dumps({"action": "stop", "id": "s"}))
            while json.loads(await ws.recv())["type"] != "end":
                pass

    asyncio.run(stopped())
    spans = chat_spans(exported, 2)
    reasons = {s.attributes["sluicegate.door"]: s.attributes for s in spans if s.attributes}
    assert reasons["openai"]["gen_ai.response.finish_reasons"] == ("disconnected",)
    assert reasons["websocket"]["gen_ai.response.finish_reasons"] == ("cancelled",)
    for a in reasons.values():
        assert 0 < int(str(a["gen_ai.usage.output_tokens"])) < 400
    no_prompt_in(spans)


def test_a_caller_s_traceparent_makes_the_generation_its_child(
    traced: Server, exported: InMemorySpanExporter
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    ask = {"model": "scripted", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    assert httpx.post(traced.url + "/v1/messages", json=ask, headers=headers).status_code == 200
    [span] = chat_spans(exported, 1)
    assert span.context is not None and span.context.trace_id == int(trace_id, 16)
    assert span.parent is not None and span.parent.span_id == int(parent_id, 16)
    assert span.parent.is_remote


def front(url: str) -> Server:
    """A gateway whose bedrock provider's upstream is at `url`."""
    upstream = UpstreamSettings(type="bedrock", endpoint_url=url, region="us-east-1")
    settings = Settings(
        providers={"up": upstream},
        routes=[Route(match="*", provider="up", model="scripted-upstream")],
    )
    return serve(Gateway(settings, {"up": BedrockProvider("up", upstream)}))


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


def test_the_upstream_call_is_a_child_http_span(
    traced: Server, exported: InMemorySpanExporter, aws: None
) -> None:
    relay = front(traced.url)
    try:
        out = relay.bedrock().converse_stream(
            modelId="anthropic.claude-otel",
            messages=[{"role": "user", "content": [{"text": PROMPT}]}],
            inferenceConfig={"maxTokens": 6},
        )
        assert len(list(out["stream"])) > 3
        spans = chat_spans(exported, 2)
    finally:
        stop(relay)
    [outer] = [s for s in spans if s.attributes and s.attributes["sluicegate.provider"] == "up"]
    [inner] = [s for s in spans if s is not outer]  # the upstream sluicegate's own span
    a = dict(outer.attributes or {})
    assert a["gen_ai.provider.name"] == "aws.bedrock"
    assert a["gen_ai.request.model"] == "anthropic.claude-otel"
    assert a["gen_ai.response.model"] == "scripted-upstream"
    assert a["gen_ai.usage.output_tokens"] == 6
    [call] = [s for s in exported.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert outer.context is not None and call.parent is not None
    assert call.parent.span_id == outer.context.span_id
    assert call.context is not None and call.context.trace_id == outer.context.trace_id
    c = dict(call.attributes or {})
    port = int(traced.url.rsplit(":", 1)[1])
    assert c["server.address"] == "127.0.0.1" and c["server.port"] == port
    assert c["http.request.method"] == "POST" and c["http.response.status_code"] == 200
    assert str(c["url.full"]).endswith("/model/scripted-upstream/converse-stream")
    assert inner.attributes is not None and inner.attributes["gen_ai.request.model"] == (
        "scripted-upstream"
    )
    # The upstream got `traceparent`: its generation is in the same trace, under the call.
    assert inner.parent is not None and inner.parent.span_id == call.context.span_id
    assert inner.context is not None and inner.context.trace_id == outer.context.trace_id
    # The call's span lasts as long as the stream: it ends once the body has been read.
    assert call.end_time is not None and inner.end_time is not None
    assert call.end_time >= inner.end_time
    no_prompt_in([*spans, call])


def test_an_unreachable_upstream_is_an_error_span(
    exported: InMemorySpanExporter, aws: None
) -> None:
    relay = front(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(Exception, match="unreachable"):
            relay.bedrock().converse_stream(
                modelId="anthropic.claude-otel",
                messages=[{"role": "user", "content": [{"text": PROMPT}]}],
            )
        outers = chat_spans(exported, 1)
    finally:
        stop(relay)
    calls = [s for s in exported.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert len(calls) == len(outers)  # one each, however many times boto3 tried
    for outer, call in zip(outers, calls, strict=True):
        assert outer.status.status_code == StatusCode.ERROR
        assert outer.attributes is not None
        assert outer.attributes["error.type"] == "ServiceUnavailable"
        assert call.status.status_code == StatusCode.ERROR
        assert call.attributes is not None
        assert call.attributes["error.type"] == "ClientConnectorError"  # aiohttp's refused
        assert call.parent is not None and outer.context is not None
        assert call.parent.span_id == outer.context.span_id


def test_off_unless_asked_and_nothing_is_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*telemetry.ENDPOINTS, "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    assert not telemetry.wanted(False) and telemetry.wanted(True)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert telemetry.wanted(False)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not telemetry.wanted(True)
    s = scripted_server()
    try:
        assert s.gateway.tracing is None
        headers: dict[str, str] = {}
        assert telemetry.upstream_span("POST", "http://127.0.0.1:9/v1/x", headers) is None
        assert headers == {}  # no traceparent sent upstream either
    finally:
        stop(s)


def collector() -> tuple[str, list[bytes], Any]:
    """A stand-in OTLP/HTTP collector: the export requests it was sent, as bytes."""
    received: list[bytes] = []

    async def traces(request: Request) -> Response:
        received.append(await request.body())
        return Response(b"", media_type="application/x-protobuf")

    port = free_port()
    app = Starlette(routes=[Path("/v1/traces", traces, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started)
    return f"http://127.0.0.1:{port}", received, server


def test_serve_exports_to_the_endpoint_the_environment_names() -> None:
    url, received, server = collector()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_SERVICE_NAME": "sluicegate-under-test"}
    port = free_port()
    proc = subprocess.Popen(
        serve_command(port), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_ready(port, proc)
        ask = {
            "model": "scripted-env",
            "max_tokens": 3,
            "messages": [{"role": "user", "content": PROMPT}],
        }
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/messages", json=ask, timeout=30)
        assert answer.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        server.should_exit = True
    assert b"tracing" in out and b"sluicegate-under-test" in out
    spans = []
    for body in received:
        export = ExportTraceServiceRequest.FromString(body)
        for rs in export.resource_spans:
            names = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert names["service.name"] == "sluicegate-under-test"
            spans += [s for ss in rs.scope_spans for s in ss.spans]
    [span] = spans
    attributes = {a.key: a.value for a in span.attributes}
    assert span.name == "chat scripted-env"
    assert attributes["gen_ai.usage.output_tokens"].int_value == 3
    assert attributes["sluicegate.door"].string_value == "anthropic"
    assert PROMPT.encode() not in b"".join(received)


WITHOUT_OTEL = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
sys.argv = ["sluicegate", "serve", "--route", "*=scripted", "--port", "9", "--otel"]
from sluicegate.cli import main
main()
"""


def test_otel_without_the_extra_is_refused_at_start_up() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert "pip install 'sluicegate[otel]'" in done.stderr.decode()
