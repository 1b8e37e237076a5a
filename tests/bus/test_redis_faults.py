"""The Redis bus under faults, on a real redis-server: a replica that stops renewing its lease
(as after kill -9), Redis restarted mid-stream, Redis down, keys expiring, and what the token
path costs in Redis commands."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import pytest

from sluicegate import errors
from sluicegate.bus.base import Named
from sluicegate.bus.memory import Connection
from sluicegate.bus.redis import RedisBus
from sluicegate.config import BusSettings
from sluicegate.events import ErrorEvent, MessageStop, TextDelta
from tests.bus.test_bus import find, gateway, request
from tests.conftest import free_port, redis_server, serve_command, wait_until


def bus_settings(url: str, **extra: Any) -> BusSettings:
    return BusSettings(url=url, **extra)


def other(url: str, **extra: Any) -> RedisBus:
    return RedisBus(bus_settings(url, **extra), {})


def test_a_replica_that_stops_renewing_its_lease_ends_its_readers_with_interrupted() -> None:
    async def main(url: str) -> None:
        a = gateway(bus_settings(url, lease_seconds=1.0), delay=0.05, length=200)
        b = other(url)
        await a.bus.start()
        await b.start()
        gen = await a.start(request(200), route="test")
        found = await find(b, gen.id)
        async for _, event in found.follow():
            if isinstance(event, TextDelta):
                break
        # As kill -9 does: A stops everything at once, leaving its lease to lapse.
        for task in a.bus._tasks:  # type: ignore[attr-defined]
            task.cancel()
        gen.cancel("cancelled")  # (its model stops too; nothing more reaches Redis)
        t0 = time.monotonic()
        seen = [e async for _, e in found.follow()]
        took = time.monotonic() - t0
        assert isinstance(seen[-1], MessageStop) and found.stop_reason == "error"
        failure = next(e for e in seen if isinstance(e, ErrorEvent))
        assert failure.code == "Interrupted" and "stopped before it ended" in failure.message
        assert took < 1.0 + 3.0  # the lease, a read block and a margin: bounded, never a hang
        deltas = [e for e in seen if isinstance(e, TextDelta)]
        assert deltas == [e for e in gen.log if isinstance(e, TextDelta)][: len(deltas)]
        await b.close()

    with redis_server() as r:
        asyncio.run(main(r.url))


def test_the_token_path_costs_far_less_than_a_command_per_token() -> None:
    async def main(url: str) -> tuple[int, int, int]:
        a = gateway(bus_settings(url), delay=0.001)
        bus = a.bus
        assert isinstance(bus, RedisBus)
        await bus.start()
        commands, trips = bus.commands, bus.round_trips
        gens = [await a.start(request(40), route="test") for _ in range(8)]
        for gen in gens:
            await gen.wait()
        await asyncio.sleep(0.1)
        commands, trips = bus.commands - commands, bus.round_trips - trips
        await bus.close()
        return commands, trips, sum(g.usage.output_tokens for g in gens)

    with redis_server() as r:
        commands, trips, tokens = asyncio.run(main(r.url))
    # New events go out as one entry per generation and tick, all generations in one round
    # trip: 8 streams of 40 tokens at 1 ms in about 40 ms make a handful of round trips.
    assert tokens == 320
    assert trips < tokens / 10 and commands < tokens / 2, (trips, commands)


def test_redis_restarted_mid_stream_loses_nothing() -> None:
    async def main(r: Any) -> None:
        a = gateway(bus_settings(r.url), delay=0.02, length=150)
        b = other(r.url)
        await a.bus.start()
        await b.start()
        conn = Connection("o", "10.0.0.9", "ua")
        a.bus.register(conn)
        gen = await a.start(request(150), route="test")  # 150 words at 20 ms: 3 s
        a.bus.name("o", "g", Named(gen.id, "t"))
        await asyncio.sleep(0.5)
        r.kill()
        await asyncio.sleep(0.3)
        with pytest.raises(errors.ServiceUnavailable):  # what needs Redis says so, in time
            await b.find("msg_bdrk_anything")
        with pytest.raises(errors.ServiceUnavailable):
            await b.post(conn.id, b"x")
        grown = len(gen.log)
        await asyncio.sleep(0.5)
        assert len(gen.log) > grown  # the stream runs on locally while Redis is down
        r.start()  # an empty Redis, on the same port
        named = None
        for _ in range(100):  # the running generation's name is written again
            if (named := await b.find_named("o", "g")) is not None:
                break
            await asyncio.sleep(0.05)
        assert named == Named(gen.id, "t") and not gen.done
        await gen.wait()
        # The replica reconnects, writes its logs again from where Redis lost them, and
        # registers its sockets again: stop, resume and @connections work as before.
        found = None
        for _ in range(100):
            found = await b.find(gen.id)
            if found is not None and found.done:
                break
            await asyncio.sleep(0.05)
        assert found is not None and found.done
        assert found.log == gen.log
        for _ in range(100):
            try:
                await b.post(conn.id, b"after")
                break
            except errors.Gone:
                await asyncio.sleep(0.05)
        got = []
        while not conn.outbound.empty():
            got.append(conn.outbound.get_nowait())
        assert got == ["after"]
        await b.close()
        await a.bus.close()

    with redis_server() as r:
        asyncio.run(main(r))


def test_keys_expire_once_their_generations_end() -> None:
    # The keys are kept 4 s after each generation ends: the 20 generations and the count of
    # their keys take well under that on a slow machine (1 s was not always enough).
    async def main(url: str) -> None:
        a = gateway(bus_settings(url, keep_seconds=4.0), delay=0.001)
        await a.bus.start()
        for _ in range(20):
            gen = await a.start(request(20), route="test")
            a.bus.name("o", gen.id[-6:], Named(gen.id, "t"))
            await gen.wait()
        await asyncio.sleep(0.1)
        await a.bus.close()

    with redis_server() as r:
        asyncio.run(main(r.url))
        time.sleep(0.2)
        during = r.keys()
        assert sum(k.startswith("sg:log:") for k in during) == 20
        assert sum(k.startswith("sg:name:") for k in during) == 20
        # logs, records and names gone; the closed replica's lease too
        assert wait_until(lambda: r.keys() == [], timeout=15)


def test_serve_with_redis_unreachable_says_so_and_exits_non_zero() -> None:
    with redis_server() as r:
        url = r.url  # a port nobody listens on any more
    cmd = serve_command(free_port(), "--bus", url)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    out = done.stdout + done.stderr
    assert f"The bus at {url} does not answer" in out and "Traceback" not in out
