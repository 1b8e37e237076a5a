"""Tests for the scripted provider: deterministic words, limits, non-ASCII, and stopping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from sluicegate import errors
from sluicegate.events import (
    ChatRequest,
    ErrorEvent,
    Event,
    Message,
    MessageDelta,
    MessageStart,
    Role,
    TextDelta,
)
from sluicegate.generation import Generation, Meter
from sluicegate.providers.scripted import ScriptedProvider

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(main(), 10)

    return asyncio.run(guarded())


def chat(*turns: str, max_tokens: int = 1000, system: str = "") -> ChatRequest:
    roles: tuple[Role, Role] = ("user", "assistant")
    messages = tuple(Message(roles[i % 2], text) for i, text in enumerate(turns))
    return ChatRequest("scripted-test", messages, max_tokens, system=system)


def events_of(provider: ScriptedProvider, request: ChatRequest, meter: Meter) -> list[Event]:
    async def main() -> list[Event]:
        return [e async for e in provider.stream(request, meter)]

    return run(main)


def deltas(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


def test_words_are_deterministic_and_echo_the_last_user_turn() -> None:
    request = chat("first question", "an answer", "hello there")
    words = ScriptedProvider(delay=0, length=10).words(request)
    assert words == ScriptedProvider(delay=0, length=10).words(request)
    assert words[:4] == ["You ", "said: ", "hello ", "there "]
    assert len(words) == 10
    assert all(w.endswith(" ") and w.strip() for w in words)


def test_stream_is_the_words_and_repeats_identically() -> None:
    provider = ScriptedProvider(delay=0, length=12)
    request = chat("hello there")
    first = events_of(provider, request, Meter(key="a"))
    second = events_of(provider, request, Meter(key="b"))
    assert first == second
    assert deltas(first) == provider.words(request)
    assert first[0] == MessageStart("", "scripted-test", 2)


def test_max_tokens_is_respected_with_stop_reason_max_tokens() -> None:
    provider = ScriptedProvider(delay=0, length=64)
    meter = Meter(key="k")
    events = events_of(provider, chat("hello", max_tokens=5), meter)
    assert len(deltas(events)) == 5
    assert deltas(events) == provider.words(chat("hello"))[:5]
    assert events[-2] == MessageDelta("max_tokens", None)
    assert meter.usage.output_tokens == 5
    assert provider.produced["k"] == 5


def test_length_is_respected_with_end_turn() -> None:
    provider = ScriptedProvider(delay=0, length=7)
    meter = Meter(key="k")
    events = events_of(provider, chat("hello", max_tokens=100), meter)
    assert len(deltas(events)) == 7
    assert events[-2] == MessageDelta("end_turn", None)
    assert meter.usage.output_tokens == 7


def test_non_ascii_survives() -> None:
    provider = ScriptedProvider(delay=0, length=40)
    events = events_of(provider, chat("héllo 🙂 世界"), Meter(key="k"))
    text = "".join(deltas(events))
    assert text.startswith("You said: héllo 🙂 世界 ")
    for word in ("Café,", "naïve,", "日本語,", "🙂", "∑"):
        assert word in text.split()


def test_count_tokens_counts_system_and_every_turn() -> None:
    provider = ScriptedProvider(delay=0)
    request = chat("hello there", "hi", "bye now", system="Be brief.")
    assert run(lambda: provider.count_tokens(request)) == 7
    meter = Meter(key="k")
    events = events_of(ScriptedProvider(delay=0, length=1), request, meter)
    assert events[0] == MessageStart("", "scripted-test", 7)
    assert meter.usage.input_tokens == 7
    assert meter.admitted_at is not None


def test_describe_names_length_and_pace() -> None:
    assert ScriptedProvider(delay=0.02, length=64).describe() == (
        "scripted: 64 words per answer, 20 ms per word"
    )


def test_produced_stops_increasing_after_the_consumer_closes_early() -> None:
    provider = ScriptedProvider(delay=0.001, length=64)

    async def main() -> tuple[int, int]:
        stream = provider.stream(chat("hello"), Meter(key="k"))
        seen = 0
        async for event in stream:
            seen += isinstance(event, TextDelta)
            if seen == 3:
                break
        await stream.aclose()
        at_close = provider.produced["k"]
        await asyncio.sleep(0.05)
        return at_close, provider.produced["k"]

    at_close, later = run(main)
    assert at_close == 3
    assert later == 3


def test_produced_stops_increasing_after_the_generation_is_cancelled() -> None:
    provider = ScriptedProvider(delay=0.001, length=64)

    async def main() -> tuple[Generation, int, int]:
        gen = Generation(chat("hello"), provider.stream, route="test", provider="scripted")
        await gen.start()
        async for _, event in gen.follow():
            if isinstance(event, TextDelta) and event.text == "said: ":
                break
        gen.cancel("cancelled")
        await gen.wait()
        at_cancel = provider.produced[gen.id]
        await asyncio.sleep(0.05)
        return gen, at_cancel, provider.produced[gen.id]

    gen, at_cancel, later = run(main)
    assert gen.stop_reason == "cancelled"
    assert at_cancel == later
    assert at_cancel == sum(isinstance(e, TextDelta) for e in gen.log)
    assert at_cancel < 64


def test_fail_after_raises_a_model_stream_error() -> None:
    provider = ScriptedProvider(delay=0, length=64)
    meter = Meter(key="k")

    async def main() -> list[Event]:
        seen: list[Event] = []
        with pytest.raises(errors.ModelStreamError, match="after 2 tokens"):
            async for event in provider.stream(chat("go sluicegate:fail-after=2"), meter):
                seen.append(event)
        return seen

    seen = run(main)
    assert len(deltas(seen)) == 2
    assert provider.produced["k"] == 2


def test_fail_after_in_a_generation_ends_in_error() -> None:
    provider = ScriptedProvider(delay=0, length=64)

    async def main() -> Generation:
        gen = Generation(
            chat("sluicegate:fail-after=1"), provider.stream, route="test", provider="scripted"
        )
        await gen.start()
        await gen.wait()
        return gen

    gen = run(main)
    assert gen.stop_reason == "error"
    assert ErrorEvent("ModelStreamError", "Scripted failure after 1 tokens.") in gen.log
    assert len(deltas(gen.log)) == 1


def test_fail_after_in_the_user_turn_before_a_prefill() -> None:
    provider = ScriptedProvider(delay=0, length=8)

    async def main() -> None:
        with pytest.raises(errors.ModelStreamError):
            async for _ in provider.stream(chat("sluicegate:fail-after=1", "Sure:"), Meter()):
                pass

    run(main)
