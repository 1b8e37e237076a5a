"""What every server-sent-events door shares: the headers, the log as a stream, the heartbeats.

Proxies (nginx, ALB, Cloudflare) cut a stream that stays silent for 60-120 s; a queued request
or a slow model can be that quiet. `log_stream` sends a beat (an Anthropic `ping` event, or an
SSE comment) whenever nothing else went out for `every` seconds, from the moment the request is
accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable

from sluicegate.bus.base import Followable
from sluicegate.events import Event
from sluicegate.routes.streaming import StreamResponse

HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
MEDIA_TYPE = "text/event-stream"
MAX_BATCH = 1024  # events joined into one send at most (a client that fell far behind)
CLOCK_SLACK = 0.001  # a timer may fire this early (the loop's clock resolution and more)

# A door's events for one logged event (its id in the log, the event): the bytes to send, and
# whether the stream ends with it.
Render = Callable[[int, Event], tuple[Iterable[bytes], bool]]


class Beats:
    """When a heartbeat is due: after `every` seconds with nothing sent. One timer for the
    stream's life, which moves on to `every` after the last send when it fires (no timer per
    chunk). `waiting`, a future the stream waits on, is woken when a beat falls due.

    A class, not a closure: a timer callback that closes over its own timer is a reference
    cycle, and every stream's would wait for the full garbage collection."""

    __slots__ = ("due", "every", "loop", "quiet_since", "timer", "waiting")

    def __init__(self, every: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.every = every
        self.due = False
        self.waiting: asyncio.Future[None] | None = None
        self.quiet_since = self.loop.time()
        self.timer: asyncio.TimerHandle | None = self.loop.call_at(
            self.quiet_since + every, self._tick
        )

    def sent(self) -> None:
        """Something went out now (a beat, or anything else: no beat is due)."""
        self.quiet_since = self.loop.time()
        self.due = False

    def _tick(self) -> None:
        now, due = self.loop.time(), self.quiet_since + self.every
        if now < due - CLOCK_SLACK:
            self.timer = self.loop.call_at(due, self._tick)
            return
        self.timer, self.due = self.loop.call_at(now + self.every, self._tick), True
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(None)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def log_stream(
    source: Followable, render: Render, beat: bytes, every: float
) -> AsyncGenerator[bytes, None]:
    """What `render` makes of each event of `source`'s log, from the first, as the log grows,
    until `render` says an event is the last or the log ends; `beat` after each `every` seconds
    in which nothing went out. What is ready at once goes out joined, in one send.

    All of it runs in the sender's task: a chunk costs that task one wake-up, no task, wait or
    timer of its own (at thousands of chunks a second, those were the cost)."""
    beats = Beats(every)
    i = 0
    try:
        while True:
            log = source.log
            if i < len(log):
                out: list[bytes] = []
                last = False
                end = min(len(log), i + MAX_BATCH)
                while i < end and not last:
                    i += 1
                    pieces, last = render(i, log[i - 1])
                    out.extend(pieces)
                if out:
                    yield b"".join(out)
                    beats.sent()
                if last:
                    return
            elif source.done:
                return
            elif beats.due:
                yield beat
                beats.sent()
            else:
                waiting = beats.waiting = source.next_change()
                try:
                    await waiting
                finally:
                    waiting.cancel()
                    beats.waiting = None
    finally:
        beats.close()


def sse_response(
    gen: Followable,
    render: Render,
    beat: bytes,
    every: float,
    headers: dict[str, str] | None = None,
    *,
    cancels: bool = True,
) -> StreamResponse:
    """A streamed SSE answer for `gen`: heartbeats, no caching or proxy buffering, and a client
    that leaves cancels the generation as `disconnected` (or, not `cancels`, a client that only
    watches: leaving stops the sending, not the generation)."""
    return StreamResponse(
        log_stream(gen, render, beat, every),
        MEDIA_TYPE,
        headers={**HEADERS, **(headers or {})},
        on_disconnect=(lambda: gen.cancel("disconnected")) if cancels else None,
    )
