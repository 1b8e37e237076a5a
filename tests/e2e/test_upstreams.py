"""sluicegate in front of upstreams, through a real uvicorn, with boto3 as the client.

The `bedrock` provider's upstream is a second sluicegate (the session's `server`, a real Bedrock
Runtime door): text, usage, model mapping, and a client that leaves ending the upstream's own
generation. Failures (refused, 429, 500, a stream cut mid-way, a stall) come from small fake
upstreams served the same way, for the `bedrock` and the `openai` providers alike.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from botocore.exceptions import ClientError, EventStreamError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sluicegate.codecs import eventstream
from sluicegate.config import Route as ModelRoute
from sluicegate.config import Settings, UpstreamSettings
from sluicegate.gateway import Gateway
from sluicegate.providers.anthropic import AnthropicProvider
from sluicegate.providers.bedrock import BedrockProvider
from sluicegate.providers.openai import OpenAIProvider
from tests.conftest import Server, free_port, serve, stop, wait_until

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
CREDS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bedrock provider signs with the standard chain: here, the environment."""
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)


PROVIDERS = {"openai": OpenAIProvider, "bedrock": BedrockProvider, "anthropic": AnthropicProvider}
KINDS = list(PROVIDERS)


def gateway_in_front(kind: str, url: str, **limits: Any) -> Server:
    upstream = UpstreamSettings.model_validate(
        {
            "type": kind,
            "endpoint_url" if kind == "bedrock" else "base_url": url,
            "region": "us-east-1",
            **limits,
        }
    )
    settings = Settings(
        providers={"up": upstream},
        routes=[ModelRoute(match="anthropic.*", provider="up", model="scripted-upstream")],
    )
    return serve(Gateway(settings, {"up": PROVIDERS[kind]("up", upstream)}))


@pytest.fixture
def relay(server: Server) -> Iterator[Server]:
    gw = gateway_in_front("bedrock", server.url)
    yield gw
    stop(gw)


def body(text: str, max_tokens: int = 64) -> str:
    return json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}],
        }
    )


def stream_text(client: Any, text: str, max_tokens: int = 64) -> tuple[str, list[dict[str, Any]]]:
    response = client.invoke_model_with_response_stream(modelId=MODEL, body=body(text, max_tokens))
    chunks = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    deltas = [c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta"]
    return "".join(deltas), chunks


def test_text_usage_and_stop_reason_arrive_whole_through_the_relay(
    server: Server, relay: Server
) -> None:
    direct = server.bedrock().invoke_model(modelId="scripted-upstream", body=body("Hello river."))
    expected = json.loads(direct["body"].read())
    text, chunks = stream_text(relay.bedrock(), "Hello river.")
    assert text == expected["content"][0]["text"] and len(text) > 100
    final = chunks[-1]["amazon-bedrock-invocationMetrics"]
    assert final["outputTokenCount"] == expected["usage"]["output_tokens"] == 64
    assert final["inputTokenCount"] == expected["usage"]["input_tokens"] > 0
    stop = next(c for c in chunks if c["type"] == "message_delta")
    assert stop["delta"]["stop_reason"] == "max_tokens"
    upstream = list(server.gateway.generations.values())[-1]
    assert upstream.request.model == "scripted-upstream"  # the route's upstream model id
    assert chunks[0]["message"]["model"] == MODEL  # the client's own id, on its side
    scraped = httpx.get(relay.url + "/metrics").text
    count = 'sluicegate_gateway_overhead_seconds_count{provider="up",route="bedrock"}'
    assert f"{count} 1.0" in scraped  # what the relay added, apart from waiting on the upstream


def test_a_client_that_leaves_ends_the_upstream_generation(server: Server, relay: Server) -> None:
    before = set(server.gateway.generations)
    response = relay.bedrock().invoke_model_with_response_stream(
        modelId=MODEL, body=body("sluicegate:delay-ms=20 Tell a long story.", 1000)
    )
    events = iter(response["body"])
    for _ in range(6):
        next(events)
    response["body"].close()
    [new] = [g for k, g in server.gateway.generations.items() if k not in before]
    assert wait_until(lambda: new.done, timeout=5)
    assert new.stop_reason == "disconnected"
    produced = server.gateway.describe(new)["produced_tokens"]
    time.sleep(0.2)
    assert server.gateway.describe(new)["produced_tokens"] == produced < 100


# -- fake upstreams ---------------------------------------------------------------------------


def serve_app(app: Starlette) -> tuple[str, Callable[[], None]]:
    port = free_port()
    config = uvicorn.Config(app, port=port, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started)

    def done() -> None:
        server.should_exit = True
        thread.join(5)

    return f"http://127.0.0.1:{port}", done


def frames(texts: list[str]) -> list[bytes]:
    out = [eventstream.event("messageStart", b'{"role": "assistant"}')]
    for t in texts:
        payload = json.dumps({"contentBlockIndex": 0, "delta": {"text": t}}).encode()
        out.append(eventstream.event("contentBlockDelta", payload))
    return out


def sse(chunks: list[dict[str, Any]]) -> list[bytes]:
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks]


def openai_chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


async def cut(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
        await asyncio.sleep(0.01)
    raise RuntimeError("the upstream dies mid-stream")  # uvicorn drops the connection


async def short(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece  # then a clean end of the body, without the API's own end of the answer


async def stall(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
    await asyncio.sleep(30)


def anthropic_events(text: str) -> list[bytes]:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in (start, delta)]


FAKES = {  # path, media type, what comes before the fault
    "bedrock": (
        "/model/{model:path}/converse-stream",
        "application/vnd.amazon.eventstream",
        frames(["one ", "two "]),
    ),
    "openai": ("/v1/chat/completions", "text/event-stream", sse([openai_chunk("one ")])),
    "anthropic": ("/v1/messages", "text/event-stream", anthropic_events("one ")),
}


def fake(behaviour: str, kind: str) -> Starlette:
    path, media, pieces = FAKES[kind]

    async def endpoint(request: Request) -> Response:
        await request.body()
        if behaviour == "429":
            return JSONResponse({"message": "Rate exceeded"}, 429)
        if behaviour == "500":
            return JSONResponse({"error": {"message": "upstream exploded"}}, 500)
        behave = {"cut": cut, "short": short, "stall": stall}[behaviour]
        return StreamingResponse(behave(pieces), media_type=media)

    return Starlette(routes=[Route(path, endpoint, methods=["POST"])])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("behaviour", "code", "status"),
    [("429", "ThrottlingException", 429), ("500", "InternalServerException", 500)],
)
def test_upstream_errors_before_the_stream_are_the_doors_own(
    kind: str, behaviour: str, code: str, status: int
) -> None:
    url, done = serve_app(fake(behaviour, kind))
    gw = gateway_in_front(kind, url + ("/v1" if kind == "openai" else ""))
    try:
        with pytest.raises(ClientError) as refused:
            gw.bedrock().invoke_model_with_response_stream(modelId=MODEL, body=body("hi"))
        error = refused.value.response
        assert error["Error"]["Code"] == code
        assert error["ResponseMetadata"]["HTTPStatusCode"] == status
        assert "Provider up answered" in error["Error"]["Message"]
    finally:
        stop(gw)
        done()


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_connection_is_503(kind: str) -> None:
    gw = gateway_in_front(kind, f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ClientError) as refused:
            gw.bedrock().invoke_model_with_response_stream(modelId=MODEL, body=body("hi"))
        assert refused.value.response["Error"]["Code"] == "ServiceUnavailableException"
        assert "unreachable" in refused.value.response["Error"]["Message"]
    finally:
        stop(gw)


def test_a_slow_stream_is_not_cut_by_the_idle_deadline() -> None:
    """The idle deadline is between two chunks, not over the answer: chunks 0.3 s apart for
    2.4 s pass a 0.5 s deadline (its timer ticks every 0.125 s, across all the reads)."""
    words = [f"w{i} " for i in range(8)]

    async def slowly() -> AsyncIterator[bytes]:
        for word in words:
            yield sse([openai_chunk(word)])[0]
            await asyncio.sleep(0.3)
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield sse([done])[0] + b"data: [DONE]\n\n"

    async def endpoint(request: Request) -> Response:
        await request.body()
        return StreamingResponse(slowly(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", endpoint, methods=["POST"])])
    url, done = serve_app(app)
    gw = gateway_in_front("openai", url + "/v1", idle_timeout_seconds=0.5)
    try:
        response = gw.bedrock().invoke_model_with_response_stream(modelId=MODEL, body=body("hi"))
        events = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
        text = "".join(
            e["delta"].get("text", "")
            for e in events
            if "delta" in e and e["type"] == "content_block_delta"
        )
        assert text == "".join(words)
        assert events[-2]["delta"]["stop_reason"] == "end_turn"
        assert list(gw.gateway.generations.values())[-1].stop_reason == "end_turn"
    finally:
        stop(gw)
        done()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("behaviour", "frame", "first_byte"),
    [
        ("cut", "modelStreamError", 60),
        ("short", "modelStreamError", 60),  # ended cleanly, but not at the answer's end
        ("stall", "modelTimeout", 60),  # the idle deadline is the shorter
        ("stall", "modelTimeout", 0.5),  # as long as the first-byte one
    ],
)
def test_a_stream_cut_or_stalled_mid_way_ends_with_an_exception_frame(
    kind: str, behaviour: str, frame: str, first_byte: float
) -> None:
    url, done = serve_app(fake(behaviour, kind))
    deadlines = {"idle_timeout_seconds": 0.5, "first_byte_timeout_seconds": first_byte}
    gw = gateway_in_front(kind, url + ("/v1" if kind == "openai" else ""), **deadlines)
    try:
        started = time.monotonic()
        response = gw.bedrock().invoke_model_with_response_stream(modelId=MODEL, body=body("hi"))
        seen = []
        with pytest.raises(EventStreamError, match=frame):
            for event in response["body"]:
                seen.append(json.loads(event["chunk"]["bytes"])["type"])
        assert "content_block_delta" in seen  # what came before the fault got through
        assert time.monotonic() - started < 10  # the stall ended at the idle deadline
        gen = list(gw.gateway.generations.values())[-1]
        assert gen.stop_reason == "error"
    finally:
        stop(gw)
        done()


def test_a_full_queue_is_429_in_the_doors_shape(server: Server) -> None:
    gw = gateway_in_front("bedrock", server.url, max_concurrency=1, max_queue=0)
    try:
        client = gw.bedrock()
        slow = client.invoke_model_with_response_stream(
            modelId=MODEL, body=body("sluicegate:delay-ms=20 long", 200)
        )
        next(iter(slow["body"]))
        with pytest.raises(ClientError) as refused:
            client.invoke_model_with_response_stream(modelId=MODEL, body=body("hi"))
        assert refused.value.response["Error"]["Code"] == "ThrottlingException"
        assert refused.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
        chat = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        for path in ("/v1/chat/completions", "/v1/messages"):  # the OpenAI and Anthropic doors
            busy = httpx.post(gw.url + path, json=chat)
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["type"] == "rate_limit_error"
        slow["body"].close()
    finally:
        stop(gw)


def test_a_stalled_upstream_holds_up_no_other(server: Server) -> None:
    url, done = serve_app(fake("stall", "bedrock"))
    stalled = UpstreamSettings(type="bedrock", endpoint_url=url, idle_timeout_seconds=3)
    good = UpstreamSettings(type="bedrock", endpoint_url=server.url)
    settings = Settings(
        providers={"stalled": stalled, "good": good},
        routes=[
            ModelRoute(match="anthropic.stall*", provider="stalled"),
            ModelRoute(match="anthropic.*", provider="good", model="scripted-upstream"),
        ],
    )
    providers = {
        "stalled": BedrockProvider("stalled", stalled),
        "good": BedrockProvider("good", good),
    }
    gw = serve(Gateway(settings, providers))
    try:
        client = gw.bedrock()
        waiting = client.invoke_model_with_response_stream(
            modelId="anthropic.stall", body=body("x")
        )
        events = iter(waiting["body"])
        next(events)  # it has started, then stalls
        ended: list[str] = []

        def read_to_the_end() -> None:
            try:
                list(events)
            except EventStreamError as exc:
                ended.append(str(exc))

        reader = threading.Thread(target=read_to_the_end, daemon=True)
        reader.start()
        text, chunks = stream_text(client, "Hello river.")  # meanwhile, on the other upstream
        assert len(text) > 100 and chunks[-1]["type"] == "message_stop"
        assert reader.is_alive()  # the stalled stream is still waiting while the other finished
        reader.join(10)
        assert not reader.is_alive() and "modelTimeoutException" in ended[0]
    finally:
        stop(gw)
        done()


def test_drain_reads_a_left_stream_to_its_end_for_the_true_usage(server: Server) -> None:
    """on_disconnect = "drain": the client leaves, the upstream's answer is still read to its
    end; its generation finishes (max_tokens, not disconnected), and the usage it bills shows
    on ours and in /metrics."""
    gw = gateway_in_front("bedrock", server.url, on_disconnect="drain", max_concurrency=1)
    try:
        before = set(server.gateway.generations)
        response = gw.bedrock().invoke_model_with_response_stream(
            modelId=MODEL, body=body("sluicegate:delay-ms=10 Go on.", 60)
        )
        events = iter(response["body"])
        for _ in range(5):
            next(events)
        response["body"].close()
        [upstream] = [g for k, g in server.gateway.generations.items() if k not in before]
        ours = list(gw.gateway.generations.values())[-1]
        assert wait_until(lambda: ours.done and upstream.done, timeout=10)
        assert ours.stop_reason == "disconnected" and upstream.stop_reason == "max_tokens"
        assert wait_until(lambda: ours.usage.output_tokens == 60, timeout=5)
        scraped = httpx.get(gw.url + "/metrics").text
        line = 'sluicegate_tokens_total{direction="output",provider="up",route="bedrock"} 60.0'
        assert line in scraped
        # its slot came back: another stream runs (max_concurrency is 1)
        text, _ = stream_text(gw.bedrock(), "Hello river.")
        assert len(text) > 100
    finally:
        stop(gw)
