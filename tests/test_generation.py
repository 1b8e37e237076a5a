"""Tests for the Generation: lifecycle, cancel, errors, the event log, usage and timings.

Providers here are fakes: async generators of canonical events, some framed by `text_message`
as the scripted provider does, some driven step by step by the test through a queue.
pytest-asyncio is not installed, so each test runs its own loop with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from sluicegate import errors
from sluicegate.events import (
    BlockStart,
    BlockStop,
    ChatRequest,
    ErrorEvent,
    Event,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    StopReason,
    TextDelta,
    Usage,
)
from sluicegate.generation import Generation, Meter, StreamFn
from sluicegate.providers.base import Piece, text_message
from sluicegate.routes.openai import chat_events
from sluicegate.routes.sse import log_stream
from sluicegate.translate.openai import ChatStream

T = TypeVar("T")
MODEL = "test-model"
TIMEOUT = 5.0  # only a guard against hangs; nothing is timed


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(main(), TIMEOUT)

    return asyncio.run(guarded())


def chat(*stops: str) -> ChatRequest:
    return ChatRequest(MODEL, (Message("user", "hi"),), 100, stop_sequences=stops)


def new(stream: StreamFn, request: ChatRequest | None = None, **kw: Any) -> Generation:
    return Generation(request or chat(), stream, route="test", provider="fake", **kw)


async def settle() -> None:
    """Let every ready task run a few steps."""
    for _ in range(20):
        await asyncio.sleep(0)


async def collect(gen: Generation, after: int = 0) -> list[tuple[int, Event]]:
    return [item async for item in gen.follow(after)]


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def text_provider(words: list[str], input_tokens: int = 5) -> StreamFn:
    """A provider like the scripted one: finite pieces framed by text_message."""

    async def stream(request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        async def pieces() -> AsyncGenerator[Piece, None]:
            for word in words:
                await asyncio.sleep(0)
                yield Piece(word)

        async for event in text_message(request, meter, input_tokens, pieces()):
            yield event

    return stream


def endless_provider(closed: list[str]) -> StreamFn:
    """Produces "x " forever, one token per piece, until closed."""

    async def stream(request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        async def pieces() -> AsyncGenerator[Piece, None]:
            try:
                while True:
                    await asyncio.sleep(0)
                    yield Piece("x ")
            finally:
                closed.append("pieces")

        try:
            async for event in text_message(request, meter, 3, pieces()):
                yield event
        finally:
            closed.append("provider")

    return stream


class Feed:
    """A provider the test drives: it yields what is put in (None ends it, an exception is
    raised) and counts a token per TextDelta."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()
        self.closed = False

    def put(self, *items: Event | BaseException | None) -> None:
        for item in items:
            self.queue.put_nowait(item)

    async def stream(self, request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        try:
            while (item := await self.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, TextDelta):
                    meter.usage.output_tokens += 1
                yield item
        finally:
            self.closed = True


def assert_terminal_pair_once(log: list[Event]) -> None:
    assert isinstance(log[-2], MessageDelta)
    assert isinstance(log[-1], MessageStop)
    assert sum(isinstance(e, MessageDelta) for e in log) == 1
    assert sum(isinstance(e, MessageStop) for e in log) == 1


# -- natural end --------------------------------------------------------------------------------


def test_natural_end() -> None:
    async def main() -> Generation:
        gen = new(text_provider(["Hello", " world"], input_tokens=5))
        await gen.start()
        await gen.wait()
        return gen

    gen = run(main)
    assert kinds(gen.log) == [
        "MessageStart",
        "BlockStart",
        "TextDelta",
        "TextDelta",
        "BlockStop",
        "MessageDelta",
        "MessageStop",
    ]
    assert gen.log[-2] == MessageDelta("end_turn", None, 2)
    stop = gen.log[-1]
    assert isinstance(stop, MessageStop)
    assert stop.usage == Usage(5, 2)
    assert stop.metrics is not None
    assert stop.metrics.first_token_ms is not None
    assert 0 <= stop.metrics.first_token_ms <= stop.metrics.total_ms
    assert gen.done
    assert gen.stop_reason == "end_turn"
    assert gen.stop_sequence is None
    assert gen.error is None
    assert gen.cancel() is False


def test_stop_sequence_end_is_recorded() -> None:
    async def main() -> Generation:
        gen = new(text_provider(["Hello", " wor", "ld", " more"]), chat("world"))
        await gen.start()
        await gen.wait()
        return gen

    gen = run(main)
    assert gen.stop_reason == "stop_sequence"
    assert gen.stop_sequence == "world"
    assert gen.log[-2] == MessageDelta("stop_sequence", "world", 3)
    assert "".join(e.text for e in gen.log if isinstance(e, TextDelta)) == "Hello "


def test_message_start_gets_the_generation_id_and_requested_model() -> None:
    async def main() -> tuple[Generation, Generation]:
        feed = Feed()
        feed.put(MessageStart("upstream-id", "upstream-model-name", 7))
        gen = new(feed.stream)
        await gen.start()
        other = new(text_provider(["a"]))
        await other.start()
        await other.wait()
        gen.cancel()
        await gen.wait()
        return gen, other

    gen, other = run(main)
    assert gen.log[0] == MessageStart(gen.id, MODEL, 7)
    assert gen.id.startswith("msg_bdrk_")
    assert gen.meter.key == gen.id
    assert gen.usage.input_tokens == 7
    assert other.id != gen.id


def test_the_generation_owns_the_usage_figures() -> None:
    async def main() -> Generation:
        feed = Feed()
        feed.put(MessageStart("", "m", 4), BlockStart(), TextDelta("a"), TextDelta("b"))
        feed.put(BlockStop(), MessageDelta("end_turn", None, 999), MessageStop(Usage(1, 1)), None)
        gen = new(feed.stream)
        await gen.start()
        await gen.wait()
        return gen

    gen = run(main)
    assert gen.log[-2] == MessageDelta("end_turn", None, 2)
    stop = gen.log[-1]
    assert isinstance(stop, MessageStop)
    assert stop.usage == Usage(4, 2)


def test_nothing_is_logged_after_the_terminal_pair() -> None:
    async def stream(request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        yield MessageStart("", "m", 1)
        yield MessageDelta("end_turn")
        yield MessageStop()
        yield TextDelta("late")
        yield MessageDelta("max_tokens")
        yield MessageStop()

    async def main() -> Generation:
        gen = new(stream)
        await gen.start()
        await gen.wait()
        return gen

    gen = run(main)
    assert kinds(gen.log) == ["MessageStart", "MessageDelta", "MessageStop"]
    assert gen.stop_reason == "end_turn"


# -- cancel -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["cancelled", "disconnected", "timeout"])
def test_cancel_mid_stream_closes_the_provider(reason: StopReason) -> None:
    closed: list[str] = []

    async def main() -> tuple[Generation, list[Event], bool, int]:
        gen = new(endless_provider(closed))
        await gen.start()
        seen: list[Event] = []
        async for _, event in gen.follow():
            seen.append(event)
            if sum(isinstance(e, TextDelta) for e in seen) == 3:
                break
        assert closed == []
        first = gen.cancel(reason)
        await gen.wait()
        assert sorted(closed) == ["pieces", "provider"]
        length = len(gen.log)
        await settle()
        assert len(gen.log) == length  # nothing after the terminal pair
        followed = [e for _, e in await collect(gen)]
        assert followed == gen.log
        return gen, seen, first, length

    gen, seen, first, _ = run(main)
    assert first is True
    assert gen.done
    assert gen.stop_reason == reason
    assert gen.cancel("cancelled") is False
    assert gen.stop_reason == reason
    assert gen.log[: len(seen)] == seen
    produced = sum(isinstance(e, TextDelta) for e in gen.log)
    assert produced >= 3
    assert gen.log[-3:-1] == [BlockStop(), MessageDelta(reason, None, produced)]
    stop = gen.log[-1]
    assert isinstance(stop, MessageStop)
    assert stop.usage == Usage(3, produced)
    assert stop.metrics is not None
    assert_terminal_pair_once(gen.log)


def test_cancel_while_the_provider_is_blocked() -> None:
    closed: list[str] = []

    async def stream(request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        never = asyncio.Event()
        try:
            yield MessageStart("", "m", 4)
            yield BlockStart()
            meter.usage.output_tokens = 1
            yield TextDelta("a")
            await never.wait()
            yield TextDelta("unreachable")
        finally:
            closed.append("provider")

    async def main() -> Generation:
        gen = new(stream)
        await gen.start()
        await settle()
        assert kinds(gen.log) == ["MessageStart", "BlockStart", "TextDelta"]
        assert not gen.done
        assert gen.cancel("cancelled")
        await gen.wait()
        assert closed == ["provider"]
        return gen

    gen = run(main)
    assert gen.stop_reason == "cancelled"
    assert gen.log[3:] == [
        BlockStop(),
        MessageDelta("cancelled", None, 1),
        gen.log[-1],
    ]
    stop = gen.log[-1]
    assert isinstance(stop, MessageStop)
    assert stop.usage == Usage(4, 1)


def test_cancel_before_any_text_has_no_block_stop_and_no_first_token() -> None:
    async def main() -> Generation:
        feed = Feed()
        feed.put(MessageStart("", "m", 2))
        gen = new(feed.stream)
        await gen.start()
        await settle()
        gen.cancel("disconnected")
        await gen.wait()
        assert feed.closed
        return gen

    gen = run(main)
    assert kinds(gen.log) == ["MessageStart", "MessageDelta", "MessageStop"]
    assert gen.log[1] == MessageDelta("disconnected", None, 0)
    stop = gen.log[2]
    assert isinstance(stop, MessageStop)
    assert stop.usage == Usage(2, 0)
    assert stop.metrics is not None
    assert stop.metrics.first_token_ms is None
    assert gen.timings.first_token is None


def test_cancel_right_after_start_still_ends_the_generation() -> None:
    closed: list[str] = []

    async def main() -> Generation:
        gen = new(endless_provider(closed))
        await gen.start()
        assert gen.cancel("cancelled")
        await gen.wait()
        await settle()
        assert gen.done
        assert "provider" in closed
        return gen

    gen = run(main)
    assert gen.stop_reason == "cancelled"
    assert isinstance(gen.log[-1], MessageStop)


def queued_forever(closed: list[str]) -> StreamFn:
    async def stream(request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        try:
            await asyncio.Event().wait()
            yield MessageStart("", "m", 1)
        finally:
            closed.append("provider")

    return stream


def test_cancel_while_queued_reaches_the_provider() -> None:
    closed: list[str] = []

    async def main() -> None:
        gen = new(queued_forever(closed))  # queued behind other work, forever
        starting = asyncio.create_task(gen.start())
        try:
            await settle()
            assert gen.cancel("disconnected")
            await settle()
            assert closed == ["provider"]
        finally:
            starting.cancel()

    run(main)


def test_a_stop_while_queued_ends_the_start_and_leaves_its_caller_running() -> None:
    """The provider's first step runs in the caller's task: the stop cancels that task, and
    start() takes the cancellation back, so the caller goes on (answers its client)."""
    closed: list[str] = []

    async def caller(gen: Generation) -> str:
        with pytest.raises(errors.Cancelled, match="disconnected"):
            await gen.start()
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0.01)  # awaiting still works: no cancellation is left pending
        return "answered"

    async def main() -> None:
        gen = new(queued_forever(closed))
        starting = asyncio.create_task(caller(gen))
        await settle()
        assert gen.cancel("disconnected")
        assert await starting == "answered"
        assert closed == ["provider"]

    run(main)


def test_the_caller_cancelled_while_queued_is_cancelled_not_stopped() -> None:
    closed: list[str] = []

    async def main() -> None:
        gen = new(queued_forever(closed))
        starting = asyncio.create_task(gen.start())
        await settle()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert closed == ["provider"]
        assert not gen.done and gen.cancel() is True  # it never started: nothing to end

    run(main)


# -- errors -------------------------------------------------------------------------------------


def test_model_stream_error_mid_stream() -> None:
    failure = errors.ModelStreamError("upstream broke")

    async def main() -> Generation:
        feed = Feed()
        feed.put(MessageStart("", "m", 3), BlockStart(), TextDelta("a"), failure)
        gen = new(feed.stream)
        await gen.start()
        await gen.wait()
        assert feed.closed
        return gen

    gen = run(main)
    assert gen.log[:3] == [MessageStart(gen.id, MODEL, 3), BlockStart(), TextDelta("a")]
    assert gen.log[3:-1] == [
        ErrorEvent("ModelStreamError", "upstream broke"),
        BlockStop(),
        MessageDelta("error", None, 1),
    ]
    stop = gen.log[-1]
    assert isinstance(stop, MessageStop)
    assert stop.usage == Usage(3, 1)
    assert gen.error is failure
    assert gen.stop_reason == "error"
    assert gen.cancel() is False


def test_plain_exception_becomes_an_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> Generation:
        feed = Feed()
        feed.put(MessageStart("", "m", 3), RuntimeError("secret internal detail"))
        gen = new(feed.stream)
        await gen.start()
        await gen.wait()
        assert feed.closed
        return gen

    with caplog.at_level(logging.ERROR, logger="sluicegate.generation"):
        gen = run(main)
    assert type(gen.error) is errors.SluicegateError
    assert gen.log[1:-1] == [
        ErrorEvent("SluicegateError", "The model failed: RuntimeError"),
        MessageDelta("error", None, 0),
    ]
    assert "secret" not in gen.error.message
    assert gen.stop_reason == "error"
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)


def test_refusal_before_the_first_event_is_raised_by_start() -> None:
    closed: list[str] = []
    made: list[AsyncGenerator[Event, None]] = []

    async def refusing(request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        try:
            raise errors.Throttled("too many requests")
            yield MessageStart("", "m", 1)  # makes this an async generator
        finally:
            closed.append("provider")

    def stream(request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        made.append(refusing(request, meter))
        return made[-1]

    async def main() -> Generation:
        gen = new(stream)
        with pytest.raises(errors.Throttled, match="too many requests"):
            await gen.start()
        with pytest.raises(StopAsyncIteration):  # finished: nothing left to resume
            await made[0].__anext__()
        assert closed == ["provider"]
        return gen

    gen = run(main)
    assert gen.log == []


def test_start_abandoned_while_queued_closes_the_provider() -> None:
    closed: list[str] = []

    async def main() -> Generation:
        gen = new(queued_forever(closed))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gen.start(), 0.05)
        assert closed == ["provider"]
        return gen

    gen = run(main)
    assert gen.log == []


# -- follow and the log -------------------------------------------------------------------------


def test_follow_after_n_replays_exactly_the_rest() -> None:
    async def main() -> tuple[Generation, list[list[tuple[int, Event]]]]:
        gen = new(text_provider(["a", "b", "c", "d", "e"]))
        await gen.start()
        await gen.wait()
        return gen, [await collect(gen, after=n) for n in range(len(gen.log) + 1)]

    gen, replays = run(main)
    full = replays[0]
    assert [i for i, _ in full] == list(range(1, len(gen.log) + 1))
    assert [e for _, e in full] == gen.log
    for n, replay in enumerate(replays):
        assert replay == full[n:]
    assert replays[-1] == []


def test_followers_get_the_replay_then_the_live_tail() -> None:
    async def main() -> list[list[tuple[int, Event]]]:
        feed = Feed()
        feed.put(MessageStart("", "m", 1))
        gen = new(feed.stream)
        await gen.start()
        early = asyncio.create_task(collect(gen))
        feed.put(BlockStart(), TextDelta("one "), TextDelta("two "))
        await settle()
        late = asyncio.create_task(collect(gen))
        resumed = asyncio.create_task(collect(gen, after=2))
        await settle()
        feed.put(TextDelta("three "), TextDelta("four"))
        await settle()
        feed.put(BlockStop(), MessageDelta("end_turn"), MessageStop(), None)
        return [await early, await late, await resumed]

    early, late, resumed = run(main)
    assert early == late
    assert [i for i, _ in early] == list(range(1, 10))
    assert "".join(e.text for _, e in early if isinstance(e, TextDelta)) == "one two three four"
    assert resumed == early[2:]
    assert isinstance(early[-1][1], MessageStop)


# -- timings and callbacks ----------------------------------------------------------------------


def test_timings_and_callbacks() -> None:
    gaps: list[tuple[Generation, float]] = []
    ends: list[Generation] = []

    async def main() -> Generation:
        feed = Feed()
        feed.put(MessageStart("", "m", 1))
        gen = new(
            feed.stream,
            on_token_gap=lambda g, gap: gaps.append((g, gap)),
            on_end=ends.append,
        )
        await gen.start()
        assert gen.timings.first_token is None
        feed.put(BlockStart())
        await settle()
        assert gen.timings.first_token is None
        feed.put(TextDelta("a"))
        await settle()
        first = gen.timings.first_token
        assert first is not None
        assert gaps == []
        for word in ("b", "c", "d"):
            feed.put(TextDelta(word))
            await settle()
        assert gen.timings.first_token == first
        assert gen.timings.last_token is not None
        assert gen.timings.last_token >= first
        assert len(gaps) == 3
        assert ends == []
        feed.put(BlockStop(), MessageDelta("end_turn"), MessageStop(), None)
        await gen.wait()
        assert gen.cancel() is False
        return gen

    gen = run(main)
    assert all(g is gen for g, _ in gaps)
    assert all(gap >= 0 for _, gap in gaps)
    assert ends == [gen]
    assert gen.timings.ended is not None
    stop = gen.log[-1]
    assert isinstance(stop, MessageStop)
    assert stop.metrics == gen.metrics
    assert stop.metrics.first_token_ms is not None


def test_on_end_is_called_once_when_cancelled() -> None:
    ends: list[Generation] = []
    closed: list[str] = []

    async def main() -> Generation:
        gen = new(endless_provider(closed), on_end=ends.append)
        await gen.start()
        await settle()
        gen.cancel("cancelled")
        gen.cancel("timeout")
        await gen.wait()
        gen.cancel("disconnected")
        await settle()
        return gen

    gen = run(main)
    assert ends == [gen]
    assert gen.stop_reason == "cancelled"


def test_the_first_token_of_a_burst_is_out_before_the_rest_is_read() -> None:
    """An upstream's whole answer can arrive in one read, and the provider then yields it with
    no await. The first token must reach the door's sender (its task, woken by the append)
    before the burst is parsed to its end."""
    made = 0

    async def burst(request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        async def pieces() -> AsyncGenerator[Piece, None]:
            nonlocal made
            for i in range(500):
                made += 1
                yield Piece(f"t{i} ")

        async for event in text_message(request, meter, 3, pieces()):
            yield event

    async def main() -> tuple[int, bytes]:
        gen = new(burst)
        await gen.start()
        render = chat_events(ChatStream("chatcmpl-x", 0, MODEL, False))
        sent = b""
        async for piece in log_stream(gen, render, b"beat", 5):
            sent += piece
            if b"t0 " in sent:
                return made, sent
        raise AssertionError("no token")

    made_then, sent = run(main)
    assert b'"content":"t0 "' in sent.replace(b": ", b":")
    assert made_then < 10, f"{made_then} of 500 tokens were read before the first went out"
