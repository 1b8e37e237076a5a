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
    assert [x for x in got if x != b"beat"] == [b"c0", b"c1", b"c2"]
    assert got[0] == b"c0" and got.index(b"c1") >= 3  # three beats while c1 took 0.35 s
    assert slow.closed


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
