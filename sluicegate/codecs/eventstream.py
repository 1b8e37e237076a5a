"""Sans-IO codec for ``application/vnd.amazon.eventstream`` frames.

This is the binary framing behind Bedrock ``InvokeModelWithResponseStream`` /
``ConverseStream`` and Lambda ``InvokeWithResponseStream``.  A frame is::

    uint32 total_length | uint32 headers_length | uint32 crc32(first 8 bytes)
    headers | payload | uint32 crc32(every preceding byte)

Header value mapping.  Encoding: ``bool`` -> bool types 0/1, plain ``int`` ->
int32 if it fits else int64 (use `Int8`/`Int16`/`Int32`/`Int64` to pick a
width), ``bytes`` -> 6, ``str`` -> 7, timezone-aware ``datetime`` -> 8
(milliseconds; finer precision is floored), ``uuid.UUID`` -> 9.  Decoding
always yields plain values: every integer width becomes ``int`` and timestamps
become UTC-aware ``datetime`` objects, so ``Int8(1)`` round-trips as ``1``.
The decoder is stricter than botocore's: it rejects empty header names,
values running past the header block, and timestamps outside years 1..9999.
"""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, TypeAlias

MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024
MAX_HEADERS_LENGTH = 128 * 1024
_PRELUDE = struct.Struct(">III")
_OVERHEAD = _PRELUDE.size + 4  # prelude plus trailing message CRC
_MAX_TOTAL = _OVERHEAD + MAX_HEADERS_LENGTH + MAX_PAYLOAD_LENGTH
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
# Wire types whose value is one fixed-size big-endian integer (8 = timestamp).
_FIXED = {c: struct.Struct(">" + f) for c, f in {2: "b", 3: "h", 4: "i", 5: "q", 8: "q"}.items()}
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class EventStreamError(ValueError):
    """Raised for any malformed frame or any value that cannot be encoded."""


@dataclass(frozen=True, slots=True)
class SizedInt:
    """Base of the explicit-width integer header wrappers."""

    value: int
    _code: ClassVar[int] = 5
    _fmt: ClassVar[str] = "q"

    def __post_init__(self) -> None:
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise EventStreamError(f"{type(self).__name__} needs an int")
        half = 1 << (struct.calcsize(self._fmt) * 8 - 1)
        if not -half <= self.value < half:
            raise EventStreamError(f"{self.value} out of range for {type(self).__name__}")

    def _encode(self) -> bytes:
        return struct.pack(">B" + self._fmt, self._code, self.value)


@dataclass(frozen=True, slots=True)
class Int8(SizedInt):
    """Integer header sent as wire type 2 (signed byte)."""

    _code, _fmt = 2, "b"


@dataclass(frozen=True, slots=True)
class Int16(SizedInt):
    """Integer header sent as wire type 3 (signed short)."""

    _code, _fmt = 3, "h"


@dataclass(frozen=True, slots=True)
class Int32(SizedInt):
    """Integer header sent as wire type 4 (signed int)."""

    _code, _fmt = 4, "i"


@dataclass(frozen=True, slots=True)
class Int64(SizedInt):
    """Integer header sent as wire type 5 (signed long)."""


HeaderValue: TypeAlias = bool | int | bytes | str | datetime | uuid.UUID | SizedInt


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded (or to-be-encoded) frame; header order is wire order."""

    headers: dict[str, HeaderValue]
    payload: bytes

    def encode(self) -> bytes:
        """Serialise this message with `encode_message`."""
        return encode_message(self.headers, self.payload)


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot go on the wire
        raise EventStreamError(f"{what} is not encodable as UTF-8") from exc


def _sized(code: int, raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise EventStreamError(f"header value of {len(raw)} bytes exceeds 65535")
    return bytes([code]) + _U16.pack(len(raw)) + raw


def _encode_value(value: HeaderValue) -> bytes:
    # bool before int: bool is an int subclass but has its own wire types.
    if isinstance(value, bool):
        return b"\x00" if value else b"\x01"
    if isinstance(value, SizedInt):
        return value._encode()
    if isinstance(value, int):
        return (Int32(value) if -(1 << 31) <= value < 1 << 31 else Int64(value))._encode()
    if isinstance(value, bytes):
        return _sized(6, value)
    if isinstance(value, str):
        return _sized(7, _utf8(value, "header value"))
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise EventStreamError("naive datetime is ambiguous; attach a timezone")
        return b"\x08" + _FIXED[8].pack((value - _EPOCH) // _ONE_MS)
    if isinstance(value, uuid.UUID):
        return b"\x09" + value.bytes
    raise EventStreamError(f"unsupported header value type {type(value).__name__}")


def _encode_header(name: str, value: HeaderValue) -> bytes:
    raw = _utf8(name, "header name")
    if not 1 <= len(raw) <= 255:
        raise EventStreamError(f"header name must be 1..255 UTF-8 bytes, got {len(raw)}")
    return bytes([len(raw)]) + raw + _encode_value(value)


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """Encode one frame; raises `EventStreamError` if it breaks a wire limit."""
    raw_headers = b"".join(_encode_header(k, v) for k, v in headers.items())
    if len(raw_headers) > MAX_HEADERS_LENGTH:
        raise EventStreamError(f"headers are {len(raw_headers)} bytes, max {MAX_HEADERS_LENGTH}")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise EventStreamError(f"payload is {len(payload)} bytes, max {MAX_PAYLOAD_LENGTH}")
    prelude = _PRELUDE.pack(_OVERHEAD + len(raw_headers) + len(payload), len(raw_headers), 0)
    head = prelude[:8] + _U32.pack(zlib.crc32(prelude[:8])) + raw_headers
    # Chain the CRC over the pieces so a large payload is copied only once.
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, payload, _U32.pack(crc)))


def event(event_type: str, payload: bytes, content_type: str = "application/json") -> bytes:
    """Encode an ``event`` frame as Bedrock and Lambda stream them."""
    headers = {":message-type": "event", ":event-type": event_type, ":content-type": content_type}
    return encode_message(headers, payload)


def exception(exception_type: str, message: str) -> bytes:
    """Encode a modelled ``exception`` frame with a ``{"message": ...}`` JSON body."""
    headers = {
        ":message-type": "exception",
        ":exception-type": exception_type,
        ":content-type": "application/json",
    }
    body = json.dumps({"message": message}, separators=(",", ":")).encode()
    return encode_message(headers, body)


def error(code: str, message: str) -> bytes:
    """Encode an unmodelled ``error`` frame; the detail lives in headers only."""
    headers = {":message-type": "error", ":error-code": code, ":error-message": message}
    return encode_message(headers, b"")


def _need(pos: int, size: int, end: int, what: str) -> None:
    if pos + size > end:
        raise EventStreamError(f"truncated header: {what} runs past the header block")


def _decode_text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventStreamError(f"{what} is not valid UTF-8") from exc


def _decode_value(code: int, data: bytes, pos: int, end: int) -> tuple[HeaderValue, int]:
    if code in (0, 1):
        return code == 0, pos
    if fixed := _FIXED.get(code):
        _need(pos, fixed.size, end, "integer value")
        (number,) = fixed.unpack_from(data, pos)
        if code != 8:
            return number, pos + fixed.size
        try:
            return _EPOCH + number * _ONE_MS, pos + fixed.size
        except OverflowError as exc:  # int64 ms spans far beyond datetime's years 1..9999
            raise EventStreamError(f"timestamp {number} ms is out of range") from exc
    if code == 9:
        _need(pos, 16, end, "uuid value")
        return uuid.UUID(bytes=data[pos : pos + 16]), pos + 16
    if code in (6, 7):
        _need(pos, 2, end, "value length")
        (size,) = _U16.unpack_from(data, pos)
        _need(pos + 2, size, end, "value")
        raw = data[pos + 2 : pos + 2 + size]
        return (raw if code == 6 else _decode_text(raw, "string header")), pos + 2 + size
    raise EventStreamError(f"unknown header value type {code}")


def _decode_headers(data: bytes, pos: int, end: int) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    while pos < end:
        size = data[pos]
        if size == 0:
            raise EventStreamError("header name is empty")
        _need(pos + 1, size + 1, end, "header name and type")
        name = _decode_text(data[pos + 1 : pos + 1 + size], "header name")
        if name in headers:
            raise EventStreamError(f"duplicate header name {name!r}")
        value, pos = _decode_value(data[pos + 1 + size], data, pos + 2 + size, end)
        headers[name] = value
    return headers


def _check_prelude(buf: bytearray, pos: int) -> int:
    total, headers_len, crc = _PRELUDE.unpack_from(buf, pos)
    actual = zlib.crc32(buf[pos : pos + 8])
    # CRC first: if it fails the lengths are garbage and would mislead.
    if actual != crc:
        raise EventStreamError(f"prelude CRC mismatch: frame 0x{crc:08x}, computed 0x{actual:08x}")
    if headers_len > MAX_HEADERS_LENGTH:
        raise EventStreamError(f"headers_length {headers_len} exceeds {MAX_HEADERS_LENGTH}")
    if not _OVERHEAD <= total <= _MAX_TOTAL:
        raise EventStreamError(f"total_length {total} outside {_OVERHEAD}..{_MAX_TOTAL}")
    if headers_len > total - _OVERHEAD:
        raise EventStreamError(f"headers_length {headers_len} exceeds total_length {total}")
    if total - _OVERHEAD - headers_len > MAX_PAYLOAD_LENGTH:
        raise EventStreamError(f"payload exceeds {MAX_PAYLOAD_LENGTH} bytes")
    return int(total)


def _decode_frame(frame: bytes) -> Message:
    (crc,) = _U32.unpack_from(frame, len(frame) - 4)
    actual = zlib.crc32(memoryview(frame)[:-4])
    if actual != crc:
        raise EventStreamError(f"message CRC mismatch: frame 0x{crc:08x}, computed 0x{actual:08x}")
    headers_end = _PRELUDE.size + _U32.unpack_from(frame, 4)[0]
    return Message(_decode_headers(frame, _PRELUDE.size, headers_end), frame[headers_end:-4])


class EventStreamDecoder:
    """Incremental decoder: `feed` bytes as they arrive, get whole messages back.

    Any `EventStreamError` is fatal: the stream has lost framing, so later
    `feed` calls re-raise it, and messages decoded earlier in the failing
    `feed` call are discarded with the stream.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first unconsumed frame in _buf
        self._failure: EventStreamError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Message]:
        """Buffer ``data`` and return every message it completes, in order."""
        if self._failure is not None:
            raise EventStreamError(f"decoder already failed: {self._failure}")
        self._buf += data
        try:
            return self._drain()
        except EventStreamError as exc:
            self._failure = exc
            raise
        finally:
            # One compaction per feed, not per frame; CPython makes a prefix
            # delete on bytearray cheap, so small feeds never go quadratic.
            del self._buf[: self._pos]
            self._pos = 0

    def _drain(self) -> list[Message]:
        messages = []
        # A partial frame costs only a 12-byte prelude check per feed.
        while self.buffered >= _PRELUDE.size:
            total = _check_prelude(self._buf, self._pos)
            if self.buffered < total:
                break
            frame = bytes(self._buf[self._pos : self._pos + total])
            self._pos += total
            messages.append(_decode_frame(frame))
        return messages

    def close(self) -> None:
        """Declare end of stream; raise if it stopped inside a frame."""
        if self._failure is not None:
            raise EventStreamError(f"decoder already failed: {self._failure}")
        if self.buffered:
            raise EventStreamError(f"stream ended inside a frame ({self.buffered} bytes pending)")
