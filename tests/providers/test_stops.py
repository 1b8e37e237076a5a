"""Tests for stop sequence scanning and message framing shared by text providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.events import (
    BlockStart,
    BlockStop,
    ChatRequest,
    Event,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    TextDelta,
)
from sluicegate.generation import Meter
from sluicegate.providers.base import Piece, StopScanner, text_message

# -- StopScanner --------------------------------------------------------------------------------


@dataclass
class Scan:
    chunks: list[str]  # what feed/flush returned, in order
    stop: str | None

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def scan(pieces: Sequence[str], stops: tuple[str, ...]) -> Scan:
    """Feed pieces until a stop matches; flush at the natural end, as text_message does."""
    scanner = StopScanner(stops)
    chunks: list[str] = []
    for piece in pieces:
        emitted, stop = scanner.feed(piece)
        chunks.append(emitted)
        if stop is not None:
            return Scan(chunks, stop)
    chunks.append(scanner.flush())
    return Scan(chunks, None)


def two_way(text: str) -> Iterator[list[str]]:
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]


def three_way(text: str) -> Iterator[list[str]]:
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            yield [text[:i], text[i:j], text[j:]]


def splits(text: str) -> Iterator[list[str]]:
    yield from two_way(text)
    yield from three_way(text)
    yield list(text)


@pytest.mark.parametrize(
    ("text", "stops", "emitted", "stop"),
    [
        ("Hello END world", ("END",), "Hello ", "END"),
        ("END at once", ("END",), "", "END"),
        ("ends with END", ("END",), "ends with ", "END"),
        ("no stop here", ("END",), "no stop here", None),
        ("almost EN", ("END",), "almost EN", None),
        ("aaab", ("aab",), "a", "aab"),  # overlapping candidate: "aa" then "aab"
        ("ababac", ("abac",), "ab", "abac"),  # the first "aba" is a false start
        ("xxababx", ("abab",), "xx", "abab"),
        ("a STOP b END", ("END", "STOP"), "a ", "STOP"),
        ("a END b STOP", ("END", "STOP"), "a ", "END"),
        ("line\n\nHuman: hi", ("\n\nHuman:",), "line", "\n\nHuman:"),
        ("café 🙂 fin", ("🙂",), "café ", "🙂"),
    ],
)
def test_stop_split_at_every_offset(
    text: str, stops: tuple[str, ...], emitted: str, stop: str | None
) -> None:
    for pieces in splits(text):
        result = scan(pieces, stops)
        assert (result.text, result.stop) == (emitted, stop), pieces
        if stop is not None:
            assert all(stop not in chunk for chunk in result.chunks), pieces


def test_partial_stop_is_held_back_then_released() -> None:
    scanner = StopScanner(("END",))
    assert scanner.feed("Hello E") == ("Hello ", None)
    assert scanner.feed("N") == ("", None)
    assert scanner.feed("Dx") == ("", "END")


def test_false_start_is_released_when_it_cannot_be_a_stop() -> None:
    scanner = StopScanner(("END",))
    assert scanner.feed("Hello EN") == ("Hello ", None)
    assert scanner.feed("O") == ("ENO", None)
    assert scanner.flush() == ""


def test_held_text_is_flushed_at_the_natural_end() -> None:
    scanner = StopScanner(("STOP",))
    assert scanner.feed("abc ST") == ("abc ", None)
    assert scanner.flush() == "ST"
    assert scanner.flush() == ""


def test_only_a_possible_start_is_held() -> None:
    # "ab" could begin "abc"; nothing before it could begin either stop.
    scanner = StopScanner(("abc", "xyz"))
    assert scanner.feed("zzab") == ("zz", None)
    assert scanner.held == "ab"


def test_longest_possible_start_among_stops_is_held() -> None:
    scanner = StopScanner(("aXY", "bcaQ"))
    assert scanner.feed("--bca") == ("--", None)
    assert scanner.feed("Q") == ("", "bcaQ")


def test_earliest_stop_in_a_piece_wins() -> None:
    scanner = StopScanner(("world", "lo"))
    assert scanner.feed("hello world") == ("hel", "lo")


def test_stops_ending_together_prefer_the_one_that_started_first() -> None:
    # Both "ab" and "xab" end at the same character; "xab" began first.
    for pieces in splits("-xab-"):
        assert scan(pieces, ("ab", "xab")).stop == "xab"
        assert scan(pieces, ("ab", "xab")).text == "-"


@pytest.mark.parametrize("stops", [(), ("",), ("", "")])
def test_no_stops_or_empty_stops_hold_nothing(stops: tuple[str, ...]) -> None:
    scanner = StopScanner(stops)
    assert scanner.stops == ()
    assert scanner.feed("anything at all") == ("anything at all", None)
    assert scanner.feed("") == ("", None)
    assert scanner.flush() == ""


def test_empty_stops_are_ignored_among_real_ones() -> None:
    scanner = StopScanner(("", "END", ""))
    assert scanner.stops == ("END",)
    assert scan(["one END two"], ("", "END")).stop == "END"
    assert scan(["one two"], ("", "END")).text == "one two"


def pieces_of(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


@given(
    text=st.text(alphabet="abc ", max_size=40),
    stop=st.text(alphabet="abc", min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=8),
)
def test_property_emitted_text_is_text_up_to_first_stop(
    text: str, stop: str, cuts: list[int]
) -> None:
    result = scan(pieces_of(text, cuts), (stop,))
    i = text.find(stop)
    if i >= 0:
        assert (result.text, result.stop) == (text[:i], stop)
    else:
        assert (result.text, result.stop) == (text, None)


@given(
    text=st.text(alphabet="ab", max_size=30),
    stops=st.lists(st.text(alphabet="ab", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_property_token_by_token_stops_at_the_first_stop_to_complete(
    text: str, stops: list[str]
) -> None:
    # Fed one character at a time, the stop that completes first wins (on a tie, the longer).
    found = [(i + len(s), -len(s), s) for s in stops if (i := text.find(s)) >= 0]
    result = scan(list(text), tuple(stops))
    if found:
        end, negative_len, stop = min(found)
        assert (result.text, result.stop) == (text[: end + negative_len], stop)
    else:
        assert (result.text, result.stop) == (text, None)


# -- text_message -------------------------------------------------------------------------------


@dataclass
class Source:
    """A pieces generator that records what was pulled from it and whether it was closed."""

    pieces: list[Piece]
    pulled: int = 0
    closed: bool = False
    # Whether it was closed when the consumer finished, before asyncio.run's shutdown could
    # close it: that is text_message's doing, not the event loop's.
    closed_in_time: bool = False

    async def gen(self) -> AsyncGenerator[Piece, None]:
        try:
            for piece in self.pieces:
                await asyncio.sleep(0)
                self.pulled += 1
                yield piece
        finally:
            self.closed = True


def chat(*stops: str) -> ChatRequest:
    return ChatRequest("model-x", (Message("user", "hi"),), 100, stop_sequences=stops)


def run(request: ChatRequest, source: Source, meter: Meter, input_tokens: int = 7) -> list[Event]:
    async def main() -> list[Event]:
        events = [e async for e in text_message(request, meter, input_tokens, source.gen())]
        source.closed_in_time = source.closed
        return events

    return asyncio.run(main())


def test_natural_end_frames_the_message() -> None:
    source = Source([Piece("Hello", 1), Piece(", wörld", 2), Piece(" 🙂", 1)])
    meter = Meter()
    events = run(chat(), source, meter, input_tokens=7)
    assert events == [
        MessageStart("", "model-x", 7),
        BlockStart(),
        TextDelta("Hello"),
        TextDelta(", wörld"),
        TextDelta(" 🙂"),
        BlockStop(),
        MessageDelta("end_turn", None),
        MessageStop(),
    ]
    assert (meter.usage.input_tokens, meter.usage.output_tokens) == (7, 4)
    assert source.closed_in_time


def test_finish_reason_ends_the_message_and_closes_the_source() -> None:
    source = Source([Piece("a "), Piece("b ", finish="max_tokens"), Piece("never ")])
    meter = Meter()
    events = run(chat(), source, meter)
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("a "), TextDelta("b ")]
    assert events[-3:] == [BlockStop(), MessageDelta("max_tokens", None), MessageStop()]
    assert source.pulled == 2
    assert source.closed_in_time
    assert meter.usage.output_tokens == 2


def test_stop_sequence_ends_early_and_closes_the_source() -> None:
    source = Source(
        [Piece("Hello"), Piece(" wor"), Piece("ld ST"), Piece("OP and more"), Piece("never")]
    )
    meter = Meter()
    events = run(chat("STOP"), source, meter)
    assert events == [
        MessageStart("", "model-x", 7),
        BlockStart(),
        TextDelta("Hello"),
        TextDelta(" wor"),
        TextDelta("ld "),
        BlockStop(),
        MessageDelta("stop_sequence", "STOP"),
        MessageStop(),
    ]
    assert source.pulled == 4
    assert source.closed_in_time
    assert meter.usage.output_tokens == 4


def test_stop_text_is_never_emitted_and_no_empty_deltas() -> None:
    source = Source([Piece(c) for c in "one END two"])
    events = run(chat("END"), source, Meter())
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(deltas) == "one "
    assert all(deltas)
    assert events[-2] == MessageDelta("stop_sequence", "END")


def test_held_back_text_is_flushed_before_block_stop() -> None:
    source = Source([Piece("abc S"), Piece("T")])
    events = run(chat("STOP"), source, Meter())
    assert events[2:] == [
        TextDelta("abc "),
        TextDelta("ST"),
        BlockStop(),
        MessageDelta("end_turn", None),
        MessageStop(),
    ]


def test_closing_the_message_early_closes_the_source() -> None:
    source = Source([Piece(f"w{i} ") for i in range(100)])

    async def main() -> list[Event]:
        stream = text_message(chat(), Meter(), 1, source.gen())
        seen = []
        async for event in stream:
            seen.append(event)
            if len(seen) == 4:
                break
        await stream.aclose()
        source.closed_in_time = source.closed
        return seen

    seen = asyncio.run(main())
    assert seen[2:] == [TextDelta("w0 "), TextDelta("w1 ")]
    assert source.closed_in_time
    assert source.pulled == 2


class NaiveScanner:
    """The obvious scanner (each feed: every stop against all the held text), as an oracle."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        buf = self.held + text
        hits = [(i, s) for s in self.stops if (i := buf.find(s)) >= 0]
        if hits:
            i, stop = min(hits)
            self.held = ""
            return buf[:i], stop
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self.held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], None


@settings(max_examples=400, deadline=None)
@given(
    stops=st.lists(st.text("abc", min_size=1, max_size=6), max_size=5),
    pieces=st.lists(st.text("abcd", max_size=5), max_size=12),
)
def test_the_fast_scanner_says_what_the_naive_one_says(stops: list[str], pieces: list[str]) -> None:
    fast, naive = StopScanner(tuple(stops)), NaiveScanner(tuple(stops))
    for piece in pieces:
        got, want = fast.feed(piece), naive.feed(piece)
        assert got == want and fast.held == naive.held
        if got[1] is not None:
            break
