"""The SSE codec: what it writes, parsed back split at every offset, and the spec's corner cases."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sluicegate.codecs.sse import MAX_LINE, ServerSentEvent, SSEError, SSEParser, comment, encode


def parse_in_pieces(raw: bytes, size: int) -> list[ServerSentEvent]:
    parser = SSEParser()
    events = []
    for i in range(0, len(raw), size):
        events += parser.feed(raw[i : i + size])
    return events + parser.close()


STREAM = (
    encode('{"type": "message_start"}', event="message_start", id="1")
    + comment("ping")
    + encode("two\nlines é 🙂", id="2")
    + comment()
    + encode("[DONE]")
)
EXPECTED = [
    ServerSentEvent('{"type": "message_start"}', "message_start", "1"),
    ServerSentEvent("two\nlines é 🙂", "message", "2"),
    ServerSentEvent("[DONE]", "message", "2"),  # the last id stays
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_what_it_writes_parses_back_split_anywhere(size: int) -> None:
    assert parse_in_pieces(STREAM, size) == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_every_line_ending(newline: bytes) -> None:
    raw = b"\xef\xbb\xbfevent: a\ndata:x\ndata:  y\n\n: note\ndata\nretry: 50\n\n".replace(
        b"\n", newline
    )
    for size in (1, 2, len(raw)):
        assert parse_in_pieces(raw, size) == [
            ServerSentEvent("x\n y", "a"),
            ServerSentEvent("", "message", None, 50),
        ]


def test_events_without_data_or_without_a_blank_line_are_dropped() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: lonely\n\nid: 7\n\ndata: cut") == []
    assert parser.close() == []
    assert parser.feed(b"") == []


def test_an_endless_line_is_refused() -> None:
    parser = SSEParser()
    with pytest.raises(SSEError):
        for _ in range(MAX_LINE // 65536 + 2):
            parser.feed(b"x" * 65536)


def test_fields_that_would_break_the_framing_are_refused() -> None:
    with pytest.raises(ValueError):
        encode("x", event="a\nb")
    with pytest.raises(ValueError):
        encode("x", id="1\r")
    assert encode("a\r\nb\rc") == b"data: a\ndata: b\ndata: c\n\n"


@given(
    st.lists(st.sampled_from([b"\r\n", b"\r", b"\n"]), min_size=12, max_size=12),
    st.lists(st.integers(1, 40), min_size=1, max_size=30),
)
def test_mixed_line_endings_split_anywhere(endings: list[bytes], cuts: list[int]) -> None:
    """A stream whose line endings change on the way (LF-only reads take a faster path than
    those with a CR in them), cut at arbitrary places, parses as the spec says."""
    lines = [b"event: a", b"data: x", b"data:  y", b"", b": note", b"data", b"retry: 50", b"",
             b"id: 9", b"data: z", b"", b""]  # fmt: skip
    for i in range(len(lines) - 1):  # a CR then an empty line's LF would read as one CRLF
        assume(not (endings[i] == b"\r" and lines[i + 1] == b"" and endings[i + 1] == b"\n"))
    raw = b"".join(line + end for line, end in zip(lines, endings, strict=True))
    parser, events, at = SSEParser(), [], 0
    for size in cuts:
        events += parser.feed(raw[at : at + size])
        at += size
    events += parser.feed(raw[at:]) + parser.close()
    assert events == [
        ServerSentEvent("x\n y", "a"),
        ServerSentEvent("", "message", None, 50),
        ServerSentEvent("z", "message", "9"),
    ]


@given(st.text(), st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text()))
def test_an_event_is_its_fields_then_one_data_line_per_line(
    data: str, event: str | None, id: str | None
) -> None:
    """The framing written out the long way: each field a line, each line of data its own
    `data:` field (CRLF, CR and LF all end a line), then a blank line."""
    assume(all(v is None or not set(v) & {"\n", "\r", "\0"} for v in (event, id)))
    lines = [f"id: {id}"] * (id is not None) + [f"event: {event}"] * (event is not None)
    lines += [
        f"data: {line}" for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    ]
    assert encode(data, event=event, id=id) == ("\n".join(lines) + "\n\n").encode()
