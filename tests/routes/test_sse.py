"""A log as an SSE stream: heartbeats in the silences, bursts joined, the end where the door
says, and nothing left waiting however the stream ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sluicegate.events import Event, TextDelta
from sluicegate.generation import Changes
from sluicegate.routes.sse import MAX_BATCH, log_stream


class Log:
    """The part of a generation that log_stream reads (bus/base.Followable)."""

    def __init__(self) -> None:
        self.log: list[Event] = []
        self.done = False
        self.changes = Changes()

    def next_change(self) -> asyncio.Future[None]:
        return self.changes.future()

    def add(self, *texts: str, end: bool = False) -> None:
        self.log += [TextDelta(t) for t in texts]
        self.done = end
        self.changes.notify()

    async def play(self, gaps: list[float]) -> None:
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)
            self.add(f"c{i}", end=i == len(gaps) - 1)

    def pending(self) -> int:
        return sum(not w.done() for w in self.changes._waiters)


def text(_: int, event: Event) -> tuple[list[bytes], bool]:
    assert isinstance(event, TextDelta)
    return [event.text.encode()], event.text == "last"


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [x async for x in stream]


def test_beats_fill_the_silences_and_nothing_is_lost() -> None:
    log = Log()

    async def main() -> list[bytes]:
        player = asyncio.create_task(log.play([0.0, 0.35, 0.0]))
        got = await collect(log_stream(log, text, b"beat", 0.1))
        await player
        return got

    got = asyncio.run(main())
    assert b"".join(x for x in got if x != b"beat") == b"c0c1c2"
    assert got[0] == b"c0" and got[1:4] == [b"beat"] * 3  # three beats while c1 took 0.35 s
    assert b"beat" not in got[4:]


def test_no_beat_while_chunks_come_closer_than_the_beat_interval() -> None:
    """The heartbeat timer, set once, moves on when it finds that something went out since."""
    log = Log()

    async def main() -> list[bytes]:
        player = asyncio.create_task(log.play([0.03] * 20))  # 0.6 s: the timer fires twice
        got = await collect(log_stream(log, text, b"beat", 0.25))
        await player
        return got

    got = asyncio.run(main())
    assert b"".join(got) == b"".join(b"c%d" % i for i in range(20))
    assert b"beat" not in got


def test_what_is_ready_at_once_goes_out_in_one_piece() -> None:
    log = Log()
    log.add(*(f"{i}," for i in range(5000)), end=True)

    got = asyncio.run(collect(log_stream(log, text, b"beat", 5)))
    assert b"".join(got) == b"".join(b"%d," % i for i in range(5000))
    assert len(got) == -(-5000 // MAX_BATCH)  # joined, MAX_BATCH events at most per send


def test_events_after_the_door_s_last_are_not_sent() -> None:
    log = Log()
    log.add("a", "last", "after")  # the log goes on (e.g. a usage chunk the door ends before)

    assert asyncio.run(collect(log_stream(log, text, b"beat", 5))) == [b"alast"]


def test_a_render_that_sends_nothing_for_an_event_sends_no_empty_piece() -> None:
    log = Log()

    def odd_only(i: int, event: Event) -> tuple[list[bytes], bool]:
        return ([b"%d" % i] if i % 2 else []), False

    async def main() -> list[bytes]:
        stream = log_stream(log, odd_only, b"beat", 5)
        log.add("x")
        got = [await anext(stream)]
        log.add("y")  # renders to nothing: the stream waits on
        log.add("z", end=True)
        got += [x async for x in stream]
        return got

    assert asyncio.run(main()) == [b"1", b"3"]


def test_leaving_early_mid_wait_leaves_nothing_waiting() -> None:
    log = Log()

    async def main() -> tuple[list[bytes], int, int, int]:
        loop = asyncio.get_running_loop()
        log.add("c0")
        got: list[bytes] = []
        stream = log_stream(log, text, b"beat", 0.05)

        async def client() -> None:
            async with contextlib.aclosing(stream):
                async for x in stream:
                    got.append(x)

        reader = asyncio.create_task(client())
        await asyncio.sleep(0.12)  # c0 and beats: the stream now waits for the log
        waiting_before = log.pending()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        live_timers = sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]
        return got, waiting_before, log.pending(), live_timers

    got, before, after, live_timers = asyncio.run(main())
    assert got[0] == b"c0" and got[1:] == [b"beat"] * (len(got) - 1) and len(got) >= 2
    assert (before, after) == (1, 0)  # the wait was given up
    assert live_timers == 0  # and the heartbeat timer cancelled with the stream
