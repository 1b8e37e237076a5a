"""A request waiting in an upstream provider's queue (`max_concurrency` / `max_queue`), through a
real uvicorn: its answer starts at once, with heartbeats every `sse_heartbeat_seconds` on the SSE
doors until its first token; it then gets the whole answer. A full queue is each door's 429.

The upstream is a second sluicegate (the session's `server`, its scripted provider); its one
slot is held by a slow boto3 stream read to its end in a thread. Last, an upstream that holds its
status line (a fake): past `accept_after_seconds` the answer starts the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sluicegate.codecs import eventstream
from sluicegate.config import Route as ModelRoute
from sluicegate.config import Settings, UpstreamSettings
from sluicegate.gateway import Gateway
from sluicegate.providers.bedrock import BedrockProvider
from tests.conftest import Server, serve, stop, wait_until
from tests.e2e.test_upstreams import frames, serve_app

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
BEAT = 0.2
HOLD = "sluicegate:delay-ms=50 Hold the slot."  # 64 words (the scripted length): 3.2 s


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


@pytest.fixture(scope="module")
def relay(server: Server) -> Iterator[Server]:
    up = UpstreamSettings(
        type="bedrock", endpoint_url=server.url, region="us-east-1", max_concurrency=1, max_queue=1
    )
    settings = Settings(
        providers={"up": up},
        routes=[ModelRoute(match="anthropic.*", provider="up", model="scripted-queue")],
        sse_heartbeat_seconds=BEAT,
    )
    gw = serve(Gateway(settings, {"up": BedrockProvider("up", up)}))
    yield gw
    stop(gw)


CLIENTS: dict[str, Any] = {}


def client(gw: Server) -> Any:
    """One boto3 client per server (making one takes a while: the tests time their steps)."""
    if gw.url not in CLIENTS:
        CLIENTS[gw.url] = gw.bedrock()
    return CLIENTS[gw.url]


def invoke_body(text: str, max_tokens: int) -> str:
    return json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": text}]})  # fmt: skip


class Holder:
    """A slow stream that holds the provider's one slot, read to its end in a thread."""

    def __init__(self, gw: Server) -> None:
        response = client(gw).invoke_model_with_response_stream(
            modelId=MODEL, body=invoke_body(HOLD, 100)
        )
        self.events = iter(response["body"])
        next(self.events)  # it has the slot
        self.ended_at = 0.0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for _ in self.events:
            pass
        self.ended_at = time.monotonic()

    def join(self) -> None:
        self.thread.join(10)
        assert self.ended_at


def chat_body(max_tokens: int = 8) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": "Hello river."}]}  # fmt: skip


def overflow_is_429_on_every_door(gw: Server) -> None:
    """With the slot held and the queue's one place taken, each door refuses in its shape."""
    with pytest.raises(ClientError) as refused:
        client(gw).invoke_model_with_response_stream(modelId=MODEL, body=invoke_body("hi", 5))
    assert refused.value.response["Error"]["Code"] == "ThrottlingException"
    assert refused.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
    for path in ("/v1/chat/completions", "/v1/messages"):
        busy = httpx.post(gw.url + path, json=chat_body())
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "rate_limit_error"


SSE = {  # path, what a heartbeat line is, what a line with text has
    "anthropic": ("/v1/messages", "event: ping", re.compile('"type":"content_block_delta"')),
    "openai": ("/v1/chat/completions", ":", re.compile('"content":"[^"]')),  # not the role's ""
}


class Reader:
    """An SSE request read in a thread from its start: each line with when it came."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened = threading.Event()
        self.status = 0
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with httpx.stream("POST", self.url, json=chat_body(), timeout=30) as r:
            self.status, self.opened_at = r.status_code, time.monotonic()
            self.opened.set()
            for line in r.iter_lines():
                self.lines.append((time.monotonic(), line))


@pytest.mark.parametrize("door", list(SSE))
def test_a_queued_request_gets_heartbeats_then_its_answer(relay: Server, door: str) -> None:
    path, beat, text = SSE[door]
    holder = Holder(relay)
    reader = Reader(relay.url + path)
    assert reader.opened.wait(10) and reader.status == 200
    assert holder.ended_at == 0.0  # the answer started while the request waited
    overflow_is_429_on_every_door(relay)
    reader.thread.join(20)
    holder.join()
    lines = reader.lines
    first = next(i for i, (_, line) in enumerate(lines) if text.search(line))
    assert lines[first][0] >= holder.ended_at - 0.05  # its first token came after the wait
    beats = [t for t, line in lines[:first] if line == beat]
    # the holder had about 3 s to go: a heartbeat every 0.2 s, from accept time on (bounds
    # loose enough for a busy machine, far from the 3 s of silence there would be without)
    assert len(beats) >= 5
    times = [reader.opened_at] + [t for t, _ in lines[: first + 1]]
    assert max(b - a for a, b in itertools.pairwise(times)) < 5 * BEAT
    body = "\n".join(line for _, line in lines)
    if door == "anthropic":
        assert body.count("event: content_block_delta") == 8
        assert '"stop_reason":"max_tokens"' in body and body.endswith('{"type":"message_stop"}\n')
    else:
        assert len(text.findall(body)) == 8 and '"finish_reason":"length"' in body
        assert body.endswith("data: [DONE]\n")


def test_a_queued_bedrock_stream_starts_at_once_and_gets_its_answer(relay: Server) -> None:
    holder = Holder(relay)
    response = client(relay).invoke_model_with_response_stream(
        modelId=MODEL, body=invoke_body("Hello river.", 8)
    )
    assert holder.ended_at == 0.0  # the response came while the request waited
    chunks = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    holder.join()
    deltas = [c for c in chunks if c["type"] == "content_block_delta"]
    assert len(deltas) == 8 and chunks[-1]["type"] == "message_stop"


def test_a_queued_client_that_leaves_gives_its_place_back(relay: Server, server: Server) -> None:
    holder = Holder(relay)
    before = set(server.gateway.generations)
    with httpx.stream("POST", relay.url + "/v1/messages", json=chat_body(), timeout=30) as r:
        assert r.status_code == 200
        gen = relay.gateway.generations[r.headers["request-id"]]
    assert wait_until(lambda: gen.done, timeout=5) and gen.stop_reason == "disconnected"
    provider = relay.gateway.providers["up"]
    assert isinstance(provider, BedrockProvider) and provider.limiter.waiting == 0
    holder.join()
    assert not set(server.gateway.generations) - before  # nothing was sent upstream for it
    with httpx.stream("POST", relay.url + "/v1/messages", json=chat_body(), timeout=30) as r:
        assert "message_stop" in r.read().decode()  # and the slot serves the next one


# -- an upstream slow to answer at all ------------------------------------------------------------


def late_upstream(delay: float) -> Starlette:
    """A ConverseStream upstream that holds its status line for `delay` (as a server with one
    slot does while it is busy), then answers three words."""

    async def endpoint(request: Request) -> Response:
        await request.body()
        await asyncio.sleep(delay)
        pieces = [*frames(["one ", "two ", "three "]),
                  eventstream.event("messageStop", b'{"stopReason": "end_turn"}')]  # fmt: skip
        return StreamingResponse(iter(pieces), media_type="application/vnd.amazon.eventstream")

    path = "/model/{model:path}/converse-stream"
    return Starlette(routes=[Route(path, endpoint, methods=["POST"])])


@pytest.mark.parametrize("door", list(SSE))
def test_an_upstream_slow_to_answer_gets_the_answer_started_with_heartbeats(door: str) -> None:
    url, done = serve_app(late_upstream(1.5))
    up = UpstreamSettings(type="bedrock", endpoint_url=url, accept_after_seconds=0.2)
    settings = Settings(
        providers={"up": up},
        routes=[ModelRoute(match="anthropic.*", provider="up")],
        sse_heartbeat_seconds=BEAT,
    )
    gw = serve(Gateway(settings, {"up": BedrockProvider("up", up)}))
    try:
        path, beat, text = SSE[door]
        asked = time.monotonic()
        reader = Reader(gw.url + path)
        assert reader.opened.wait(10) and reader.status == 200
        assert reader.opened_at - asked < 1.2  # before the upstream answered, at 1.5 s
        reader.thread.join(20)
        lines = reader.lines
        first = next(i for i, (_, line) in enumerate(lines) if text.search(line))
        assert len([line for _, line in lines[:first] if line == beat]) >= 3
        assert len(text.findall("\n".join(line for _, line in lines))) == 3
    finally:
        stop(gw)
        done()
