"""Hostile load: what each attack does to another client's stream and to the server's memory.

    .venv/bin/python bench/hostile.py            # about two minutes; writes bench/results.md
    .venv/bin/python bench/hostile.py --quick    # 1 s windows, smaller loads: a smoke run

One `sluicegate serve` (the scripted provider for every model: a word every 20 ms, answers of
up to 4,000 words; default limits) on a free 127.0.0.1 port, and three parties:

- the victim, in a process of its own so that the attacks do not take its event loop: one
  WebSocket from 127.0.0.2 (another caller than the attacker's 127.0.0.1 for the per-caller
  caps) that keeps a long `generate` streaming (max_tokens 4,000, the next one when it ends)
  and records `time.monotonic()` at every `delta`;
- the attacker, this process: one window after another, each a different attack (the table
  below: baseline, worst allowed and over-cap stop sequences, large prompts, malformed JSON,
  slowloris, a huge header, a WebSocket message flood, an @connections flood into a socket
  that does not read, one address opening many generations at once, a connection storm);
- a sampler thread reading the server's VmRSS every 25 ms.

Per window: what was sent and how it was answered (counts by status or outcome, and the p99
time to an answer); the victim's largest and p99 gap between two deltas within one generation
whose span overlaps the window (CLOCK_MONOTONIC is system-wide, so the victim's times and the
window's marks compare), against the issue's target of a largest gap under 100 ms; the server's
RSS peak during the window and 1 s after it; the cores used by the server, the attacker, the
victim and everything else (from /proc); any ERROR or Traceback the server logged. After each
window /healthz must answer within 5 s, or the run stops there.

The table is printed and, for a full run, written to its own section of bench/results.md
(`--output` elsewhere; a `--quick` run writes only when given `--output`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import boto3
import httpx
import websockets
from bedrock_stream import (
    BIN,
    BUSY_WARNING,
    RESULTS,
    CpuShare,
    cpu_sample,
    cpu_share,
    free_port,
    idle_check,
    machine_line,
    percentile,
    process_cpu,
    raise_interrupt,
    server_process,
    write_section,
)
from botocore.config import Config
from websocket import raise_open_files, rss, ws_url

BEGIN = "<!-- bench/hostile.py: begin -->"
END = "<!-- bench/hostile.py: end -->"
SERVER_CONFIG = "[scripted]\ndelay_ms = 20\nlength = 4000\n"  # default limits otherwise
VICTIM_ADDRESS = "127.0.0.2"
VICTIM_TOKENS = 4000
TARGET_GAP_S = 0.100
SETTLE_S = 1.0  # between windows; RSS "after" is read at its end
RSS_EVERY_S = 0.025
HEALTH_TIMEOUT_S = 5.0
MB = 1_000_000
MAX_STOP_CHARS = 64 * 1024  # sluicegate/gateway.py
STOPS = 8191  # the Messages API's count limit (sluicegate/translate/anthropic.py)
# The costliest set under the cap found (5.5 ms a token on this machine, StopScanner alone):
# the most sequences, each starting with the space every streamed word ends with.
WORST_STOPS = [f" q{i:06d}" for i in range(STOPS)]  # 8 characters each: 65,528 in all
OVER_STOPS = [f" q{i:07d}" for i in range(STOPS)]  # 9 each: 73,719, over the cap
BEDROCK_BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 16}
DOORS = {  # door: (path, body without messages)
    "bedrock": ("/model/m/invoke", BEDROCK_BODY),
    "openai": ("/v1/chat/completions", {"model": "m", "max_tokens": 16}),
    "anthropic": ("/v1/messages", {"model": "m", "max_tokens": 16}),
}


@dataclass(frozen=True)
class Scale:
    """How big each attack is: full run or --quick."""

    seconds: float
    slowloris_seconds: float  # past the server's 10 s header deadline, to see its answer
    stop_streams: int
    prompt_bytes: int
    prompt_workers: int
    flood_workers: int
    slow_connections: int
    header_bytes: int
    pings: int
    at_once: int
    storm: int


FULL = Scale(5.0, 12.0, 4, 5 * MB, 3, 16, 300, 32 * MB, 10_000, 200, 2_000)
QUICK = Scale(1.0, 1.0, 2, 1 * MB, 2, 4, 50, 4 * MB, 1_000, 100, 200)


@dataclass(frozen=True)
class Target:
    url: str
    port: int
    pid: int

    @property
    def ws(self) -> str:
        return ws_url(self.url)


@dataclass
class Tally:
    """How an attack's requests were answered: outcome counts, seconds to each answer."""

    counts: Counter[str] = field(default_factory=Counter)
    times: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    deltas: int = 0  # text deltas the attacker's own streams received

    def add(self, outcome: str, since: float | None = None) -> None:
        self.counts[outcome] += 1
        if since is not None:
            self.times.append(time.monotonic() - since)

    def text(self) -> str:
        parts = [f"{k}: {v:,}" for k, v in sorted(self.counts.items())] or ["-"]
        if self.deltas:
            parts.append(f"{self.deltas:,} deltas read")
        if self.times:
            parts.append(f"answer p99 {ms(percentile(self.times, 99))} ms")
        return "; ".join([*parts, *self.notes])


Attack = Callable[[Target, Scale, float, Tally], Awaitable[None]]


# -- the victim (a process of its own) -------------------------------------------------------


def victim(url: str, pipe: Connection) -> None:
    """Child process: streams, and on each request sends back the deltas' times since the last."""
    asyncio.run(watch(url, pipe))


async def watch(url: str, pipe: Connection) -> None:
    times: list[tuple[int, float]] = []  # (generation number, monotonic time of a delta)
    trouble: list[tuple[float, str]] = []
    first = asyncio.Event()
    streaming = asyncio.create_task(keep_streaming(url, times, trouble, first))
    await first.wait()
    pipe.send("ready")
    while await asyncio.to_thread(pipe.recv) == "times":
        pipe.send((times[:], trouble[:]))
        times.clear()
        trouble.clear()
    streaming.cancel()


async def keep_streaming(
    url: str, times: list[tuple[int, float]], trouble: list[tuple[float, str]], first: asyncio.Event
) -> None:
    n = 0
    while True:
        try:
            async with websockets.connect(url, local_addr=(VICTIM_ADDRESS, 0)) as ws:
                while True:
                    n += 1
                    body = {"action": "generate", "id": f"v{n}", "max_tokens": VICTIM_TOKENS}
                    body["prompt"] = "Write a very long story about a lighthouse keeper."
                    await ws.send(json.dumps(body))
                    async for raw in ws:
                        m = json.loads(raw)
                        if m["type"] == "delta":
                            times.append((n, time.monotonic()))
                            first.set()
                        elif m["type"] in ("end", "error"):
                            if m["type"] == "error" or m["stop_reason"] != "max_tokens":
                                trouble.append((time.monotonic(), json.dumps(m)[:200]))
                            break
        except (OSError, websockets.WebSocketException) as exc:
            trouble.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:200]))
            n += 1
            await asyncio.sleep(0.1)


def gaps(times: list[tuple[int, float]], start: float, end: float) -> list[float]:
    """Gaps between consecutive deltas of one generation whose span overlaps [start, end]."""
    return [
        b - a
        for (ga, a), (gb, b) in itertools.pairwise(times)
        if ga == gb and b > start and a < end
    ]


# -- the attacks, one per window -------------------------------------------------------------


def until(deadline: float) -> bool:
    return time.monotonic() < deadline


def client(t: Target, connections: int = 64) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=t.url, timeout=30, limits=limits)


async def read_stream(
    http: httpx.AsyncClient, path: str, body: Any, deadline: float, tally: Tally
) -> None:
    """A streamed request read until it ends or the deadline: its status (timed to the
    headers) and the deltas it carried, counted by their `"delta"` key."""
    started = time.monotonic()
    async with http.stream("POST", path, json=body) as r:
        tally.add(str(r.status_code), started)
        async for chunk in r.aiter_raw():
            tally.deltas += chunk.count(b'"delta"')
            if not until(deadline):
                break


async def baseline(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    await asyncio.sleep(deadline - time.monotonic())


def messages_body(stops: list[str]) -> dict[str, Any]:
    """A long streamed Messages API request with these stop sequences."""
    return {
        "model": "m", "max_tokens": 4000, "stream": True, "stop_sequences": stops,
        "messages": [{"role": "user", "content": "Write a long story."}],
    }  # fmt: skip


async def worst_stops(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    async with client(t) as http:
        body = messages_body(WORST_STOPS)
        await asyncio.gather(
            *(
                read_stream(http, "/v1/messages", body, deadline, tally)
                for _ in range(s.stop_streams)
            )
        )


async def over_cap_stops(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    body = json.dumps(messages_body(OVER_STOPS)).encode()

    async def worker() -> None:
        while until(deadline):
            started = time.monotonic()
            r = await http.post("/v1/messages", content=body)
            tally.add(f"{r.status_code} {r.json().get('error', {}).get('type')}", started)

    async with client(t) as http:
        await asyncio.gather(*(worker() for _ in range(s.stop_streams)))


async def large_prompts(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    words = "lorem ipsum dolor sit amet " * (s.prompt_bytes // 27)
    body = json.dumps({**BEDROCK_BODY, "messages": [{"role": "user", "content": words}]})

    async def worker() -> None:
        while until(deadline):
            started = time.monotonic()
            r = await http.post("/model/m/invoke", content=body.encode())
            tally.add(str(r.status_code), started)

    async with client(t) as http:
        await asyncio.gather(*(worker() for _ in range(s.prompt_workers)))


def malformed_bodies() -> list[tuple[str, str, bytes]]:
    """(door, kind, body) for each door: its valid body shape with one hostile part."""
    hello = [{"role": "user", "content": "hi"}]
    out = []
    for door, (_, base) in DOORS.items():
        valid = json.dumps({**base, "messages": hello})
        deep = "[" * 100_000 + "]" * 100_000
        kinds = {
            "lone surrogate": valid.replace('"hi"', '"\\ud800"'),
            "5,000-digit integer": valid.replace('"max_tokens": 16', '"max_tokens": ' + "9" * 5000),
            "100,000-deep nesting": valid.replace('"hi"', deep),
            "truncated": valid[: len(valid) // 2],
        }
        out += [(door, kind, text.encode()) for kind, text in kinds.items()]
    return out


def in_shape(door: str, r: httpx.Response) -> bool:
    """The door's own error shape (what its SDK parses)."""
    try:
        body = r.json()
    except ValueError:
        return False
    if door == "bedrock":
        return "x-amzn-errortype" in r.headers and isinstance(body.get("message"), str)
    error = body.get("error")
    if door == "anthropic":
        return body.get("type") == "error" and isinstance(error, dict) and "type" in error
    return isinstance(error, dict) and {"message", "type"} <= set(error)


async def malformed(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    bodies = malformed_bodies()

    async def worker(i: int) -> None:
        while until(deadline):
            door, kind, body = bodies[i % len(bodies)]
            i += s.flood_workers
            started = time.monotonic()
            r = await http.post(DOORS[door][0], content=body)
            shaped = "" if in_shape(door, r) else f", NOT in shape ({kind}: {r.text[:80]!r})"
            tally.add(f"{door} {r.status_code}{shaped}", started)

    async with client(t) as http:
        await asyncio.gather(*(worker(i) for i in range(s.flood_workers)))


def status_of(head: bytes) -> str:
    return head.split(b"\r\n", 1)[0].decode(errors="replace")[9:] if head else "closed, no answer"


async def open_request(t: Target, head: bytes) -> tuple[asyncio.StreamWriter, asyncio.Task[bytes]]:
    """A raw connection with `head` written, and a task reading the first bytes of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", t.port)
    writer.write(head)
    return writer, asyncio.create_task(reader.read(256))


async def slowloris(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    head = f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{t.port}\r\nX-Slow: ".encode()

    async def one() -> None:
        started = time.monotonic()
        writer, answer = await open_request(t, head)
        with contextlib.suppress(OSError):
            while not answer.done() and until(deadline):
                await asyncio.wait([answer], timeout=1.0)
                writer.write(b"a")  # one header byte a second
        if answer.done():
            with contextlib.suppress(OSError):
                tally.add(status_of(answer.result()), started)
        else:
            tally.add("still open at the window's end")
        answer.cancel()
        writer.close()

    await asyncio.gather(*(one() for _ in range(s.slow_connections)))


async def huge_header(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{t.port}\r\nX-Big: ".encode()
    chunk, taken = b"a" * 65536, []

    async def worker() -> None:
        while until(deadline):
            started, sent = time.monotonic(), 0
            writer, answer = await open_request(t, head)
            with contextlib.suppress(OSError):
                while sent < s.header_bytes and not answer.done() and not writer.is_closing():
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
            try:
                tally.add(status_of(await asyncio.wait_for(answer, 10)), started)
            except OSError:  # the server closed with our bytes unread: RST, its answer lost
                tally.add("reset while sending", started)
            except TimeoutError:
                tally.add("no answer in 10 s", started)
            taken.append(sent)
            writer.close()

    await asyncio.gather(*(worker() for _ in range(4)))
    taken.sort()
    tally.notes.append(
        f"bytes written before the answer or reset: median {taken[len(taken) // 2] / MB:.1f} "
        f"MB, max {taken[-1] / MB:.1f} MB"
    )


async def ws_flood(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    async with websockets.connect(t.ws, compression=None, max_queue=None) as ws:
        while until(deadline) or not tally.counts:
            started = time.monotonic()

            async def pings() -> None:
                for _ in range(s.pings):
                    await ws.send('{"action": "ping"}')

            async def pongs() -> None:
                for _ in range(s.pings):
                    reply = json.loads(await ws.recv())
                    tally.add(reply.get("type", "?"))

            await asyncio.gather(pings(), pongs())
            tally.times.append(time.monotonic() - started)  # per burst


def post_until_gone(api: Any, cid: str, deadline: float, posted: list[int], tally: Tally) -> None:
    """Thread: 128 KiB posts to one connection until it is Gone (or the deadline)."""
    data, n = b"x" * 128 * 1024, 0
    while until(deadline):
        try:
            api.post_to_connection(ConnectionId=cid, Data=data)
            n += 1
            tally.add("200")
        except api.exceptions.GoneException:
            tally.add("410 GoneException")
            break
        except Exception as exc:
            tally.add(type(exc).__name__)
            break
    posted.append(n)


async def connections_flood(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    api = boto3.client(
        "apigatewaymanagementapi", region_name="us-east-1", endpoint_url=f"{t.url}/ws",
        aws_access_key_id="AKIDHOSTILE", aws_secret_access_key="hostile",
        config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip
    posted: list[int] = []
    while until(deadline):
        # max_queue=1: the client stops reading its socket after one message.
        ws = await websockets.connect(t.ws, compression=None, max_queue=1, ping_interval=None)
        await ws.send('{"action": "whoami"}')
        cid = json.loads(await ws.recv())["connectionId"]
        await asyncio.to_thread(post_until_gone, api, cid, deadline, posted, tally)
        ws.transport.abort()
    tally.notes.append(f"posts accepted per socket before Gone: {min(posted)}-{max(posted)}")


async def many_at_once(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    body = {"model": "m", "stream": True, "max_tokens": 4000}
    body["messages"] = [{"role": "user", "content": "Write a long story."}]

    async with client(t, s.at_once) as http:
        path = "/v1/chat/completions"
        await asyncio.gather(
            *(read_stream(http, path, body, deadline, tally) for _ in range(s.at_once))
        )


async def storm(t: Target, s: Scale, deadline: float, tally: Tally) -> None:
    left = [s.storm]

    async def worker() -> None:
        while left[0] > 0 or until(deadline):
            left[0] -= 1
            started = time.monotonic()
            try:
                async with websockets.connect(t.ws, compression=None, open_timeout=10):
                    pass
                tally.add("opened and closed", started)
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                tally.add(type(exc).__name__, started)

    await asyncio.gather(*(worker() for _ in range(50)))


@dataclass(frozen=True)
class Window:
    name: str
    sent: str  # formatted with the Scale's fields
    attack: Attack


WINDOWS = [
    Window("baseline", "nothing", baseline),
    Window(
        "worst allowed stop sequences",
        "{stop_streams} concurrent /v1/messages streams, each with 8,191 stop sequences of "
        "8 characters (65,528 in all, under the 65,536 cap)",
        worst_stops,
    ),
    Window(
        "over-cap stop sequences",
        "/v1/messages with 8,191 stop sequences of 9 characters (73,719), "
        "{stop_streams} at a time, for the whole window",
        over_cap_stops,
    ),
    Window(
        "large prompts",
        "Bedrock InvokeModel bodies of {prompt_bytes:,} bytes (max_tokens 16), "
        "{prompt_workers} at a time",
        large_prompts,
    ),
    Window(
        "malformed JSON",
        "lone surrogate, 5,000-digit integer, 100,000-deep nesting, truncated body; on "
        "/model/m/invoke, /v1/chat/completions, /v1/messages; {flood_workers} at a time",
        malformed,
    ),
    Window(
        "slowloris",
        "{slow_connections} connections trickling one header byte a second",
        slowloris,
    ),
    Window(
        "huge header",
        "a {header_bytes:,}-byte header, 4 connections at a time, again and again",
        huge_header,
    ),
    Window(
        "WebSocket message flood",
        "bursts of {pings:,} `ping` messages on one socket, pongs read concurrently",
        ws_flood,
    ),
    Window(
        "@connections flood",
        "128 KiB post_to_connection (boto3, SigV4) to a socket that does not read, until "
        "Gone; then a new socket",
        connections_flood,
    ),
    Window(
        "one address, many generations",
        "{at_once} streamed /v1/chat/completions at once from 127.0.0.1 (cap 64 per caller)",
        many_at_once,
    ),
    Window(
        "connection storm",
        "{storm:,} WebSocket connects and closes (50 at a time), more until the window ends",
        storm,
    ),
]


# -- running the windows ---------------------------------------------------------------------


@dataclass
class Row:
    name: str
    sent: str
    answered: str
    seconds: float
    deltas: int
    largest: float | None
    p99: float | None
    victim_trouble: list[str]
    rss_peak: int
    rss_after: int
    cpu: CpuShare
    victim_cores: float
    server_errors: list[str]
    health: str


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(RSS_EVERY_S):
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), rss(self.pid)))

    def peak(self, start: float, end: float) -> int:
        return max((r for t, r in self.samples if start <= t <= end), default=0)


@dataclass
class Run:
    target: Target
    scale: Scale
    log: Path
    pipe: Connection
    victim_pid: int
    sampler: RssSampler
    times: list[tuple[int, float]] = field(default_factory=list)

    def victim_times(self) -> list[tuple[float, str]]:
        self.pipe.send("times")
        times, trouble = self.pipe.recv()
        self.times += times
        return list(trouble)


async def measure(run: Run, window: Window) -> Row:
    t, s = run.target, run.scale
    seconds = s.slowloris_seconds if window.attack is slowloris else s.seconds
    log_at = run.log.stat().st_size
    tally = Tally()
    before, victim_before = cpu_sample(t.pid), process_cpu(str(run.victim_pid))
    start = time.monotonic()
    await window.attack(t, s, start + seconds, tally)
    end = time.monotonic()
    share = cpu_share(before, cpu_sample(t.pid))
    victim_cores = (process_cpu(str(run.victim_pid)) - victim_before) / share.wall
    share = dataclasses.replace(share, other=max(0.0, share.other - victim_cores))
    health = await healthz(t)
    await asyncio.sleep(max(0.0, end + SETTLE_S - time.monotonic()))
    rss_after = rss(t.pid)
    trouble = [f"{m} (at +{at - start:.1f} s)" for at, m in run.victim_times()]
    found = gaps(run.times, start, end)
    logged = run.log.read_bytes()[log_at:].decode(errors="replace").splitlines()
    return Row(
        window.name,
        window.sent.format(**dataclasses.asdict(s)),
        tally.text(),
        end - start,
        sum(start <= at <= end for _, at in run.times),
        max(found, default=None),
        percentile(found, 99),
        trouble,
        run.sampler.peak(start, end),
        rss_after,
        share,
        victim_cores,
        [line for line in logged if "ERROR" in line or "Traceback" in line],
        health,
    )


async def healthz(t: Target) -> str:
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S) as http:
            r = await http.get(f"{t.url}/healthz")
        return f"{r.status_code} in {ms(time.monotonic() - started)} ms"
    except httpx.HTTPError as exc:
        return f"no answer ({type(exc).__name__})"


async def all_windows(run: Run) -> list[Row]:
    rows = []
    for window in WINDOWS:
        print(f"  {window.name} ...", file=sys.stderr, flush=True)
        rows.append(await measure(run, window))
        r = rows[-1]
        print(f"    {r.answered}; victim largest gap {ms(r.largest)} ms", file=sys.stderr)
        if not r.health.startswith("200"):
            print(f"server stopped answering: /healthz {r.health}", file=sys.stderr)
            break
    return rows


def hostile(workdir: Path, scale: Scale) -> tuple[list[Row], int]:
    config = workdir / "hostile.toml"
    config.write_text(SERVER_CONFIG)
    port, log = free_port(), workdir / "server.log"
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "sluicegate"), "serve", "--port", str(port), "--config", str(config)]
    cmd += ["--route", "*=scripted", "--log-level", "warning"]
    print(f"sluicegate on {url} ...", file=sys.stderr, flush=True)
    with server_process(cmd, f"{url}/metrics", log) as pid:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=victim, args=(ws_url(url), child), daemon=True)
        proc.start()
        sampler = RssSampler(pid)
        try:
            if not parent.poll(30) or parent.recv() != "ready":
                raise RuntimeError("the victim's stream did not start")
            sampler.start()
            time.sleep(SETTLE_S)
            start_rss = rss(pid)
            run = Run(Target(url, port, pid), scale, log, parent, proc.pid or 0, sampler)
            rows = asyncio.run(all_windows(run))
            parent.send("done")
            proc.join(10)
            return rows, start_rss
        finally:
            sampler.stopped.set()
            if proc.is_alive():
                proc.kill()


# -- report ----------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def mb(value: int) -> str:
    return f"{value / MB:,.0f}"


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| window | what was sent | how it was answered | s | victim deltas | victim largest "
        "gap (ms) | victim p99 gap (ms) | server RSS peak / after (MB) | cores: server / "
        "attacker / victim / other |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r.cpu
        largest = ms(r.largest) + (" **(over 100)**" if (r.largest or 0) >= TARGET_GAP_S else "")
        lines.append(
            f"| {r.name} | {r.sent} | {r.answered} | {r.seconds:.1f} | {r.deltas:,} | {largest} "
            f"| {ms(r.p99)} | {mb(r.rss_peak)} / {mb(r.rss_after)} | {c.server:.2f} / "
            f"{c.client:.2f} / {r.victim_cores:.2f} / {c.other:.2f} |"
        )
    return lines


def findings(rows: list[Row], start_rss: int) -> list[str]:
    missed = [f"{r.name} ({ms(r.largest)} ms)" for r in rows if (r.largest or 0) >= TARGET_GAP_S]
    lines = [
        f"Target (victim's largest gap under 100 ms): met in {len(rows) - len(missed)} of "
        f"{len(rows)} windows" + (f"; missed in {', '.join(missed)}." if missed else "."),
        f"Server RSS before the first window: {mb(start_rss)} MB.",
    ]
    for r in rows:
        if r.victim_trouble:
            lines.append(f"{r.name}: the victim saw {'; '.join(r.victim_trouble[:3])}")
        if r.server_errors:
            lines.append(f"{r.name}: the server logged {len(r.server_errors)} error lines, "
                         f"first: `{r.server_errors[0][:200]}`")  # fmt: skip
        if not r.health.startswith("200"):
            lines.append(f"{r.name}: /healthz after it: {r.health}")
    return lines


NOTES = [
    "The victim's gaps are between consecutive `delta` messages of one generation (a "
    "restart's gap is not counted), timed in its own process on its own WebSocket from "
    "127.0.0.2; the scripted provider sends a word every 20 ms, so ~20 ms is no delay.",
    "Answer p99: from a request sent to its status (streams: to their headers); for the "
    "WebSocket flood, per burst of pings to the last pong.",
    "Cores = CPU seconds per wall second over the window (/proc): server, this attacking "
    "process, the victim's process, and everything else on the machine ('other' well above 0 "
    "means others were competing, or the kernel's loopback work in byte-heavy windows). "
    "Attacker and server share the same 2 cores.",
    "Huge header: the server answers 431 once 64 KiB of header are in and closes; a client "
    "still writing then gets a reset, which can discard the 431 before it is read ('reset "
    "while sending'). The bytes written are what the kernels' buffers took, not what the "
    "server read.",
    "RSS after = VmRSS 1 s after the window's end (ended generations are kept within "
    "`ended_bytes`; Python does not always hand freed memory back to the system).",
]


def report(machine: str, rows: list[Row], start_rss: int, quick: bool) -> str:
    title = "## Under hostile load (bench/hostile.py" + (", --quick)" if quick else ")")
    lines = [BEGIN, title, "", machine, "", *table(rows), ""]
    lines += [*findings(rows, start_rss), "", "Notes:", "", *[f"- {n}" for n in NOTES], END]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 s windows, smaller loads")
    parser.add_argument("--output", type=Path, help="results file (default: bench/results.md)")
    args = parser.parse_args(argv)
    output = args.output or (None if args.quick else RESULTS)
    signal.signal(signal.SIGTERM, raise_interrupt)
    raise_open_files(8192)
    busy = idle_check()
    if busy > BUSY_WARNING:
        print(f"warning: {busy:.2f} cores were busy before start", file=sys.stderr)
    machine = machine_line(busy)
    try:
        with tempfile.TemporaryDirectory(prefix="sluicegate-hostile-") as tmp:
            rows, start_rss = hostile(Path(tmp), QUICK if args.quick else FULL)
    except KeyboardInterrupt:
        print("interrupted: server stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    section = report(machine, rows, start_rss, args.quick)
    print(section)
    if output is not None:
        write_section(output, section, BEGIN, END)
        print(f"(section written to {output})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
