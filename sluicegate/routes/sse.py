"""What every server-sent-events door shares: the headers and the heartbeats.

Proxies (nginx, ALB, Cloudflare) cut a stream that stays silent for 60-120 s; a queued request
or a slow model can be that quiet. `with_heartbeats` sends a beat (an Anthropic `ping` event, or
an SSE comment) whenever nothing else went out for `every` seconds, from the moment the request
is accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from sluicegate.generation import Generation
from sluicegate.routes.streaming import StreamResponse

HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
MEDIA_TYPE = "text/event-stream"
MAX_READY = 1024  # chunks read ahead of a client that is slow to take them


async def with_heartbeats(
    chunks: AsyncGenerator[bytes, None], beat: bytes, every: float
) -> AsyncGenerator[bytes, None]:
    """`chunks` as they come, with `beat` after each `every` seconds of silence; whatever is
    ready at once goes out joined, in one send. `chunks` is closed on every way out.

    One task reads `chunks` into a buffer for the life of the stream (no task or wait per
    chunk: at thousands of chunks a second, that was the cost)."""
    ready: list[bytes] = []
    woken, taken = asyncio.Event(), asyncio.Event()
    ended: list[BaseException | None] = []

    async def pump() -> None:
        try:
            async for chunk in chunks:
                ready.append(chunk)
                woken.set()
                if len(ready) >= MAX_READY:  # a slow client: wait for it, do not hoard
                    taken.clear()
                    await taken.wait()
            ended.append(None)
        except Exception as exc:  # handed to the reader, raised there
            ended.append(exc)
        finally:
            woken.set()
            await chunks.aclose()

    reader = asyncio.create_task(pump())
    try:
        while True:
            if not ready and not ended:
                try:
                    async with asyncio.timeout(every):
                        await woken.wait()
                except TimeoutError:
                    yield beat
                    continue
            woken.clear()
            if ready:
                out = b"".join(ready)
                ready.clear()
                taken.set()
                yield out
            elif ended:
                if ended[0] is not None:
                    raise ended[0]
                return
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def sse_response(
    gen: Generation,
    chunks: AsyncGenerator[bytes, None],
    beat: bytes,
    every: float,
    headers: dict[str, str] | None = None,
    on_disconnect: Callable[[], object] | None = None,
) -> StreamResponse:
    """A streamed SSE answer for `gen`: heartbeats, no caching or proxy buffering, and a client
    that leaves cancels the generation as `disconnected` (unless `on_disconnect` says else)."""
    return StreamResponse(
        with_heartbeats(chunks, beat, every),
        MEDIA_TYPE,
        headers={**HEADERS, **(headers or {})},
        on_disconnect=on_disconnect or (lambda: gen.cancel("disconnected")),
    )
