"""What the upstream providers (openai, bedrock, anthropic) share.

A pooled async HTTP client with the configured timeouts; a concurrency limit with a bounded
queue (over it: Throttled, which each door answers as its own 429); upstream HTTP errors mapped
onto ours; reading a streamed body with a first-byte and an idle deadline, so that a silent
upstream ends the stream with an in-band timeout instead of a hang. Closing the provider's
generator closes the upstream response, which closes its connection: the upstream sees the
client leave at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl

from sluicegate import errors, telemetry
from sluicegate.codecs.sse import ServerSentEvent, SSEError, SSEParser
from sluicegate.config import UpstreamSettings
from sluicegate.events import (
    BlockStart,
    BlockStop,
    ChatRequest,
    Event,
    MessageDelta,
    MessageStart,
    MessageStop,
    StopReason,
    TextDelta,
    ToolInputDelta,
)
from sluicegate.generation import Meter

FIRST_PART = 1024  # bytes of a first read parsed on their own: a few events, the first token


class Limiter:
    """At most `concurrency` streams at once; up to `queue` more wait, in order; the rest are
    refused. A place in the queue is taken at once (`take`), so the caller can answer its
    client before it waits (`wait`)."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self.free = concurrency
        self.queue = queue
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def take(self, name: str) -> asyncio.Future[None] | None:
        """A slot now (None), or a place in the queue: a future done once a slot is handed
        to it. Throttled if the queue is full."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return None
        if len(self._waiters) >= self.queue:
            raise errors.Throttled(f"Too many requests are waiting for {name}; retry shortly.")
        place = asyncio.get_running_loop().create_future()
        self._waiters.append(place)
        return place

    async def wait(self, place: asyncio.Future[None]) -> None:
        """Wait in the queue for a slot; leaving early gives up the place (or the slot, if one
        was handed over meanwhile)."""
        try:
            await place
        except BaseException:
            self.leave(place)
            raise

    def leave(self, place: asyncio.Future[None]) -> None:
        if place.done() and not place.cancelled():
            self.release()  # the slot came: pass it on
            return
        place.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(place)

    def release(self) -> None:
        while self._waiters:
            place = self._waiters.popleft()
            if not place.done():
                place.set_result(None)
                return
        self.free += 1


@dataclass(eq=False, slots=True)
class Read:
    """One answer's body being read: since when its current read has waited (None: not
    waiting)."""

    content: aiohttp.StreamReader
    since: float | None = None


class Stalled(TimeoutError):
    """An upstream sent nothing for longer than its idle deadline."""


class Stalls:
    """The idle deadline of every answer read from one upstream, kept by one timer that ticks
    while any is read: a read waiting past the deadline gets Stalled raised in it. Reads end
    between `deadline` and `deadline` + a tick (a quarter of it, a second at most)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.tick = min(1.0, deadline / 4)
        self.reads: set[Read] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, read: Read) -> None:
        self.reads.add(read)
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:  # (a new loop: tests, restarts)
            self._loop = loop
            self._timer = loop.call_later(self.tick, self._sweep)

    def forget(self, read: Read) -> None:
        self.reads.discard(read)

    def _sweep(self) -> None:
        now = time.monotonic()
        for read in self.reads:
            if read.since is not None and now - read.since >= self.deadline:
                read.since = None
                read.content.set_exception(Stalled())
        loop = self._loop
        self._timer = loop.call_later(self.tick, self._sweep) if self.reads and loop else None


@dataclass(frozen=True, slots=True)
class Finish:
    """The upstream's own end of the answer, among its text pieces."""

    reason: StopReason


@dataclass(frozen=True, slots=True)
class ToolStart:
    """The upstream starts a tool call (its input follows as ToolInput pieces)."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolInput:
    partial_json: str


# What an upstream's answer is read as: text, tool calls, and its end.
Piece = str | Finish | ToolStart | ToolInput


@dataclass(slots=True)
class Outgoing:
    """A request to an upstream, as its provider built (and signed) it."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes = b""

    @classmethod
    def json(cls, url: str, data: Any, headers: dict[str, str]) -> Outgoing:
        return cls("POST", url, {"content-type": "application/json", **headers},
                   json.dumps(data).encode())  # fmt: skip


@dataclass(slots=True)
class Answer:
    """An upstream's answer as it streams, and its trace span while tracing is on."""

    response: aiohttp.ClientResponse
    span: telemetry.UpstreamSpan | None = None

    def close(self) -> None:
        """Read to the end: the connection goes back to the pool; else it is closed, which
        the upstream sees at once."""
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()
        if self.span is not None:
            self.span.end()
            self.span = None


class Blocks:
    """Numbers an answer's content blocks as they come: the text block the answer opens with
    (index 0), and a new block for each tool call and for text after one."""

    def __init__(self) -> None:
        self.index = 0
        self.kind = "text"

    def feed(self, piece: str | ToolStart | ToolInput) -> list[Event]:
        if isinstance(piece, ToolStart):
            return [*self._next(), BlockStart(self.index, "tool_use", piece.id, piece.name)]
        if isinstance(piece, ToolInput):
            return [ToolInputDelta(piece.partial_json, self.index)] if self.kind != "text" else []
        opened = [] if self.kind == "text" else [*self._next("text"), BlockStart(self.index)]
        return [*opened, TextDelta(piece, self.index)]

    def _next(self, kind: str = "tool_use") -> list[Event]:
        stop = BlockStop(self.index)
        self.index, self.kind = self.index + 1, kind
        return [stop]

    def close(self) -> list[Event]:
        return [BlockStop(self.index)]


class Upstream:
    """An HTTP upstream: its client, limits, deadlines and key; subclasses speak its API:
    `outgoing` builds the request, `pieces` reads the answer as text and a Finish."""

    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        self.name = name
        self.settings = settings
        s = settings
        self._client: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.limiter = Limiter(s.max_concurrency, s.max_queue)
        self.stalls = Stalls(s.idle_timeout_seconds)
        self._readers: set[asyncio.Task[None]] = set()  # drains under way

    def key(self) -> str | None:
        """The upstream's key, read from the environment variable the config names."""
        env = self.settings.api_key_env
        if env is None:
            return None
        value = os.environ.get(env)
        if not value:
            raise errors.ServiceUnavailable(
                f"Provider {self.name}: the environment variable {env} (api_key_env) is not set."
            )
        return value

    def unready(self) -> str | None:
        return None  # an upstream's health is its own: each request finds out

    async def count_tokens(self, request: Any) -> int:
        raise errors.ValidationError(f"Provider {self.name} cannot count tokens.")

    @property
    def client(self) -> aiohttp.ClientSession:
        """The pool, made in the running event loop on first use (and again in a new loop)."""
        client, loop = self._client, asyncio.get_running_loop()
        if client is None or client.closed or self._loop is not loop:
            self._loop = loop
            s = self.settings
            connector = aiohttp.TCPConnector(limit=s.max_concurrency, limit_per_host=0)
            # No read timeout of aiohttp's (a timer per chunk): `open` and `chunks` keep the
            # first-byte and idle deadlines.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=s.connect_timeout_seconds, sock_read=None
            )
            client = self._client = aiohttp.ClientSession(
                connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
            )
        return client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()

    def outgoing(self, request: ChatRequest) -> Outgoing:
        raise NotImplementedError

    def pieces(self, response: aiohttp.ClientResponse, meter: Meter) -> AsyncIterator[Piece]:
        raise NotImplementedError

    async def stream(self, request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
        """One message from the upstream. Closing it closes the upstream response at once
        (`abort`), or lets a reader finish it for the true usage (`drain`)."""
        outgoing = self.outgoing(request)
        place = self.limiter.take(self.name)
        if place is not None:
            # Queued: the request is accepted now, so the door's answer (and its heartbeats)
            # starts now too; what the upstream then says, errors included, comes in-band.
            try:
                for event in opening():
                    yield event
            except BaseException:  # closed at once (the client left): give the place up
                self.limiter.leave(place)
                raise
            await self.limiter.wait(place)
        meter.admit()
        release: Callable[[], object] = self.limiter.release
        answered: Answer | None = None
        try:
            if place is not None:
                outgoing = self.outgoing(request)  # signed afresh: the wait may have been long
            answer = asyncio.ensure_future(self.open(outgoing, meter))
            accepted = place is not None
            try:
                if not accepted:
                    await asyncio.wait({answer}, timeout=self.settings.accept_after_seconds)
                    if not answer.done():  # a slow upstream: accepted now, as if queued
                        for event in opening():
                            yield event
                        accepted = True
                answered = await answer
            except BaseException:
                await _abandon(answer)
                raise
            source: AsyncIterator[Piece]
            if self.settings.on_disconnect == "drain":
                source = self._drained(answered, meter)
                answered, release = None, _nothing  # the reader closes and releases them
            else:
                source = self.pieces(answered.response, meter)
            for event in [] if accepted else opening():
                yield event
            reason: StopReason = "end_turn"
            blocks = Blocks()
            async for piece in source:
                if isinstance(piece, Finish):
                    reason = piece.reason
                elif piece:
                    if not isinstance(piece, ToolStart):
                        meter.usage.output_tokens += 1  # a piece a token, until usage says
                    for event in blocks.feed(piece):
                        yield event
            for event in [*blocks.close(), MessageDelta(reason), MessageStop()]:
                yield event
        finally:
            if answered is not None:
                answered.close()
            release()

    def _drained(self, answered: Answer, meter: Meter) -> AsyncGenerator[Piece, None]:
        """The pieces, read by a task of their own (started now) that goes on to the end,
        within the deadlines, if the consumer leaves: the usage is then what the upstream
        bills, and what was counted after the generation ended is reported late."""
        queue: asyncio.Queue[Piece | BaseException | None] = asyncio.Queue()
        consumer = {"ended": False, "counted": 0}

        async def read() -> None:
            try:
                async for piece in self.pieces(answered.response, meter):
                    queue.put_nowait(piece)
                queue.put_nowait(None)
            except Exception as exc:
                queue.put_nowait(exc)
            finally:
                answered.close()
                self.limiter.release()
                late = meter.usage.output_tokens - consumer["counted"]
                if not consumer["ended"] and late > 0 and meter.on_late_usage is not None:
                    meter.on_late_usage(late)

        reader = asyncio.create_task(read())
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)

        async def consume() -> AsyncGenerator[Piece, None]:
            try:
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                consumer["ended"] = True
            finally:
                consumer["counted"] = meter.usage.output_tokens

        return consume()

    async def sse(
        self, response: aiohttp.ClientResponse, meter: Meter
    ) -> AsyncIterator[ServerSentEvent]:
        """The body's server-sent events (the openai and anthropic APIs)."""
        parser = SSEParser()
        first = True
        async for raw in self.chunks(response, meter):
            # A fast upstream's whole answer can come in the first read: its head is parsed
            # (and its first token sent) before the rest is.
            parts = (raw[:FIRST_PART], raw[FIRST_PART:]) if first else (raw,)
            first = False
            for part in parts:
                try:
                    events = parser.feed(part)
                except SSEError as exc:
                    raise errors.ModelStreamError(f"Provider {self.name}: {exc}") from None
                for event in events:
                    yield event

    async def open(self, request: Outgoing, meter: Meter) -> Answer:
        """Send and wait for the status line, within the first-byte deadline; errors before
        the stream are raised as ours (the door answers them in its own shape)."""
        started = time.monotonic()
        span = telemetry.upstream_span(request.method, request.url, request.headers)
        try:
            async with asyncio.timeout(self.settings.first_byte_timeout_seconds):
                response = await self.client.request(
                    request.method,
                    yarl.URL(request.url, encoded=True),  # as signed: no requoting
                    headers=request.headers,
                    data=request.body,
                )
        except BaseException as exc:
            if span is not None:
                span.end(exc)
            if isinstance(exc, aiohttp.ClientError):  # first: a connect timeout is one too
                raise errors.ServiceUnavailable(
                    f"Provider {self.name} is unreachable ({type(exc).__name__}: {exc})."
                ) from None
            if isinstance(exc, TimeoutError):
                raise errors.ModelTimeout(
                    f"Provider {self.name} did not answer within "
                    f"{self.settings.first_byte_timeout_seconds:g} s."
                ) from None
            raise
        finally:
            meter.upstream_seconds += time.monotonic() - started
        answered = Answer(response, span)
        if span is not None:
            span.status(response.status)
        if response.status >= 400:
            try:
                async with asyncio.timeout(self.settings.idle_timeout_seconds):
                    body = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                body = b""  # the status says enough
            finally:
                answered.close()
            raise http_error(self.name, response.status, body, response.headers)
        return answered

    async def chunks(self, response: aiohttp.ClientResponse, meter: Meter) -> AsyncIterator[bytes]:
        """The body as it comes, all that arrived in one piece; silence past a deadline (first
        byte, then between chunks) or a cut connection is an in-band error. Time spent waiting
        counts as the upstream's.

        The first read has a timer of its own (asyncio.timeout: a handle, no task, never across
        a yield); later ones are watched by the provider's Stalls (no timer per read: at
        thousands of chunks a second, aiohttp's per-read timer was a cost of its own)."""
        raw = response.content.iter_any()
        s = self.settings
        deadline, which = s.first_byte_timeout_seconds, "for its first byte"
        read = Read(response.content)
        self.stalls.watch(read)
        first = True
        try:
            while True:
                started = time.monotonic()
                try:
                    if first:
                        async with asyncio.timeout(deadline):
                            chunk = await anext(raw)
                    else:
                        read.since = started
                        chunk = await anext(raw)
                except StopAsyncIteration:
                    return
                except TimeoutError:  # ours, or the Stalls' (and a ClientError too: aiohttp's)
                    raise errors.ModelTimeout(
                        f"Provider {self.name} sent nothing {which} ({deadline:g} s)."
                    ) from None
                except aiohttp.ClientError as exc:
                    raise errors.ModelStreamError(
                        f"Provider {self.name} cut the stream ({type(exc).__name__}: {exc})."
                    ) from None
                finally:
                    read.since = None
                    meter.upstream_seconds += time.monotonic() - started
                if chunk and first:
                    first, deadline, which = False, s.idle_timeout_seconds, "between two chunks"
                yield chunk
        finally:
            self.stalls.forget(read)


def http_error(name: str, status: int, body: bytes, headers: Any) -> errors.SluicegateError:
    """An upstream's error answer as ours, with its own message."""
    message = _message(body) or f"HTTP {status}"
    said = f"Provider {name} answered {status}: {message}"
    kind: type[errors.SluicegateError] = errors.SluicegateError
    if status == 429:
        kind = errors.Throttled
    elif status in (400, 413, 422):
        kind = errors.ValidationError
    elif status in (401, 403):
        kind = errors.AccessDenied
    elif status == 404:
        kind = errors.NotFound
    elif status in (408, 504):
        kind = errors.ModelTimeout
    elif status in (503, 529):
        kind = errors.ServiceUnavailable
    return kind(said)


def _message(body: bytes) -> str:
    """The message in an OpenAI, Anthropic or AWS error body, or the start of the text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, dict):
            found = inner.get("message") or inner.get("Message")
            if isinstance(found, str):
                return found[:1000]
        if isinstance(inner, str):
            return inner[:1000]
    return str(data)[:300]


def _nothing() -> None:
    return None


async def _abandon(opening: asyncio.Future[Answer]) -> None:
    """Stop waiting for an upstream's answer; close it if it came all the same."""
    if opening.cancel():
        with contextlib.suppress(asyncio.CancelledError):
            await opening  # cancelling it closes the connection
    elif not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def opening() -> list[Event]:
    """The upstream accepted: a message starts (input tokens come with its usage at the end)."""
    return [MessageStart("", "", 0), BlockStart()]
