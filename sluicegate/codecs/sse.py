"""Server-sent events (the WHATWG `text/event-stream` format), sans-IO: bytes out, events in.

`encode` builds one event; `comment` a heartbeat line that clients ignore (it keeps proxies
from cutting an idle stream). `SSEParser` reads a stream fed in pieces split anywhere, as
upstream providers send it: lines end with CRLF, LF or CR; `data` lines join with LF; a blank
line dispatches; lines starting with `:` are comments; a leading BOM is dropped.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

MAX_LINE = 16 * 1024 * 1024  # one upstream line this long is an attack or a bug, not an event


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEError(ValueError):
    """The stream breaks the format beyond repair (a line over MAX_LINE)."""


def encode(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One event. `data` may hold newlines (each line becomes a `data:` field)."""
    head = ""
    if id is not None:
        _check_field(id, "id")
        head = f"id: {id}\n"
    if event is not None:
        _check_field(event, "event")
        head += f"event: {event}\n"
    if "\n" in data or "\r" in data:
        data = data.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\ndata: ")
    return f"{head}data: {data}\n\n".encode()


def comment(text: str = "") -> bytes:
    """A comment line, which clients skip: a heartbeat. No blank line follows it: the openai and
    anthropic SDKs dispatch a blank line after a comment as an empty event (they keep the last
    id), and then fail to parse it."""
    _check_field(text, "comment")
    return f": {text}\n".encode() if text else b":\n"


def _check_field(value: str, name: str) -> None:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"an SSE {name} may not hold a line break or NUL: {value!r}")


class SSEParser:
    """Feed bytes, get the events they complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        text = self._decoder.decode(data)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        self._buffer += text
        return self._lines()

    def close(self) -> list[ServerSentEvent]:
        """End of stream: a last line without its terminator still counts; an event without
        its blank line does not (the spec drops it)."""
        self._buffer += self._decoder.decode(b"", final=True)
        if self._buffer.endswith("\r"):
            self._buffer += "\n"  # no LF can follow now: the CR ends its line
        events = self._lines()
        if self._buffer:
            self._field(self._buffer)
            self._buffer = ""
        return events

    def _lines(self) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        if "\r" not in self._buffer:  # LF-only lines, as nearly every server sends: one split
            *lines, self._buffer = self._buffer.split("\n")
            for line in lines:
                self._line(line, events)
            if len(self._buffer) > MAX_LINE:
                raise SSEError(f"an SSE line is over {MAX_LINE} characters")
            return events
        while True:
            end = _line_end(self._buffer)
            if end is None:
                if len(self._buffer) > MAX_LINE:
                    raise SSEError(f"an SSE line is over {MAX_LINE} characters")
                return events
            line, self._buffer = self._buffer[: end[0]], self._buffer[end[1] :]
            self._line(line, events)

    def _line(self, line: str, events: list[ServerSentEvent]) -> None:
        if line == "":
            event = self._dispatch()
            if event is not None:
                events.append(event)
        else:
            self._field(line)

    def _field(self, line: str) -> None:
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)

    def _dispatch(self) -> ServerSentEvent | None:
        if self._id is not None:
            self._last_id = self._id
        data, event, retry = self._data, self._event, self._retry
        self._data, self._event, self._id, self._retry = [], "", None, None
        if not data:
            return None
        return ServerSentEvent("\n".join(data), event or "message", self._last_id, retry)


def _line_end(buffer: str) -> tuple[int, int] | None:
    """(where the first line ends, where the next begins), or None if no line is complete.

    A CR at the very end may be the first half of CRLF: wait for the next byte."""
    lf, cr = buffer.find("\n"), buffer.find("\r")
    if cr == -1 or -1 < lf < cr:
        return None if lf == -1 else (lf, lf + 1)
    if cr + 1 == len(buffer):
        return None
    return cr, cr + 2 if buffer[cr + 1] == "\n" else cr + 1
