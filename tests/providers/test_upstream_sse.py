"""An upstream's server-sent events read through a real aiohttp server: a whole answer that
arrives in one read gives its first token before the rest of it is parsed, and nothing is lost
where the read is cut (inside an event, inside a character)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from sluicegate.codecs import sse
from sluicegate.config import UpstreamSettings
from sluicegate.events import ChatRequest, Message
from sluicegate.generation import Meter
from sluicegate.providers.openai import OpenAIProvider

REQUEST = ChatRequest("m", (Message("user", "hi"),), 5)
TEXTS = [f"ü{i}€ " for i in range(300)]  # multi-byte characters, cut anywhere


def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


ANSWER = b"".join(
    [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": t}) for t in TEXTS),
        chunk({}, "stop"),
        b"data: [DONE]\n\n",
    ]
)


async def whole(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(ANSWER)  # in one piece
    await response.write_eof()
    return response


def test_the_first_token_of_a_whole_answer_comes_before_the_rest_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed = [0]  # events the parser has given so far
    feed = sse.SSEParser.feed

    def counting(self: sse.SSEParser, data: bytes) -> list[sse.ServerSentEvent]:
        events = feed(self, data)
        parsed[0] += len(events)
        return events

    monkeypatch.setattr(sse.SSEParser, "feed", counting)

    async def main() -> tuple[list[str], int]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", whole)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        provider = OpenAIProvider(
            "up", UpstreamSettings(type="openai", base_url=f"http://127.0.0.1:{port}/v1")
        )
        texts: list[str] = []
        parsed_at_first = 0
        try:
            async for piece in provider.stream(REQUEST, Meter()):
                text = getattr(piece, "text", "")
                if text and not texts:
                    parsed_at_first = parsed[0]
                if text:
                    texts.append(text)
        finally:
            await provider.aclose()
            await runner.cleanup()
        return texts, parsed_at_first

    texts, parsed_at_first = asyncio.run(main())
    assert texts == TEXTS
    assert parsed_at_first < 20, f"{parsed_at_first} of {len(TEXTS) + 3} events parsed first"
