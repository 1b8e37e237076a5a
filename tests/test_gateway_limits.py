"""The per-caller cap counts live generations only: each start it refuses, each one the
provider refuses, and each that ends gives its place back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from sluicegate import errors
from sluicegate.config import Route, Settings
from sluicegate.events import ChatRequest, Event, Message
from sluicegate.gateway import Gateway
from sluicegate.generation import Meter
from sluicegate.providers.scripted import ScriptedProvider


class Refusing(ScriptedProvider):
    """Refuses every request before its first event, as a full queue does."""

    async def stream(self, request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        raise errors.Throttled("full")
        yield  # pragma: no cover


def request(text: str = "hi") -> ChatRequest:
    return ChatRequest("m", (Message("user", text),), max_tokens=50)


def gateway(cap: int, provider: ScriptedProvider) -> Gateway:
    settings = Settings(
        routes=[Route(match="*", provider="scripted")], max_generations_per_caller=cap
    )
    return Gateway(settings, {"scripted": provider})


def test_the_cap_counts_per_address_and_ends_give_places_back() -> None:
    gw = gateway(2, ScriptedProvider(delay=0.01, length=50))

    async def main() -> None:
        a1 = await gw.start(request(), route="t", caller="10.0.0.1")
        a2 = await gw.start(request(), route="t", caller="10.0.0.1")
        with pytest.raises(errors.Throttled):
            await gw.start(request(), route="t", caller="10.0.0.1")
        b = await gw.start(request(), route="t", caller="10.0.0.2")  # another address
        assert gw.live_by_caller == {"10.0.0.1": 2, "10.0.0.2": 1}
        a1.cancel("cancelled")
        await a1.wait()
        a3 = await gw.start(request(), route="t", caller="10.0.0.1")
        for gen in (a2, a3, b):
            await gen.wait()
        assert gw.live_by_caller == {}

    asyncio.run(main())


def test_a_start_the_provider_refuses_holds_no_place() -> None:
    gw = gateway(1, Refusing())

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(errors.Throttled):
                await gw.start(request(), route="t", caller="10.0.0.1")
        assert gw.live_by_caller == {}

    asyncio.run(main())


def test_zero_lifts_the_cap() -> None:
    gw = gateway(0, ScriptedProvider(delay=0.05, length=5))

    async def main() -> None:
        gens = [await gw.start(request(), route="t", caller="x") for _ in range(100)]
        assert gw.live_by_caller["x"] == 100
        for gen in gens:
            gen.cancel("cancelled")
            await gen.wait()
        assert gw.live_by_caller == {}

    asyncio.run(main())
