"""An upstream provider's queue, driven directly (httpx's MockTransport as the upstream): a
request that has to wait is accepted at once, and what the upstream says after the wait, a
refusal included, comes after that, in-band; one that does not wait is refused before it starts.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sluicegate import errors
from sluicegate.config import UpstreamSettings
from sluicegate.events import BlockStart, ChatRequest, Message, MessageStart
from sluicegate.generation import Meter
from sluicegate.providers.bedrock import BedrockProvider

REQUEST = ChatRequest("anthropic.claude-3", (Message("user", "hi"),), 5)


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


def refusing() -> BedrockProvider:
    """A provider with one slot whose upstream answers every request 429."""
    settings = UpstreamSettings(type="bedrock", endpoint_url="http://up", max_concurrency=1)
    provider = BedrockProvider("up", settings)
    answer = httpx.Response(429, json={"message": "Rate exceeded"})
    provider.client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: answer))
    return provider


def test_a_refusal_after_the_wait_comes_after_the_accept() -> None:
    async def main() -> None:
        provider = refusing()
        assert provider.limiter.take("up") is None  # someone else holds the one slot
        stream = provider.stream(REQUEST, Meter())
        opened = [await anext(stream), await anext(stream)]  # accepted while it waits
        assert isinstance(opened[0], MessageStart) and isinstance(opened[1], BlockStart)
        assert provider.limiter.waiting == 1
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # nothing is sent upstream before a slot frees
        provider.limiter.release()
        with pytest.raises(errors.Throttled, match="Rate exceeded"):
            await waiting
        assert provider.limiter.free == 1 and provider.limiter.waiting == 0

    asyncio.run(main())


def test_a_refusal_without_a_wait_comes_before_anything() -> None:
    async def main() -> None:
        provider = refusing()
        with pytest.raises(errors.Throttled, match="answered 429"):
            await anext(provider.stream(REQUEST, Meter()))
        assert provider.limiter.free == 1

    asyncio.run(main())


def test_a_request_that_fails_after_the_wait_gives_its_slot_back() -> None:
    async def main() -> None:
        provider = refusing()
        calls = []
        build = provider.outgoing

        def outgoing(request: ChatRequest) -> httpx.Request:
            calls.append(request)
            if len(calls) > 1:  # signed again after the wait: the credentials are gone now
                raise errors.ServiceUnavailable("no AWS credentials found")
            return build(request)

        provider.outgoing = outgoing  # type: ignore[method-assign]
        assert provider.limiter.take("up") is None
        stream = provider.stream(REQUEST, Meter())
        await anext(stream)
        await anext(stream)
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        provider.limiter.release()
        with pytest.raises(errors.ServiceUnavailable, match="credentials"):
            await waiting
        assert provider.limiter.free == 1 and provider.limiter.waiting == 0

    asyncio.run(main())


def slow(delay: float, answer: httpx.Response, seen: list[str]) -> BedrockProvider:
    """A provider whose upstream takes `delay` to answer (its status line)."""
    settings = UpstreamSettings(
        type="bedrock", endpoint_url="http://up", max_concurrency=1, accept_after_seconds=0.05
    )
    provider = BedrockProvider("up", settings)

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append("asked")
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return answer

    provider.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return provider


def test_a_slow_upstream_is_accepted_and_its_refusal_comes_after() -> None:
    async def main() -> None:
        seen: list[str] = []
        provider = slow(0.3, httpx.Response(429, json={"message": "Rate exceeded"}), seen)
        stream = provider.stream(REQUEST, Meter())
        opened = [await anext(stream), await anext(stream)]  # before the upstream answered
        assert isinstance(opened[0], MessageStart) and seen == ["asked"]
        with pytest.raises(errors.Throttled, match="Rate exceeded"):
            await anext(stream)
        assert provider.limiter.free == 1

    asyncio.run(main())


def test_leaving_while_a_slow_upstream_answers_cancels_the_call() -> None:
    async def main() -> None:
        seen: list[str] = []
        provider = slow(5, httpx.Response(429), seen)
        stream = provider.stream(REQUEST, Meter())
        await anext(stream)
        await anext(stream)
        await stream.aclose()  # the client left before the upstream answered
        assert seen == ["asked", "cancelled"] and provider.limiter.free == 1

    asyncio.run(main())
