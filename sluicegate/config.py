"""Settings: a TOML file (`--config`), then command-line flags on top.

host = "127.0.0.1"
port = 8000
model = "/path/to/any.gguf"        # default: the embedded SmolLM2-135M-Instruct
weights = "auto"                    # auto | q8_0 | file (see providers/local.py)

[engine]                            # the local provider's batching engine
n_ctx = 8192
n_parallel = 32

[scripted]
delay_ms = 20
length = 64

[[routes]]                          # first match wins; model ids are matched as globs
match = "scripted*"
provider = "scripted"

[providers.prod]                    # an upstream: type openai, bedrock or anthropic
type = "bedrock"
region = "us-east-1"                # bedrock: the standard AWS credential chain signs
endpoint_url = "http://127.0.0.1:9000"   # optional: another sluicegate, a VPC endpoint...
[providers.gpu]
type = "openai"                     # any OpenAI-compatible server: vLLM, Ollama, llama-server
base_url = "http://10.0.0.5:8000/v1"
api_key_env = "GPU_API_KEY"         # the NAME of the variable that holds the key, never the key
max_concurrency = 64                # streams at once; more wait in a queue of max_queue, then 429

[[routes]]
match = "anthropic.claude-*"
provider = "prod"
model = "us.anthropic.claude-sonnet-4-20250514-v1:0"   # the upstream's model id (default: as asked)
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# "local" and "scripted" are built in; an upstream's name is its key under [providers].
ProviderName = str
BUILT_IN = ("local", "scripted")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineSettings(Strict):
    n_ctx: int = Field(8192, ge=256)
    n_parallel: int = Field(32, ge=1, le=256)
    kv: Literal["unified", "per-sequence"] = "unified"  # see providers/engine.EngineConfig
    solo: bool = True  # a lone sequence decodes on the shipped weights (see providers/engine)
    n_batch: int = Field(512, ge=32)
    prefill_chunk: int = Field(128, ge=1)
    n_threads: int = Field(2, ge=1)
    # One thread while another busy process shares the cores (see providers/llamacpp.Threads).
    adaptive_threads: bool = True
    flash_attn: bool = True  # in the unified layout only (see providers/scheduler.EngineConfig)
    max_queue: int = Field(256, ge=0)
    # Draft tokens of prompt lookup for a lone stream (see providers/scheduler.EngineConfig).
    lookup: int = Field(7, ge=0, le=32)
    # How long an idle engine waits for requests still being tokenized: since the last one
    # arrived, and in all (see providers/scheduler.EngineConfig).
    gather_ms: float = Field(10.0, ge=0, le=1000)
    gather_max_ms: float = Field(50.0, ge=0, le=10_000)


class ScriptedSettings(Strict):
    delay_ms: float = Field(20.0, ge=0)
    length: int = Field(64, ge=1)


class WebSocketSettings(Strict):
    stage: str = Field("ws", pattern=r"^[A-Za-z0-9_-]+$")
    route_key: str = "$request.body.action"
    # A dropped connection's generations wait this long to be resumed, then are cancelled.
    grace_seconds: float = Field(30.0, ge=0)
    # Generations one connection may have running at once (more: ThrottlingException), so
    # that one socket cannot take every slot of the model.
    max_generations_per_connection: int = Field(16, ge=1)
    max_message_bytes: int = Field(128 * 1024, ge=1024)
    # Each frame of a message too (clients may fragment a message into smaller frames).
    max_frame_bytes: int | None = Field(32 * 1024, ge=1024)
    # Bytes waiting to be sent to one socket; past it the client is too slow: it is closed
    # (1008) and its generations can be resumed from another connection.
    max_outbound_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    # Lambda-style handlers by route key: {"$connect": "chat.py:on_connect", "sendmessage": ...}
    routes: dict[str, str] = {}
    handler_timeout_seconds: float = Field(29.0, gt=0)
    # API Gateway's quotas; null lifts them (`--limits relaxed` does, for local work).
    idle_timeout_seconds: float | None = Field(600.0, gt=0)
    max_connection_seconds: float | None = Field(7200.0, gt=0)


class HttpSettings(Strict):
    """Limits on a request before the app sees it (see serving.http_protocol)."""

    max_header_bytes: int = Field(64 * 1024, ge=1024)  # the request line and headers
    header_timeout_seconds: float = Field(10.0, gt=0)  # from connection or last response
    body_idle_seconds: float = Field(15.0, gt=0)  # a body that stops arriving
    body_timeout_seconds: float = Field(300.0, gt=0)  # a body that crawls


class BusSettings(Strict):
    """What replicas share (bus/base.py): nothing (one process) or a Redis server."""

    url: str | None = Field(None, pattern=r"^rediss?://")  # redis://host:6379/0
    # An ended generation's record and log stay this long for resume (as OpenAI keeps a
    # background response), then expire.
    keep_seconds: float = Field(600.0, gt=0)
    # A replica renews its lease this often; one that misses it for lease_seconds is gone,
    # and readers of its generations get a terminal `interrupted` error.
    lease_seconds: float = Field(5.0, gt=0)


class FunctionSettings(Strict):
    """A Lambda function: its handler, Function URL invoke mode and timeout."""

    handler: str
    invoke_mode: Literal["BUFFERED", "RESPONSE_STREAM"] = "BUFFERED"
    timeout_seconds: float = Field(900.0, gt=0)


# What the model picker calls each provider when only a glob route reaches it.
PICKABLE: dict[str, ProviderName] = {"smollm2-135m-instruct": "local", "scripted": "scripted"}


class UpstreamSettings(Strict):
    """An upstream provider: where it is, how to reach it, and how much of it we may use."""

    type: Literal["openai", "bedrock", "anthropic"]
    base_url: str | None = None  # openai: ".../v1"; anthropic: default https://api.anthropic.com
    endpoint_url: str | None = None  # bedrock: default https://bedrock-runtime.REGION.amazonaws.com
    region: str | None = None  # bedrock: default from the AWS configuration
    # bedrock: ConverseStream (any model), or InvokeModelWithResponseStream with the model
    # family's own body (Anthropic Messages for anthropic.* and ids no family claims, Llama).
    api: Literal["converse", "invoke"] = "converse"
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    connect_timeout_seconds: float = Field(10.0, gt=0)
    # From the request sent to its first byte of text (a queue upstream counts), then between
    # two chunks: either ends the stream with an in-band timeout, never a hang.
    first_byte_timeout_seconds: float = Field(60.0, gt=0)
    idle_timeout_seconds: float = Field(60.0, gt=0)
    # An upstream that has not answered (its status line) within this is taken as accepted:
    # the door's answer and its heartbeats start; the upstream's errors then come in-band.
    accept_after_seconds: float = Field(5.0, gt=0)
    max_concurrency: int = Field(64, ge=1)
    max_queue: int = Field(256, ge=0)
    # When the client leaves: close the upstream stream at once (abort), or read it to its end
    # (within the deadlines) to record the usage the upstream bills anyway (drain).
    on_disconnect: Literal["abort", "drain"] = "abort"

    @model_validator(mode="after")
    def _where(self) -> UpstreamSettings:
        if self.type == "openai" and not self.base_url:
            raise ValueError("an openai provider needs base_url (e.g. http://host:8000/v1)")
        if self.api != "converse" and self.type != "bedrock":
            raise ValueError("api (converse or invoke) is for bedrock providers only")
        return self


class Route(Strict):
    match: str
    provider: ProviderName
    # The model id sent upstream; by default the id the client asked for.
    model: str | None = None


class Settings(Strict):
    host: str = "127.0.0.1"
    port: int = 8000
    # A second listener on the same app, over TLS with a certificate made at start-up, for
    # handlers that build their @connections endpoint as https://{domainName}/{stage}.
    tls_port: int | None = Field(None, ge=1, le=65535)
    model: Path | None = None
    # auto: the embedded model's weights are served as Q8_0 (faster in batches, same output
    # quality; see providers/local.py), a --model file as it is. q8_0 / file force either.
    weights: Literal["auto", "q8_0", "file"] = "auto"
    engine: EngineSettings = EngineSettings()
    scripted: ScriptedSettings = ScriptedSettings()
    providers: dict[str, UpstreamSettings] = {}
    routes: list[Route] = [Route(match="*", provider="local")]
    websocket: WebSocketSettings = WebSocketSettings()
    http: HttpSettings = HttpSettings()
    bus: BusSettings = BusSettings()
    functions: dict[str, FunctionSettings] = {}
    # The REST API emulation (/rest/NAME/...): API Gateway's integration timeout, and the
    # functions switched to its streaming transfer mode.
    rest_timeout_seconds: float = Field(29.0, gt=0)
    rest_stream: list[str] = []
    # Handlers' boto3 clients talk to this server unless they are meant to call real AWS.
    handlers_call_aws: bool = False
    # The region handlers run in (AWS_REGION, AWS_DEFAULT_REGION, their functions' ARNs).
    region: str = "us-east-1"
    # Accepted as `Authorization: Bearer <key>` where SigV4 is not used (@connections API).
    api_key: str | None = None
    max_body_bytes: int = 25 * 1024 * 1024
    # Generations one client address may have queued or running at once, on all doors
    # together (more: each door's throttling error); 0 lifts the cap.
    max_generations_per_caller: int = Field(64, ge=0)
    # Ended generations kept for resume and introspection (newest first): at most this many
    # bytes of their event logs in all, and for this long.
    ended_bytes: int = Field(64 * 1024 * 1024, ge=0)
    ended_seconds: float = Field(900.0, ge=0)
    # Web pages (by their Origin) that may use the server besides its own and localhost ones;
    # "*" allows any. Clients that send no Origin (SDKs, curl) are not affected.
    allowed_origins: list[str] = []
    # Host names the server answers besides this machine's and the address it is bound to
    # (against DNS rebinding); "*" any. A server bound to 0.0.0.0 answers any by default.
    allowed_hosts: list[str] = []
    # Server-sent-events doors send a heartbeat after this much silence (proxies cut idle
    # streams at 60-120 s), from the moment a request is accepted, queued or not.
    sse_heartbeat_seconds: float = Field(15.0, gt=0)
    # On SIGTERM (or Ctrl-C): stop accepting, let running generations finish for this long,
    # then end the rest with each door's terminal error (ServiceUnavailable).
    drain_seconds: float = Field(30.0, ge=0)

    @property
    def public_host(self) -> str:
        """host:port as clients and handlers reach this server."""
        return f"{self.public_address}:{self.port}"

    @property
    def public_address(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def domain_name(self) -> str:
        """`requestContext.domainName` for WebSocket handlers: the TLS listener when there is
        one, so that `https://{domainName}/{stage}` reaches this server."""
        if self.tls_port is None:
            return self.public_host
        return f"{self.public_address}:{self.tls_port}"

    @model_validator(mode="after")
    def _routes_reach_providers(self) -> Settings:
        for i, route in enumerate(self.routes):
            if route.provider not in BUILT_IN and route.provider not in self.providers:
                known = ", ".join([*BUILT_IN, *self.providers])
                raise ValueError(
                    f"routes[{i}].provider: no provider {route.provider!r} "
                    f"(known: {known}; define it under [providers.{route.provider}])"
                )
        for name in self.providers:
            if name in BUILT_IN:
                raise ValueError(f"providers.{name}: {name!r} is a built-in provider's name")
        return self

    def route_for(self, model_id: str) -> Route | None:
        """The first route matching a model id: plain ids, inference profiles and ARNs alike."""
        for route in self.routes:
            if fnmatch.fnmatchcase(model_id, route.match):
                return route
        return None

    def provider_for(self, model_id: str) -> ProviderName | None:
        route = self.route_for(model_id)
        return None if route is None else route.provider

    def model_choices(self) -> list[tuple[str, ProviderName]]:
        """Model ids a person can pick (the web page's list): every plain id in the routes, and
        a name for each provider that a glob route sends to it."""
        found: dict[str, ProviderName] = {}
        for route in self.routes:
            if not any(c in route.match for c in "*?["):
                found.setdefault(route.match, route.provider)
        for name, provider in PICKABLE.items():
            if self.provider_for(name) == provider:
                found.setdefault(name, provider)
        return list(found.items())

    def used_providers(self) -> list[ProviderName]:
        return sorted({r.provider for r in self.routes})


def relaxed(ws: WebSocketSettings) -> WebSocketSettings:
    """API Gateway's limits lifted: no idle or lifetime cap, 16 MiB messages in frames of any
    size, 15 min handlers."""
    return ws.model_copy(
        update={
            "idle_timeout_seconds": None,
            "max_connection_seconds": None,
            "max_message_bytes": 16 * 1024 * 1024,
            "max_frame_bytes": None,
            "handler_timeout_seconds": 900.0,
        }
    )


def load(path: Path | None) -> Settings:
    if path is None:
        return Settings()
    with path.open("rb") as f:
        return Settings.model_validate(tomllib.load(f))
