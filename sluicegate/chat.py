"""`sluicegate chat`: a terminal client for any sluicegate, by one of its doors.

Each answer is read by the door's blocking client in a worker thread and handed over a queue;
the main thread renders it and owns Ctrl-C, so an interrupt never lands inside a client's read.
Ctrl-C stops the generation on the server, which records it as `cancelled`: the ws door
sends `stop`, the openai door (a background Response) cancels it, and the anthropic and bedrock
doors, which have no stop call of their own, ask sluicegate's
`POST /sluicegate/generations/{id}/stop` with the same credentials, then close their stream.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment

from sluicegate.codecs.sse import ServerSentEvent, SSEParser

DOORS = ("ws", "bedrock", "anthropic", "openai")
Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class Ended:
    """How an answer ended, as its door told it."""

    stop_reason: str | None
    output_tokens: int | None = None
    request_id: str | None = None  # the gateway's id: /sluicegate/generations/{id}
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """The request went out (connecting and imports before it are not the model's time)."""

    at: float = field(default_factory=time.monotonic)


Piece = str | Sent | Ended


class Door(Protocol):
    def stream(self, messages: list[Message]) -> Iterator[Piece]:
        """Sent, text pieces, then one Ended (blocking; runs in the worker thread)."""
        ...

    def stop(self) -> None:
        """Stop the running answer on the server (from the main thread)."""
        ...


# -- the doors --------------------------------------------------------------------------------


class WsDoor:
    """The WebSocket API: `generate`, then start / delta / end messages; `stop` cancels."""

    def __init__(self, url: str, model: str, api_key: str | None, max_tokens: int) -> None:
        self.url, self.model, self.max_tokens = url, model, max_tokens
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._ws: Any = None
        self._id: str | None = None
        self._sent = threading.Event()
        self._stopping = False

    def _connection(self) -> Any:
        from websockets.protocol import State
        from websockets.sync.client import connect

        if self._ws is None or self._ws.state is not State.OPEN:
            self._ws = connect(self.url, additional_headers=self.headers, open_timeout=10)
        return self._ws

    def stream(self, messages: list[Message]) -> Iterator[Piece]:
        self._sent.clear()
        self._stopping = False
        ws = self._connection()
        self._id = gen = "chat-" + secrets.token_hex(6)
        generate = {"action": "generate", "id": gen, "model": self.model,
                    "messages": messages, "max_tokens": self.max_tokens}  # fmt: skip
        yield Sent()
        ws.send(json.dumps(generate))
        self._sent.set()
        request_id = None
        while True:
            m = json.loads(ws.recv())
            if m.get("id") != gen:
                continue  # a late reply about an earlier answer
            if m["type"] == "start":
                request_id = m.get("requestId")
            elif m["type"] == "delta":
                yield m["text"]
            elif m["type"] == "end":
                yield Ended(m["stop_reason"], m["usage"]["output_tokens"], request_id)
                return
            elif m["type"] == "error":
                yield Ended(None, None, request_id, f"{m['code']}: {m['message']}")
                return

    def stop(self) -> None:
        if self._stopping:  # asked again: leave this connection to that answer's reader
            self._ws = None
            return
        self._stopping = True
        # After the generate went out: the server handles a connection's messages in order.
        if self._sent.wait(10) and self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.send(json.dumps({"action": "stop", "id": self._id}))


class Http:
    """POSTs whose answers stream as server-sent events, with the standard library's client;
    `shutdown` ends the stream being read from another thread."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.base = urllib.parse.urlsplit(base)
        self.headers = {"content-type": "application/json", **headers}
        self._conn: http.client.HTTPConnection | None = None
        self.request_id: str | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.base.scheme == "https":
            return http.client.HTTPSConnection(self.base.netloc, timeout=600)
        return http.client.HTTPConnection(self.base.netloc, timeout=600)

    def post(self, path: str, body: dict[str, Any]) -> http.client.HTTPResponse:
        self._conn = conn = self._connect()  # before the answer starts: shutdown may come first
        conn.connect()
        conn.request("POST", self.base.path.rstrip("/") + path, json.dumps(body), self.headers)
        response = conn.getresponse()
        if response.status != 200:
            detail = response.read(2000).decode("utf-8", "replace")
            conn.close()
            raise RuntimeError(f"HTTP {response.status}: {detail}")
        return response

    def events(self, path: str, body: dict[str, Any], id_header: str) -> Iterator[ServerSentEvent]:
        response = self.post(path, body)
        self.request_id = response.getheader(id_header)
        parser = SSEParser()
        try:
            while chunk := response.read1(65536):
                yield from parser.feed(chunk)
            yield from parser.close()
        finally:
            response.close()
            if self._conn is not None:
                self._conn.close()

    def stop(self, gen_id: str, headers: dict[str, str]) -> None:
        """sluicegate's own stop for a generation (any door's), as its owner."""
        conn = self._connect()
        try:
            path = self.base.path.rstrip("/") + f"/sluicegate/generations/{gen_id}/stop"
            conn.request("POST", path, b"", headers)
            conn.getresponse().read()
        finally:
            conn.close()

    def shutdown(self) -> None:
        sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read; close() would not


class AnthropicDoor:
    """The Messages API, streamed; closing the stream is the only way to end it early."""

    def __init__(self, url: str, model: str, api_key: str | None, max_tokens: int) -> None:
        headers = {"anthropic-version": "2023-06-01", "x-api-key": api_key or "none"}
        self.http = Http(url, headers)
        self.model, self.max_tokens = model, max_tokens
        self._closed = False

    def stream(self, messages: list[Message]) -> Iterator[Piece]:
        self._closed = False
        body = {"model": self.model, "max_tokens": self.max_tokens, "messages": messages,
                "stream": True}  # fmt: skip
        reason, tokens = None, None
        yield Sent()
        try:
            for event in self.http.events("/v1/messages", body, "request-id"):
                data = json.loads(event.data)
                if data["type"] == "content_block_delta" and "text" in data["delta"]:
                    yield data["delta"]["text"]
                elif data["type"] == "message_delta":
                    reason, tokens = (
                        data["delta"].get("stop_reason"),
                        data["usage"]["output_tokens"],
                    )
                elif data["type"] == "error" and self._closed:
                    break  # how this door tells the stop we asked for, if it comes before EOF
                elif data["type"] == "error":
                    error = data["error"]
                    yield Ended(
                        None, None, self.http.request_id, f"{error['type']}: {error['message']}"
                    )
                    return
        except (OSError, http.client.HTTPException):
            if not self._closed:
                raise
        yield Ended("cancelled" if self._closed else reason, tokens, self.http.request_id)

    def stop(self) -> None:
        self.ask_stop()
        self.http.shutdown()

    def ask_stop(self) -> None:
        """The server's half of a stop: it ends the generation; the stream still reads on."""
        self._closed = True
        if self.http.request_id is not None:
            with contextlib.suppress(Exception):
                self.http.stop(self.http.request_id, self.http.headers)


class OpenAIDoor:
    """The Responses API as a background response, so that Ctrl-C can cancel it."""

    def __init__(self, url: str, model: str, api_key: str | None, max_tokens: int) -> None:
        self.http = Http(url, {"authorization": f"Bearer {api_key or 'none'}"})
        self.model, self.max_tokens = model, max_tokens
        self._response: str | None = None
        self._created = threading.Event()
        self._cancelling = False

    def stream(self, messages: list[Message]) -> Iterator[Piece]:
        self._created.clear()
        self._cancelling = False
        body = {"model": self.model, "input": messages, "max_output_tokens": self.max_tokens,
                "stream": True, "background": True}  # fmt: skip
        yield Sent()
        for event in self.http.events("/v1/responses", body, "x-request-id"):
            data = json.loads(event.data)
            kind = data.get("type")
            if kind == "response.created":
                self._response = data["response"]["id"]
                self._created.set()
            elif kind == "response.output_text.delta":
                yield data["delta"]
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                r = data["response"]
                error = (r.get("error") or {}).get("message") if r["status"] == "failed" else None
                tokens = (r.get("usage") or {}).get("output_tokens")
                yield Ended(r["status"], tokens, self.http.request_id, error)
                return
        yield Ended(None, None, self.http.request_id, "the stream ended early")

    def stop(self) -> None:
        if self._cancelling:  # asked again: stop reading
            self.http.shutdown()
            return
        self._cancelling = True
        if self._created.wait(10) and self._response is not None:
            with contextlib.suppress(Exception):
                Http(urllib.parse.urlunsplit(self.http.base), self.http.headers).post(
                    f"/v1/responses/{self._response}/cancel", {}
                ).read()


class BedrockDoor:
    """Bedrock Runtime's ConverseStream through boto3, signed with the api_key as the secret;
    closing the stream is the only way to end it early."""

    def __init__(self, url: str, model: str, api_key: str | None, max_tokens: int) -> None:
        import boto3
        from botocore.config import Config

        self.client = boto3.client(
            "bedrock-runtime", region_name="us-east-1", endpoint_url=url,
            aws_access_key_id="sluicegate-chat", aws_secret_access_key=api_key or "none",
            config=Config(read_timeout=600, retries={"max_attempts": 1}),
        )  # fmt: skip
        self.model, self.max_tokens = model, max_tokens
        self.url, self.secret = url, api_key or "none"
        self._stream: Any = None
        self._request_id: str | None = None
        self._closed = False

    def stream(self, messages: list[Message]) -> Iterator[Piece]:
        self._closed, self._stream = False, None
        turns = [{"role": m["role"], "content": [{"text": m["content"]}]} for m in messages]
        yield Sent()
        response = self.client.converse_stream(
            modelId=self.model, messages=turns, inferenceConfig={"maxTokens": self.max_tokens}
        )
        request_id = self._request_id = response["ResponseMetadata"]["RequestId"]
        self._stream = response["stream"]
        reason, tokens = None, None
        try:
            for event in self._stream:
                if "contentBlockDelta" in event:
                    yield event["contentBlockDelta"]["delta"].get("text", "")
                elif "messageStop" in event:
                    reason = event["messageStop"]["stopReason"]
                elif "metadata" in event:
                    tokens = event["metadata"]["usage"]["outputTokens"]
        except Exception:
            if not self._closed:
                raise
        yield Ended("cancelled" if self._closed else reason, tokens, request_id)

    def stop(self) -> None:
        self.ask_stop()
        raw = getattr(self._stream, "_raw_stream", None)  # botocore's EventStream: urllib3's
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def ask_stop(self) -> None:
        """sluicegate's stop, SigV4-signed with the same key as the stream (its owner)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        self._closed = True
        gen_id = self._request_id
        if gen_id is None:
            return
        url = f"{self.url.rstrip('/')}/sluicegate/generations/{gen_id}/stop"
        aws = AWSRequest("POST", url, data=b"")
        SigV4Auth(Credentials("sluicegate-chat", self.secret), "bedrock", "us-east-1").add_auth(aws)
        with contextlib.suppress(Exception):
            Http(self.url, {}).stop(gen_id, dict(aws.headers))


def ws_url(url: str) -> str:
    """http(s)://HOST:PORT as ws(s)://HOST:PORT/ws (the default stage); a ws(s) URL as given."""
    if url.startswith(("ws://", "wss://")):
        return url
    return "ws" + url.rstrip("/").removeprefix("http") + "/ws"


def open_door(name: str, url: str, model: str, api_key: str | None, max_tokens: int) -> Door:
    if name == "ws":
        return WsDoor(ws_url(url), model, api_key, max_tokens)
    kinds: dict[str, Callable[..., Door]] = {
        "bedrock": BedrockDoor, "anthropic": AnthropicDoor, "openai": OpenAIDoor,
    }  # fmt: skip
    return kinds[name](url.rstrip("/"), model, api_key, max_tokens)


# -- the loop ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    text: str
    ended: Ended
    started: float
    first: float | None
    finished: float

    def figures(self) -> str:
        """First-token time and decode rate (tokens after the first, over the time after it)."""
        parts = []
        tokens = self.ended.output_tokens
        if self.first is not None:
            parts.append(f"first token {(self.first - self.started) * 1000:.0f} ms")
        if tokens is not None:
            parts.append(f"{tokens} tokens")
        if self.first is not None and tokens and tokens > 1 and self.finished > self.first:
            parts.append(f"{(tokens - 1) / (self.finished - self.first):.1f} tok/s")
        parts.append(self.ended.stop_reason or "no stop reason")
        if self.ended.request_id:
            parts.append(self.ended.request_id)
        return " · ".join(parts)


def _pump(door: Door, messages: list[Message], out: queue.Queue[Piece]) -> None:
    try:
        for piece in door.stream(messages):
            out.put(piece)
    except Exception as exc:
        out.put(Ended(None, error=f"{type(exc).__name__}: {exc}"))


class View(Protocol):
    def show(self, text: str, final: bool) -> None: ...


def answer(door: Door, messages: list[Message], view: View) -> Answer:
    """One answer, shown as it streams; Ctrl-C stops it on the server (twice: stop waiting)."""
    pieces: queue.Queue[Piece] = queue.Queue()
    started = time.monotonic()
    threading.Thread(target=_pump, args=(door, messages, pieces), daemon=True).start()
    text, first, stopping = "", None, False
    ended: Ended | None = None
    while ended is None:
        try:
            piece = pieces.get()
            if isinstance(piece, Ended):
                ended = piece
                continue
            if isinstance(piece, Sent):
                started = piece.at
                continue
            first = first or time.monotonic()
            text += piece
            view.show(text, False)
        except KeyboardInterrupt:
            with contextlib.suppress(KeyboardInterrupt):
                door.stop()
            if stopping:
                ended = Ended(None, error="stopped waiting for the server")
            stopping = True
    view.show(text, True)
    return Answer(text, ended, started, first, time.monotonic())


class Tail:
    """The last lines of a renderable that fit on the screen: Live can only redraw lines that
    are still on it (it draws the whole answer once it ends)."""

    def __init__(self, inner: RenderableType) -> None:
        self.inner = inner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(self.inner, options, pad=False)
        for line in lines[-max(1, console.height - 2) :]:
            yield from line
            yield Segment.line()


class Terminal:
    """An answer as Markdown, rendered again as it grows (at most 15 times a second)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        self.shown = 0.0

    def show(self, text: str, final: bool) -> None:
        if self.live is None:
            self.live = Live(console=self.console, auto_refresh=False)
            self.live.start()
        now = time.monotonic()
        if final:
            self.live.update(Markdown(text))
            self.live.stop()  # with the whole answer
            self.live = None
        elif now - self.shown > 1 / 15:
            self.shown = now
            self.live.update(Tail(Markdown(text)), refresh=True)


class Plain:
    """Piped: the answer's text as it comes, a line break at its end."""

    def __init__(self) -> None:
        self.written = 0

    def show(self, text: str, final: bool) -> None:
        sys.stdout.write(text[self.written :] + ("\n" if final and text else ""))
        sys.stdout.flush()
        self.written = 0 if final else len(text)


# \x01 and \x02 tell readline that the colour codes between them take no room on the line.
PROMPT = "\x01\x1b[1;32m\x02>\x01\x1b[0m\x02 "


def read_line(tty: bool) -> str | None:
    """The next prompt, None at the end of input. In a terminal, readline prints the prompt
    once it holds the terminal, so that keys sent after the prompt shows are not lost."""
    if not tty:
        return sys.stdin.readline() or None
    try:
        return input(PROMPT if "readline" in sys.modules else "> ")
    except EOFError:
        print()
        return None


def run(door: Door, tty: bool) -> int:
    """The prompt loop: each turn sends the whole conversation; Ctrl-D (end of input) leaves.
    Piped, the exit status is 1 if an answer failed."""
    console = Console(highlight=False)
    notes = console if tty else Console(stderr=True, highlight=False, soft_wrap=True)
    if tty:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        notes.print("Ctrl-C stops an answer, Ctrl-D leaves.", style="dim")
    history: list[Message] = []
    failed = False
    while True:
        try:
            line = read_line(tty)
        except KeyboardInterrupt:
            print()
            continue
        if line is None:
            return 1 if failed and not tty else 0
        prompt = {"role": "user", "content": line.strip()}
        if not prompt["content"]:
            continue
        result = answer(door, [*history, prompt], Terminal(console) if tty else Plain())
        if result.ended.error is not None:
            failed = True
            notes.print(result.ended.error, style="red", markup=False)
        if result.first is not None or result.ended.error is None:
            notes.print(result.figures(), style="dim", markup=False)
        if result.text and result.ended.error is None:
            history += [prompt, {"role": "assistant", "content": result.text}]


def main(url: str, model: str, door_name: str, api_key: str | None, max_tokens: int) -> int:
    return run(
        open_door(door_name, url, model, api_key, max_tokens),
        sys.stdin.isatty() and sys.stdout.isatty(),
    )
