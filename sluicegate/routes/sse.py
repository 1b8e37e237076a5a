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


async def with_heartbeats(
    chunks: AsyncGenerator[bytes, None], beat: bytes, every: float
) -> AsyncGenerator[bytes, None]:
    """`chunks` as they come, with `beat` after each `every` seconds of silence. `chunks` is
    closed on every way out."""
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(chunks))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield beat
                continue
            finished, pending = pending, None
            try:
                chunk = finished.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await chunks.aclose()


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
