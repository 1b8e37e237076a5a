"""The Generation: one per request, the single owner of lifecycle, cancel, timings and usage.

A provider is an async generator of canonical events. The Generation drives it in its own task,
appends what it yields to an append-only log (ids 1, 2, 3...), measures time, and ends it in
exactly one way: naturally, by error, or by `cancel(reason)`, which closes the provider so the
producer stops. Whatever the end, the log closes with MessageDelta + MessageStop carrying the
stop reason and the usage so far. Routes read the log with `follow(after)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sluicegate import errors
from sluicegate.events import (
    BlockStart,
    BlockStop,
    ChatRequest,
    ErrorEvent,
    Event,
    EventLog,
    MessageDelta,
    MessageStart,
    MessageStop,
    Metrics,
    StopReason,
    TextDelta,
    ToolInputDelta,
    Usage,
)

log = logging.getLogger(__name__)
EVENT_BYTES = 64  # one logged event besides its text (measured: a text delta is its str and a slot)
HANDOFF_TURNS = 3  # loop turns given to the first token on its way out (see Generation._run)


@dataclass(slots=True)
class Meter:
    """What a provider reports while it works: token counts, when its queue wait ended, the
    sampling it used."""

    key: str = ""
    usage: Usage = field(default_factory=Usage)
    admitted_at: float | None = None
    # Time spent waiting on an upstream (connect, first byte, each chunk): the rest is ours.
    upstream_seconds: float = 0.0
    # Told of output tokens counted after the generation ended (an upstream being drained).
    on_late_usage: Callable[[int], None] | None = None
    # The sampling the provider settled on, defaults filled in (empty: it does not sample).
    sampling: dict[str, float | int | None] = field(default_factory=dict)

    def admit(self) -> None:
        if self.admitted_at is None:
            self.admitted_at = time.monotonic()


# A provider stream: given the request and the meter to report into, yields canonical events.
# Its first event (MessageStart) means "accepted": anything it raises before that is a request
# error that routes answer before the first byte.
StreamFn = Callable[[ChatRequest, Meter], AsyncGenerator[Event, None]]


class Changes:
    """Whoever waits for a log's next event: a future each, done at the next `notify`.

    (An asyncio.Event made afresh at every append cost more than the rest of the append: an
    Event's first wait takes the event loop's global lock.)"""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def future(self) -> asyncio.Future[None]:
        """Done at the next notify; cancel it to stop waiting."""
        waiter = asyncio.get_running_loop().create_future()
        if len(self._waiters) > 16:  # waits given up (cancelled) since the last notify
            self._waiters = [w for w in self._waiters if not w.done()]
        self._waiters.append(waiter)
        return waiter

    def notify(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


@dataclass(slots=True)
class Timings:
    created: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    ended: float | None = None


class Generation:
    """One request's generation: see the module docstring."""

    def __init__(
        self,
        request: ChatRequest,
        stream: StreamFn,
        *,
        route: str,
        provider: str,
        owner: str = "",
        on_token_gap: Callable[[Generation, float], None] | None = None,
        on_end: Callable[[Generation], None] | None = None,
    ) -> None:
        self.id = "msg_bdrk_" + secrets.token_hex(12)
        self.request = request
        # The conversation's shape outlives its text (dropped at the end): introspection shows it.
        self.roles = tuple(m.role for m in request.messages)
        self.route = route
        self.provider = provider
        self.owner = owner
        self.caller: str | None = None  # the address the gateway counts it against, while live
        self.meter = Meter(key=self.id)
        self.timings = Timings()
        self.log = EventLog()
        self.log_bytes = 0  # about what the log holds, once it ended (the gateway's budget)
        self.stop_reason: StopReason | None = None
        self.stop_sequence: str | None = None
        self.error: errors.SluicegateError | None = None
        self._agen = stream(request, self.meter)
        self._cancel_reason: StopReason | None = None
        self._interrupted: errors.SluicegateError | None = None
        self._changed = Changes()
        self._task: asyncio.Task[None] | None = None
        self._cancellable: asyncio.Future[Any] | None = None
        self._open_block: int | None = None  # the index of the block open now
        self._pending_stop: StopReason = "end_turn"
        self._on_token_gap = on_token_gap
        self._on_end = on_end

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Wait until the provider accepts the request, then keep generating in a task.

        Raises the provider's SluicegateError if it refuses the request (nothing was sent yet),
        or errors.Cancelled if the generation is cancelled while it waits.
        """
        # The provider's first step runs in the caller's task (no task of its own: a loop turn
        # less before the first byte); `cancel` meanwhile cancels that task, and takes the
        # cancellation back once it has reached the provider.
        caller = asyncio.current_task()
        self._cancellable = caller
        try:
            first = await self._agen.__anext__()
        except BaseException as exc:
            self._cancellable = None
            stopped = isinstance(exc, asyncio.CancelledError) and self._cancel_reason is not None
            if stopped and caller is not None:
                caller.uncancel()
            await self._agen.aclose()
            if not stopped:
                raise
            if self._interrupted is not None:
                raise self._interrupted from None
            reason = self._cancel_reason
            raise errors.Cancelled(f"The request ended ({reason}) before it started.") from None
        self._cancellable = None
        self._append(first)
        self._task = asyncio.create_task(self._run(), name=f"generation {self.id}")

    def cancel(self, reason: StopReason = "cancelled") -> bool:
        """End the generation early; the provider is closed before it produces more.

        Returns False if it had already ended.
        """
        if self.done or self._cancel_reason is not None:
            return False
        self._cancel_reason = reason
        if self._cancellable is not None:
            self._cancellable.cancel()
        return True

    def interrupt(self, exc: errors.SluicegateError) -> bool:
        """End early with an error (the server is draining...): each door's client gets its
        terminal error, so that it can tell this from a crash or a finished answer."""
        if self.done or self._cancel_reason is not None:
            return False
        self._interrupted = exc
        return self.cancel("error")

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    async def wait(self) -> None:
        """Return once the generation has ended."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def _run(self) -> None:
        # Cancelling a task that has not started skips its `finally`: only cancel once running.
        self._cancellable = asyncio.current_task()
        try:
            if self._cancel_reason is None:
                waiting = True  # for the first token
                async for event in self._agen:
                    self._append(event)
                    if waiting and self.timings.first_token is not None:
                        # Out before the rest of a burst is read: an upstream's answer that
                        # came in one read would otherwise all be parsed before it is sent.
                        # The token's way to a socket takes a few tasks in turn (a door's
                        # follower, its sender), each woken by the one before: a turn each.
                        waiting = False
                        for _ in range(HANDOFF_TURNS):
                            await asyncio.sleep(0)
        except asyncio.CancelledError:
            if self._cancel_reason is None:
                self._cancel_reason = "cancelled"
        except errors.SluicegateError as exc:
            self._fail(exc)
        except Exception as exc:
            log.exception("provider %s failed in generation %s", self.provider, self.id)
            self._fail(errors.SluicegateError(f"The model failed: {type(exc).__name__}"))
        finally:
            await self._agen.aclose()
            self._close()

    # -- the log ---------------------------------------------------------------------------

    def _append(self, event: Event) -> None:
        if self.done:
            return
        event = self._account(event)
        self.log.append(event)
        self._changed.notify()

    def _account(self, event: Event) -> Event:
        """Measure and count as events pass; fill in the figures only the Generation knows."""
        if isinstance(event, TextDelta | ToolInputDelta):
            self._on_text()
        elif isinstance(event, BlockStart):
            self._open_block = event.index
        elif isinstance(event, BlockStop):
            self._open_block = None
        elif isinstance(event, MessageStart):
            # Responses name the model id the caller asked for, under this generation's id.
            self.meter.usage.input_tokens = event.input_tokens
            return MessageStart(self.id, self.request.model, event.input_tokens)
        elif isinstance(event, MessageDelta):
            self._pending_stop = event.stop_reason
            self.stop_sequence = event.stop_sequence
            return MessageDelta(event.stop_reason, event.stop_sequence, self.usage.output_tokens)
        elif isinstance(event, MessageStop):
            return self._end(self._pending_stop)
        return event

    def _on_text(self) -> None:
        now = time.monotonic()
        t = self.timings
        if t.first_token is None:
            t.first_token = now
        elif t.last_token is not None and self._on_token_gap is not None:
            self._on_token_gap(self, now - t.last_token)
        t.last_token = now

    def _fail(self, exc: errors.SluicegateError) -> None:
        self.error = exc
        self._append(ErrorEvent(type(exc).__name__, exc.message))
        self._cancel_reason = "error"

    def _close(self) -> None:
        """Make sure the log ends with a terminal pair, whatever stopped the provider."""
        if self.done:
            return
        if self._interrupted is not None and self.error is None:
            self._fail(self._interrupted)
        reason: StopReason = self._cancel_reason or "error"
        if self._open_block is not None:
            self._append(BlockStop(self._open_block))
        self._append(MessageDelta(reason))
        self._append(MessageStop())

    def _end(self, reason: StopReason) -> MessageStop:
        self.timings.ended = time.monotonic()
        self.stop_reason = reason
        self.request = self.request.without_prompt()
        self.log_bytes = self.log.chars + EVENT_BYTES * (len(self.log) + 1)
        stop = MessageStop(Usage(self.usage.input_tokens, self.usage.output_tokens), self.metrics)
        if self._on_end is not None:
            self._on_end(self)
        return stop

    def follow(self, after: int = 0) -> AsyncIterator[tuple[int, Event]]:
        """Yield (id, event) for every event with id > after, then the live tail until the end."""
        return follow_log(self, after)

    def next_change(self) -> asyncio.Future[None]:
        """A future done once the log has grown (or ended)."""
        return self._changed.future()

    # -- figures ---------------------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        return self.meter.usage

    @property
    def metrics(self) -> Metrics:
        t = self.timings
        end = t.ended or time.monotonic()
        admitted = self.meter.admitted_at or end
        return Metrics(
            queue_ms=_ms(admitted - t.created),
            first_token_ms=None if t.first_token is None else _ms(t.first_token - t.created),
            total_ms=_ms(end - t.created),
        )


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


async def follow_log(source: Any, after: int) -> AsyncIterator[tuple[int, Event]]:
    """(id, event) of `source.log` after `after`, then each one appended, until `source.done`
    (`source.next_change()` is done at every append). A Generation's, or a mirror of another
    replica's (bus/redis.py)."""
    i = after
    while True:
        while i < len(source.log):
            i += 1
            yield i, source.log[i - 1]
        if source.done:
            return
        await source.next_change()
