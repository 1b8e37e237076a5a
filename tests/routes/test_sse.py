"""Heartbeats between slow chunks, and the chunks closed however the stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from sluicegate.routes.sse import with_heartbeats


class Slow:
    def __init__(self, gaps: list[float]) -> None:
        self.gaps = gaps
        self.closed = False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            for i, gap in enumerate(self.gaps):
                await asyncio.sleep(gap)
                yield f"c{i}".encode()
        finally:
            self.closed = True


def test_beats_fill_the_silences_and_nothing_is_lost() -> None:
    slow = Slow([0.0, 0.35, 0.0])

    async def main() -> list[bytes]:
        return [x async for x in with_heartbeats(slow.chunks(), b"beat", 0.1)]

    got = asyncio.run(main())
    assert b"".join(x for x in got if x != b"beat") == b"c0c1c2"
    assert got[0] == b"c0" and got[1:4] == [b"beat"] * 3  # three beats while c1 took 0.35 s
    assert slow.closed


def test_what_is_ready_at_once_goes_out_in_one_piece_and_a_slow_reader_bounds_it() -> None:
    made = 0

    async def burst() -> AsyncGenerator[bytes, None]:
        nonlocal made
        for i in range(5000):
            made += 1
            yield b"%d," % i

    async def main() -> tuple[list[bytes], list[int]]:
        got, ahead = [], []
        async for piece in with_heartbeats(burst(), b"beat", 5):
            got.append(piece)
            ahead.append(made - sum(p.count(b",") for p in got))
            await asyncio.sleep(0.001)  # a slow client
        return got, ahead

    got, ahead = asyncio.run(main())
    assert b"".join(got) == b"".join(b"%d," % i for i in range(5000))
    assert len(got) <= 10  # joined, not 5,000 sends
    assert max(ahead) <= 1024  # read ahead of the client by at most MAX_READY chunks


def test_leaving_early_closes_the_chunks_even_mid_wait() -> None:
    slow = Slow([0.0, 10.0])

    async def main() -> list[bytes]:
        got = []
        stream = with_heartbeats(slow.chunks(), b"beat", 0.05)
        async for x in stream:
            got.append(x)
            if len(got) == 3:
                break
        await stream.aclose()
        return got

    assert asyncio.run(main()) == [b"c0", b"beat", b"beat"]
    assert slow.closed
