"""One suite for both buses (bus/base.Bus): what one replica publishes, another finds, follows,
stops and reaches. With the memory bus the "other replica" is the same process; with the Redis
bus it is a second RedisBus on a real redis-server (its own replica id, its own registries)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sluicegate import errors
from sluicegate.bus import bus_for
from sluicegate.bus.base import Bus, Followable, Named
from sluicegate.bus.memory import Connection
from sluicegate.config import BusSettings, Route, Settings
from sluicegate.events import ChatRequest, Message, MessageStop, TextDelta
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Redis, redis_server


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    with redis_server() as r:
        yield r


@dataclass
class Pair:
    """Two replicas: `a` runs generations and holds sockets, `b` reaches them."""

    a: Gateway
    b: Bus

    @property
    def same(self) -> bool:
        return self.a.bus is self.b


def gateway(bus: BusSettings, delay: float = 0.01, length: int = 40) -> Gateway:
    settings = Settings(routes=[Route(match="*", provider="scripted")], bus=bus)
    return Gateway(settings, {"scripted": ScriptedProvider(delay=delay, length=length)})


@contextlib.asynccontextmanager
async def replicas(kind: str, redis: Redis, **bus: Any) -> AsyncIterator[Pair]:
    if kind == "memory":
        a = gateway(BusSettings())
        await a.bus.start()
        yield Pair(a, a.bus)
        return
    settings = BusSettings(url=redis.url, **bus)
    a = gateway(settings)
    b = bus_for(Settings(bus=settings), {})
    await a.bus.start()
    await b.start()
    try:
        yield Pair(a, b)
    finally:
        await b.close()
        await a.bus.close()


async def find(bus: Bus, gen_id: str) -> Followable:
    """A generation another replica started: Redis has it from that replica's next flush."""
    for _ in range(100):
        if (found := await bus.find(gen_id)) is not None:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"{gen_id} not found")


def request(max_tokens: int = 40) -> ChatRequest:
    return ChatRequest("m", (Message("user", "hi"),), max_tokens=max_tokens)


KINDS = ["memory", "redis"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_generation_is_found_and_followed_from_another_replica(kind: str, redis: Redis) -> None:
    async def main() -> None:
        async with replicas(kind, redis) as pair:
            gen = await pair.a.start(request(), route="test")
            await asyncio.sleep(0.15)  # part of it has been generated
            found = await find(pair.b, gen.id)
            assert found.id == gen.id
            seen = [event async for _, event in found.follow()]
            assert seen == gen.log  # every event, in order, up to and with the end
            assert isinstance(seen[-1], MessageStop) and found.done
            assert found.stop_reason == "max_tokens" and found.usage.output_tokens == 40
            # A follower may start anywhere: after=N yields the events after the N-th.
            tail = [i async for i, _ in found.follow(5)]
            assert tail == list(range(6, len(gen.log) + 1))
            assert await pair.b.find("msg_bdrk_nothing") is None

    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_a_stop_through_another_replica_ends_the_generation_early(kind: str, redis: Redis) -> None:
    async def main() -> None:
        async with replicas(kind, redis) as pair:
            gen = await pair.a.start(request(), route="test")
            found = await find(pair.b, gen.id)
            async for _, event in found.follow():
                if isinstance(event, TextDelta):
                    break
            assert found.cancel("cancelled")
            await asyncio.wait_for(gen.wait(), 5)
            assert gen.stop_reason == "cancelled" and gen.usage.output_tokens < 30
            ends = [e async for _, e in found.follow()]  # the follower sees the same end
            assert isinstance(ends[-1], MessageStop) and found.stop_reason == "cancelled"
            assert not found.cancel("cancelled")  # already ended

    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_names_lead_to_generations_from_any_replica(kind: str, redis: Redis) -> None:
    async def main() -> None:
        async with replicas(kind, redis) as pair:
            gen = await pair.a.start(request(), route="test")
            pair.a.bus.name("owner-1", "g1", Named(gen.id, "token-1"))
            named = None
            for _ in range(100):  # written with the next flush
                if (named := await pair.b.find_named("owner-1", "g1")) is not None:
                    break
                await asyncio.sleep(0.01)
            assert named == Named(gen.id, "token-1")
            assert await pair.b.find_named("owner-2", "g1") is None
            await gen.wait()

    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_sockets_are_reached_described_and_closed_from_any_replica(kind: str, redis: Redis) -> None:
    async def main() -> None:
        async with replicas(kind, redis) as pair:
            conn = Connection("owner", "10.1.2.3", "agent/1")
            pair.a.bus.register(conn)
            await asyncio.sleep(0.1)
            await pair.b.post(conn.id, b"hello")
            await pair.b.post(conn.id, b"\xff\xfe")  # not UTF-8: a binary message
            assert await asyncio.wait_for(conn.outbound.get(), 5) == "hello"
            assert await asyncio.wait_for(conn.outbound.get(), 5) == b"\xff\xfe"
            info = await pair.b.connection(conn.id)
            assert info["identity"] == {"sourceIp": "10.1.2.3", "userAgent": "agent/1"}
            assert info["connectedAt"].endswith("Z")
            await pair.b.disconnect(conn.id)
            assert conn.closed and conn.close_code == 1000
            pair.a.bus.unregister(conn)
            await asyncio.sleep(0.1)
            for call in (pair.b.post(conn.id, b"x"), pair.b.connection(conn.id)):
                with pytest.raises(errors.Gone):
                    await call
            with pytest.raises(errors.Gone):
                await pair.b.post("never-existed=", b"x")

    asyncio.run(main())
