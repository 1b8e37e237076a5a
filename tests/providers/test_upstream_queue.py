"""An upstream provider's queue, driven directly (a real aiohttp server in the same loop as
the upstream): a request that has to wait is accepted at once, and what the upstream says after
the wait, a refusal included, comes after that, in-band; one that does not wait is refused
before it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from sluicegate import errors
from sluicegate.config import UpstreamSettings
from sluicegate.events import BlockStart, ChatRequest, Message, MessageStart
from sluicegate.generation import Meter
from sluicegate.providers.bedrock import BedrockProvider
from sluicegate.providers.upstream import Outgoing

REQUEST = ChatRequest("anthropic.claude-3", (Message("user", "hi"),), 5)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


@contextlib.asynccontextmanager
async def upstream(handler: Handler, **settings: float) -> AsyncIterator[BedrockProvider]:
    """A provider with one slot in front of an upstream on 127.0.0.1 that answers with
    `handler` (cancelled when the provider hangs up)."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    up = UpstreamSettings(
        type="bedrock", endpoint_url=f"http://127.0.0.1:{port}", max_concurrency=1, **settings
    )
    provider = BedrockProvider("up", up)
    try:
        yield provider
    finally:
        await provider.aclose()
        await runner.cleanup()


async def rate_exceeded(request: web.Request) -> web.Response:
    return web.json_response({"message": "Rate exceeded"}, status=429)


def test_a_refusal_after_the_wait_comes_after_the_accept() -> None:
    async def main() -> None:
        async with upstream(rate_exceeded) as provider:
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
        async with upstream(rate_exceeded) as provider:
            with pytest.raises(errors.Throttled, match="answered 429"):
                await anext(provider.stream(REQUEST, Meter()))
            assert provider.limiter.free == 1

    asyncio.run(main())


def test_a_request_that_fails_after_the_wait_gives_its_slot_back() -> None:
    async def main() -> None:
        async with upstream(rate_exceeded) as provider:
            calls = []
            build = provider.outgoing

            def outgoing(request: ChatRequest) -> Outgoing:
                calls.append(request)
                if len(calls) > 1:  # signed again after the wait: the credentials are gone
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


def slow(delay: float, status: int, seen: list[str], hung_up: asyncio.Event) -> Handler:
    """An upstream that takes `delay` to answer (its status line)."""

    async def handler(request: web.Request) -> web.Response:
        seen.append("asked")
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            seen.append("cancelled")
            hung_up.set()
            raise
        return web.json_response({"message": "Rate exceeded"}, status=status)

    return handler


def test_a_slow_upstream_is_accepted_and_its_refusal_comes_after() -> None:
    async def main() -> None:
        seen: list[str] = []
        answer = slow(0.3, 429, seen, asyncio.Event())
        async with upstream(answer, accept_after_seconds=0.05) as provider:
            stream = provider.stream(REQUEST, Meter())
            opened = [await anext(stream), await anext(stream)]  # before the upstream answered
            assert isinstance(opened[0], MessageStart) and seen == ["asked"]
            with pytest.raises(errors.Throttled, match="Rate exceeded"):
                await anext(stream)
            assert provider.limiter.free == 1

    asyncio.run(main())


def test_leaving_while_a_slow_upstream_answers_hangs_up_on_it() -> None:
    async def main() -> None:
        seen: list[str] = []
        hung_up = asyncio.Event()
        async with upstream(slow(5, 429, seen, hung_up), accept_after_seconds=0.05) as provider:
            stream = provider.stream(REQUEST, Meter())
            await anext(stream)
            await anext(stream)
            await stream.aclose()  # the client left before the upstream answered
            assert provider.limiter.free == 1
            await asyncio.wait_for(hung_up.wait(), 3)  # the upstream saw the connection close
            assert seen == ["asked", "cancelled"]

    asyncio.run(main())
