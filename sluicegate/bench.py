"""`sluicegate bench URL`: measure any streaming endpoint as its clients see it.

One door per wire protocol, each a small async client: `openai` (Chat Completions SSE, which
llama-server, vLLM and Ollama speak too), `anthropic` (Messages SSE), `bedrock`
(InvokeModelWithResponseStream, signed with SigV4 and read with our event stream decoder) and
`ws` (sluicegate's WebSocket API). At each concurrency level, `rounds` times, that many streams
start together; every text delta is time-stamped as it arrives. From those stamps: time to first
token, the gaps between deltas, tokens/s per stream and in aggregate, and errors.

The `bench/` scripts use `measure` and `table` to put several systems side by side.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import math
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from sluicegate.codecs import sse
from sluicegate.codecs.eventstream import EventStreamDecoder

Door = Literal["openai", "anthropic", "bedrock", "ws"]
DOORS: tuple[Door, ...] = ("openai", "anthropic", "bedrock", "ws")
PROMPT = "Write a Python function that parses a CSV file, then explain how it works."


def door_named(name: str) -> Door:
    for door in DOORS:
        if door == name:
            return door
    raise ValueError(f"--door must be one of {', '.join(DOORS)}, not {name!r}")


class BenchError(Exception):
    """The endpoint answered, but not with a stream: the message says what it sent."""


@dataclass(frozen=True)
class Target:
    """What to measure: an endpoint, the door to use, and the request every stream sends."""

    url: str
    door: Door = "openai"
    model: str = "default"
    prompt: str = PROMPT
    max_tokens: int = 128
    temperature: float | None = None
    api_key: str | None = None
    region: str = "us-east-1"
    extra: dict[str, Any] = field(default_factory=dict)  # merged into each request body
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or f"{self.door} {self.url}"


@dataclass
class Stream:
    """One stream as the client saw it: perf_counter stamps, in seconds."""

    started: float
    deltas: list[float] = field(default_factory=list)
    ended: float | None = None
    usage_tokens: int | None = None  # output tokens as the server reported them
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else len(self.deltas)

    @property
    def ttft(self) -> float | None:
        return self.deltas[0] - self.started if self.deltas else None

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.deltas, self.deltas[1:], strict=False)]

    @property
    def rate(self) -> float | None:
        """Tokens per second after the first: the decode speed this stream saw."""
        if len(self.deltas) < 2 or self.deltas[-1] <= self.deltas[0]:
            return None
        return (self.tokens - 1) / (self.deltas[-1] - self.deltas[0])


@dataclass
class Level:
    """Every round at one concurrency."""

    concurrency: int
    rounds: list[list[Stream]]

    @property
    def streams(self) -> list[Stream]:
        return [s for r in self.rounds for s in r]

    def aggregate(self) -> float | None:
        """Median over rounds of all tokens over the round's wall time."""
        rates = []
        for run in self.rounds:
            ends = [s.ended for s in run if s.ended is not None]
            if not ends:
                continue
            wall = max(ends) - min(s.started for s in run)
            if wall > 0:
                rates.append(sum(s.tokens for s in run if s.error is None) / wall)
        return statistics.median(rates) if rates else None

    def figures(self) -> dict[str, float | int | None]:
        ok = [s for s in self.streams if s.error is None]
        ttfts = [t for s in ok if (t := s.ttft) is not None]
        gaps = [g for s in ok for g in s.gaps]
        rates = [r for s in ok if (r := s.rate) is not None]
        return {
            "streams": len(self.streams),
            "errors": len(self.streams) - len(ok),
            "tokens": sum(s.tokens for s in ok),
            "ttft_p50": percentile(ttfts, 50),
            "ttft_p99": percentile(ttfts, 99),
            "itl_p50": percentile(gaps, 50),
            "itl_p99": percentile(gaps, 99),
            "stream_tps": statistics.median(rates) if rates else None,
            "aggregate_tps": self.aggregate(),
        }


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- the doors: each yields ("delta", None) per text delta and ("usage", n) when told ---

Said = tuple[Literal["delta", "usage"], int | None]


def _join(url: str, path: str) -> str:
    """`path` under the endpoint, whether or not the URL already ends in the API's prefix."""
    base = url.rstrip("/")
    prefix = path.split("/", 2)[1]  # "v1"
    if base.endswith("/" + prefix):
        base = base[: -len(prefix) - 1]
    return base + path


def _messages(target: Target) -> list[dict[str, str]]:
    return [{"role": "user", "content": target.prompt}]


def _body(target: Target, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": target.model, "max_tokens": target.max_tokens}
    if target.temperature is not None:
        body["temperature"] = target.temperature
    return {**body, **fields, **target.extra}


async def _refused(response: httpx.Response) -> BenchError:
    kind = response.headers.get("x-amzn-errortype", "").split(":")[0]
    said = (await response.aread()).decode(errors="replace")[:300]
    return BenchError(" ".join(filter(None, [f"HTTP {response.status_code}", kind])) + ": " + said)


async def _sse(client: httpx.AsyncClient, url: str, body: Any, headers: dict[str, str]) -> Any:
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise await _refused(response)
        parser = sse.SSEParser()
        async for raw in response.aiter_bytes():
            for event in parser.feed(raw):
                yield event


async def _openai(client: httpx.AsyncClient, target: Target) -> AsyncIterator[Said]:
    body = _body(
        target, messages=_messages(target), stream=True, stream_options={"include_usage": True}
    )
    headers = {"authorization": f"Bearer {target.api_key or 'bench'}"}
    async for event in _sse(client, _join(target.url, "/v1/chat/completions"), body, headers):
        if event.data.strip() == "[DONE]":
            return
        chunk = json.loads(event.data)
        if "error" in chunk:
            raise BenchError(str(chunk["error"]))
        for choice in chunk.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                yield "delta", None
        if chunk.get("usage"):
            yield "usage", int(chunk["usage"].get("completion_tokens") or 0)


async def _anthropic(client: httpx.AsyncClient, target: Target) -> AsyncIterator[Said]:
    body = _body(target, messages=_messages(target), stream=True)
    headers = {"x-api-key": target.api_key or "bench", "anthropic-version": "2023-06-01"}
    async for event in _sse(client, _join(target.url, "/v1/messages"), body, headers):
        data = json.loads(event.data)
        kind = data.get("type")
        if kind == "content_block_delta" and data.get("delta", {}).get("text"):
            yield "delta", None
        elif kind == "message_delta":
            yield "usage", int(data.get("usage", {}).get("output_tokens") or 0)
        elif kind == "error":
            raise BenchError(str(data.get("error")))
        elif kind == "message_stop":
            return


@functools.cache
def _credentials() -> Any:
    """The standard credential chain, read once (a botocore session costs tens of ms, which
    would land in every stream's first-token time); any key will do for a local server."""
    import botocore.session
    from botocore.credentials import Credentials

    found = botocore.session.get_session().get_credentials()
    return found.get_frozen_credentials() if found else Credentials("bench", "bench")


def _signed(target: Target, url: str, payload: bytes) -> dict[str, str]:
    """SigV4 headers for one request."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    aws = AWSRequest(
        "POST", url, data=payload, headers={"content-type": "application/json",
                                            "accept": "application/vnd.amazon.eventstream"}
    )  # fmt: skip
    SigV4Auth(_credentials(), "bedrock", target.region).add_auth(aws)
    return dict(aws.headers)


async def _bedrock(client: httpx.AsyncClient, target: Target) -> AsyncIterator[Said]:
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        **{k: v for k, v in _body(target, messages=_messages(target)).items() if k != "model"},
    }
    payload = json.dumps(body).encode()
    url = f"{target.url.rstrip('/')}/model/{quote(target.model, safe='')}"
    url += "/invoke-with-response-stream"
    headers = _signed(target, url, payload)
    async with client.stream("POST", url, content=payload, headers=headers) as response:
        if response.status_code != 200:
            raise await _refused(response)
        decoder = EventStreamDecoder()
        async for raw in response.aiter_bytes():
            for message in decoder.feed(raw):
                if message.headers.get(":message-type") != "event":
                    raise BenchError(f"{message.headers}: {message.payload[:300]!r}")
                if message.headers.get(":event-type") != "chunk":
                    continue
                chunk = json.loads(base64.b64decode(json.loads(message.payload)["bytes"]))
                kind = chunk.get("type")
                if kind == "content_block_delta" and chunk.get("delta", {}).get("text"):
                    yield "delta", None
                elif kind == "message_delta":
                    yield "usage", int(chunk.get("usage", {}).get("output_tokens") or 0)


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


async def _ws(client: httpx.AsyncClient, target: Target) -> AsyncIterator[Said]:
    import websockets

    headers = {"authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    own = uuid.uuid4().hex
    async with websockets.connect(_ws_url(target.url), additional_headers=headers) as ws:
        body = {"action": "generate", "id": own, "prompt": target.prompt}
        await ws.send(json.dumps({**body, **_body(target)}))
        async for raw in ws:
            message = json.loads(raw)
            if message.get("id") != own:
                continue
            kind = message.get("type")
            if kind == "delta":
                yield "delta", None
            elif kind == "error":
                raise BenchError(f"{message.get('code')}: {message.get('message')}")
            elif kind == "end":
                yield "usage", int((message.get("usage") or {}).get("output_tokens") or 0)
                return


DOOR_CLIENTS: dict[Door, Callable[[httpx.AsyncClient, Target], AsyncIterator[Said]]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "bedrock": _bedrock,
    "ws": _ws,
}


async def one(client: httpx.AsyncClient, target: Target, go: asyncio.Event | None = None) -> Stream:
    """One stream, time-stamped; an error is recorded, never raised."""
    if go is not None:
        await go.wait()
    stream = Stream(started=time.perf_counter())
    try:
        async for kind, value in DOOR_CLIENTS[target.door](client, target):
            if kind == "delta":
                stream.deltas.append(time.perf_counter())
            else:
                stream.usage_tokens = value
        if not stream.deltas:
            stream.error = "no text"
    except Exception as exc:  # HTTP, framing, JSON, websockets' own: recorded, not fatal
        stream.error = f"{type(exc).__name__}: {exc}"[:300]
    stream.ended = time.perf_counter()
    return stream


def _told(
    on_stream: Callable[[int, Stream], None], c: int
) -> Callable[[asyncio.Task[Stream]], None]:
    def done(task: asyncio.Task[Stream]) -> None:
        if not task.cancelled():
            on_stream(c, task.result())

    return done


async def measure(
    target: Target,
    concurrency: Sequence[int],
    rounds: int = 3,
    warmup: int = 1,
    on_stream: Callable[[int, Stream], None] | None = None,
) -> list[Level]:
    """Every concurrency level in turn, each after `warmup` unmeasured streams."""
    limits = httpx.Limits(max_connections=max(concurrency) + 4, max_keepalive_connections=64)
    timeout = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=300.0)
    levels = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        for c in concurrency:
            for _ in range(warmup):
                await one(client, target)
            runs = []
            for _ in range(rounds):
                go = asyncio.Event()
                tasks = [asyncio.create_task(one(client, target, go)) for _ in range(c)]
                if on_stream is not None:
                    for task in tasks:
                        task.add_done_callback(_told(on_stream, c))
                await asyncio.sleep(0)
                go.set()
                runs.append(list(await asyncio.gather(*tasks)))
            levels.append(Level(c, runs))
    return levels


# --- reporting ---


def _ms(seconds: float | int | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def _rate(value: float | int | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


COLUMNS = (
    "system",
    "streams",
    "errors",
    "TTFT p50 / p99 ms",
    "gap p50 / p99 ms",
    "tok/s per stream",
    "tok/s aggregate",
)


def row(name: str, level: Level) -> list[str]:
    f = level.figures()
    return [
        name,
        f"{level.concurrency} x {len(level.rounds)}",
        str(f["errors"]),
        f"{_ms(f['ttft_p50'])} / {_ms(f['ttft_p99'])}",
        f"{_ms(f['itl_p50'])} / {_ms(f['itl_p99'])}",
        _rate(f["stream_tps"]),
        _rate(f["aggregate_tps"]),
    ]


def table(results: Sequence[tuple[str, Sequence[Level]]]) -> str:
    """One Markdown table: a row per system and concurrency, grouped by concurrency."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    levels = sorted({lv.concurrency for _, found in results for lv in found})
    for c in levels:
        for name, found in results:
            for level in found:
                if level.concurrency == c:
                    lines.append("| " + " | ".join(row(name, level)) + " |")
    return "\n".join(lines) + "\n"


def errors(results: Sequence[tuple[str, Sequence[Level]]]) -> list[str]:
    """The distinct errors seen, with counts, so a failing run says why."""
    seen: dict[str, int] = {}
    for name, found in results:
        for level in found:
            for s in level.streams:
                if s.error is not None:
                    key = f"{name} @{level.concurrency}: {s.error}"
                    seen[key] = seen.get(key, 0) + 1
    return [f"{n} x {text}" for text, n in seen.items()]


def plot(results: Sequence[tuple[str, Sequence[Level]]], path: Path) -> None:
    """Tokens over time per stream (first round of the highest level) and TTFT distributions."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BenchError("--plot needs matplotlib: pip install 'sluicegate[bench]'") from exc
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, found) in enumerate(results):
        top = max(found, key=lambda lv: lv.concurrency)
        colour = f"C{i}"
        for j, s in enumerate(top.rounds[0]):
            xs = [t - s.started for t in s.deltas]
            left.plot(xs, range(1, len(xs) + 1), color=colour, alpha=0.5, lw=0.8,
                      label=f"{name} ({top.concurrency} streams)" if j == 0 else None)  # fmt: skip
        ttfts = [t * 1000 for lv in found for s in lv.streams if (t := s.ttft) is not None]
        if ttfts:
            right.hist(ttfts, bins=30, alpha=0.5, color=colour, label=name)
    left.set(xlabel="seconds since the request", ylabel="deltas received", title="Tokens over time")
    right.set(xlabel="ms", ylabel="streams", title="Time to first token")
    left.legend(fontsize="small")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def raw(results: Sequence[tuple[str, Sequence[Level]]]) -> dict[str, Any]:
    """Every stamp, for later comparison: relative to each stream's start, in seconds."""
    return {
        name: [
            {
                "concurrency": lv.concurrency,
                "figures": lv.figures(),
                "rounds": [
                    [
                        {
                            "deltas": [round(t - s.started, 6) for t in s.deltas],
                            "tokens": s.tokens,
                            "error": s.error,
                            "seconds": None if s.ended is None else round(s.ended - s.started, 6),
                        }
                        for s in run
                    ]
                    for run in lv.rounds
                ],
            }
            for lv in found
        ]
        for name, found in results
    }


def run(
    target: Target,
    concurrency: Sequence[int],
    rounds: int,
    warmup: int,
    show: bool,
) -> list[Level]:
    """`measure` with a Rich progress display (when asked) on stderr."""
    if not show:
        return asyncio.run(measure(target, concurrency, rounds, warmup))
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[tokens]} tokens, {task.fields[errors]} errors"),
        console=Console(stderr=True), transient=False,
    )  # fmt: skip
    tasks = {
        c: progress.add_task(f"{c} streams", total=c * rounds, tokens=0, errors=0)
        for c in concurrency
    }
    seen = {c: [0, 0] for c in concurrency}

    def on_stream(c: int, s: Stream) -> None:
        seen[c][0] += s.tokens
        seen[c][1] += s.error is not None
        progress.update(tasks[c], advance=1, tokens=seen[c][0], errors=seen[c][1])

    with progress:
        return asyncio.run(measure(target, concurrency, rounds, warmup, on_stream))
