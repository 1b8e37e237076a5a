"""Replicas on one Redis: what the bus costs and how fast things cross it, in one run.

    .venv/bin/python bench/replicas.py            # about two minutes; writes bench/results.md
    .venv/bin/python bench/replicas.py --quick    # fewer samples, 1 s windows: a smoke run

It starts Debian's `redis-server` on a free 127.0.0.1 port (`--save "" --appendonly no`, a temp
dir of its own) and three replicas A, B and C, each `sluicegate serve --bus redis://...` with the
scripted provider for every model (a word every 20 ms, answers of up to 2,000 words, no
per-caller cap: every stream here comes from one address). Then, one part after the other:

1. Stop latency: a WebSocket `generate` on A; after 3 to 7 deltas a `stop` (with the
   generation's resumeToken) is sent on a socket connected to B, or on A's own socket (the local
   baseline), alternately; timed from the stop sent to A's socket receiving `end`. Checked:
   stop_reason `cancelled`, and the model (A's produced_tokens) went no further than one word
   past the last delta sent.
2. Resume latency: a generation on A, its socket closed after 5 to 20 deltas; 100 ms later (so
   that what A generated meanwhile waits in the log) `resume` with `after` and the token on a
   socket already open to B, or to A again (baseline); timed from the resume sent to the first
   delta received; then read to the end: every seq from 1 to the last exactly once. Five lanes
   run at once.
3. @connections messages/s: 8 sockets held by A (in a child process), stock boto3
   `apigatewaymanagementapi` `post_to_connection` (SigV4, accepted on loopback without an
   api_key) sent to B (crossing Redis) or to A itself; 1 and 8 sender threads, a few seconds
   each; every message must be delivered.
4. Tokens/s through the bus: A, B and C are stopped; two fresh replicas with one config (scripted
   delay_ms = 0, 1,000-word answers), one with `--bus` and one without (the memory bus); 32
   WebSocket `generate` streams at once against each, in alternating rounds; aggregate and
   per-stream tokens/s, and CPU per 1,000 tokens for the server and for redis-server.
5. Redis commands per generated token: Redis `INFO commandstats` and `INFO stats` read before
   and after each of part 4's Redis rounds: calls by command, read events (about one per round
   trip: a pipeline arrives in one read), bytes in, all divided by the tokens generated.

Cores used (client, servers, redis-server, everything else) are read from /proc for each part;
other processes busy during a part are named in the table. The tables are printed and, for a
full run, written to their own section of bench/results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import redis
import websockets
from bedrock_stream import (
    BIN,
    BUSY_WARNING,
    RESULTS,
    cpu_sample,
    fmt,
    free_port,
    idle_check,
    machine_line,
    percentile,
    process_cpu,
    raise_interrupt,
    server_process,
    stop_group,
    write_section,
)
from websocket import boto3_poster, receiver

BEGIN = "<!-- bench/replicas.py: begin -->"
END = "<!-- bench/replicas.py: end -->"
PACE_MS = 20
LENGTH = 2000
CONFIG = f"max_generations_per_caller = 0\n[scripted]\ndelay_ms = {PACE_MS}\nlength = {LENGTH}\n"
FAST_TOKENS = 1000
FAST_CONFIG = f"max_generations_per_caller = 0\n[scripted]\ndelay_ms = 0\nlength = {FAST_TOKENS}\n"
TIMEOUT_S = 15.0
RESUME_WAIT_S = 0.1
RESUME_TAIL = 10
LANES = 5
RECEIVERS = 8
POST_THREADS = (1, 8)
STREAMS = 32
PROMPT = "Tell me about rivers."


@dataclass(frozen=True)
class Scale:
    stops: int  # per side
    resumes: int  # per side
    post_seconds: float
    rounds: int  # part 4, per bus
    tokens: int  # part 4, per stream


FULL = Scale(50, 50, 4.0, 5, FAST_TOKENS)
QUICK = Scale(6, 6, 1.0, 1, 200)


# -- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    name: str
    url: str
    pid: int

    @property
    def ws(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws"


@dataclass(frozen=True)
class Redis:
    url: str
    pid: int
    client: Any  # redis.Redis: INFO only

    def stats(self) -> dict[str, int]:
        """Calls per command (INFO commandstats, without INFO itself), read events, bytes in."""
        out = {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in self.client.info("commandstats").items()
            if k != "cmdstat_info"
        }
        stats = self.client.info("stats")
        out["(reads)"] = int(stats["total_reads_processed"])
        out["(bytes in)"] = int(stats["total_net_input_bytes"])
        return out


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[Redis]:
    folder.mkdir()
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(folder)]  # fmt: skip
    print(f"redis-server on 127.0.0.1:{port} ...", file=sys.stderr, flush=True)
    with (folder / "redis.log").open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield Redis(f"redis://127.0.0.1:{port}/0", proc.pid, client)
        finally:
            client.close()
            stop_group(proc)


@contextlib.contextmanager
def replica(workdir: Path, name: str, config: str, *flags: str) -> Iterator[Replica]:
    port = free_port()
    path = workdir / f"{name}.toml"
    path.write_text(config)
    cmd = [str(BIN / "sluicegate"), "serve", "--port", str(port), "--config", str(path),
           "--route", "*=scripted", "--log-level", "warning", *flags]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    print(f"{name}: sluicegate on {url} {' '.join(flags)}", file=sys.stderr, flush=True)
    with server_process(cmd, f"{url}/readyz", workdir / f"{name}.log") as pid:
        yield Replica(name, url, pid)


def server_errors(workdir: Path) -> list[str]:
    """ERROR lines and tracebacks the replicas logged."""
    found = []
    for log in sorted(workdir.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "ERROR" in line or "Traceback" in line:
                found.append(f"{log.stem}: {line.strip()[:200]}")
    return found


# -- CPU -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    """Cores used over an interval: this process (and its helpers), the servers, redis-server,
    and everything else on the machine."""

    client: float
    servers: float
    redis: float
    other: float
    wall: float

    def __str__(self) -> str:
        return f"{self.client:.2f} / {self.servers:.2f} / {self.redis:.2f} / {self.other:.2f}"


class CpuWatch:
    def __init__(self, servers: list[int], redis_pid: int, helpers: tuple[int, ...] = ()) -> None:
        self.servers, self.redis_pid, self.helpers = servers, redis_pid, helpers
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float, float]:
        base = cpu_sample()
        helpers = sum(process_cpu(str(p)) for p in self.helpers)
        servers = sum(process_cpu(str(p)) for p in self.servers)
        return (
            base.wall,
            base.busy,
            base.client + helpers,
            servers,
            process_cpu(str(self.redis_pid)),
        )

    def stop(self) -> Cores:
        end = self._sample()
        d = [b - a for a, b in zip(self.start, end, strict=True)]
        wall = max(d[0], 1e-9)
        other = max(0.0, d[1] - d[2] - d[3] - d[4])
        return Cores(d[2] / wall, d[3] / wall, d[4] / wall, other / wall, wall)


# -- WebSocket helpers -----------------------------------------------------------------------


def generate(gid: str, max_tokens: int, prompt: str = PROMPT) -> str:
    body = {"action": "generate", "id": gid, "prompt": prompt, "max_tokens": max_tokens}
    return json.dumps(body)


async def next_for(ws: Any, gid: str) -> dict[str, Any]:
    """The next message for generation `gid` (others are ignored)."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            m: dict[str, Any] = json.loads(await ws.recv())
            if m.get("id") == gid:
                return m


async def started(ws: Any, gid: str, max_tokens: int) -> dict[str, Any]:
    await ws.send(generate(gid, max_tokens))
    m = await next_for(ws, gid)
    if m["type"] != "start":
        raise RuntimeError(f"{gid}: expected start, got {m}")
    return m


async def read_deltas(ws: Any, gid: str, n: int) -> list[int]:
    seqs: list[int] = []
    while len(seqs) < n:
        m = await next_for(ws, gid)
        if m["type"] == "delta":
            seqs.append(m["seq"])
        elif m["type"] in ("end", "error"):
            raise RuntimeError(f"{gid}: ended after {len(seqs)} deltas: {m}")
    return seqs


# -- 1. stop latency -------------------------------------------------------------------------


@dataclass
class Stop:
    where: str  # "B" (cross-replica) or "A" (local)
    to_end: float | None = None
    late_deltas: int = 0  # deltas received between the stop and `end`
    past_sent: int = 0  # words A produced beyond the last delta sent
    error: str = ""


async def stop_once(wa: Any, target: Any, where: str, gid: str, after: int, a: Replica) -> Stop:
    out = Stop(where)
    try:
        begun = await started(wa, gid, LENGTH)
        await read_deltas(wa, gid, after)
        stop = {"action": "stop", "id": gid, "resumeToken": begun["resumeToken"]}
        sent = time.perf_counter()
        await target.send(json.dumps(stop))
        while (m := await next_for(wa, gid))["type"] == "delta":
            out.late_deltas += 1
        out.to_end = time.perf_counter() - sent
        if m["type"] != "end" or m["stop_reason"] != "cancelled":
            out.error = f"{gid}: {m}"
            return out
        info = await asyncio.to_thread(describe, a, begun["requestId"])
        out.past_sent = info["produced_tokens"] - m["usage"]["output_tokens"]
        if out.past_sent > 1:
            out.error = f"{gid}: the model went on {out.past_sent} words past the stop"
    except (TimeoutError, RuntimeError, websockets.ConnectionClosed) as exc:
        out.error = f"{gid}: {type(exc).__name__}: {exc}"
    return out


def describe(r: Replica, request_id: str) -> dict[str, Any]:
    response = httpx.get(f"{r.url}/sluicegate/generations/{request_id}", timeout=10)
    response.raise_for_status()
    info: dict[str, Any] = response.json()
    return info


async def stop_part(a: Replica, b: Replica, n: int) -> list[Stop]:
    async with websockets.connect(a.ws) as wa, websockets.connect(b.ws) as wb:
        replies_b: list[str] = []

        async def drain() -> None:  # a stop that worked has no reply: anything here is an error
            with contextlib.suppress(websockets.ConnectionClosed):
                async for m in wb:
                    replies_b.append(str(m))

        reader = asyncio.create_task(drain())
        for where, target in (("B", wb), ("A", wa)):  # warm-up: the paths, Redis connections
            await stop_once(wa, target, where, f"warm-{where}", 3, a)
        stops = []
        for i in range(n):
            for where, target in (("B", wb), ("A", wa)):
                stops.append(await stop_once(wa, target, where, f"s{i}{where}", 3 + i % 5, a))
        reader.cancel()
    if replies_b:
        stops.append(Stop("B", error=f"replies to stops on B: {replies_b[:3]}"))
    return stops


# -- 2. resume latency -----------------------------------------------------------------------


@dataclass
class Resume:
    where: str
    to_first: float | None = None
    worst_gap: float = 0.0  # between deltas after the first one
    deltas: int = 0
    error: str = ""


async def resume_once(a: Replica, target: Replica, gid: str, n: int) -> Resume:
    out = Resume(target.name)
    total = n + RESUME_TAIL
    try:
        wa = await websockets.connect(a.ws)
        begun = await started(wa, gid, total)
        seqs = await read_deltas(wa, gid, n)
        async with websockets.connect(target.ws) as wt:
            await wa.close()  # the drop
            await asyncio.sleep(RESUME_WAIT_S)
            body = {"action": "resume", "id": gid, "after": seqs[-1],
                    "resumeToken": begun["resumeToken"]}  # fmt: skip
            sent = time.perf_counter()
            await wt.send(json.dumps(body))
            last = None
            while (m := await next_for(wt, gid))["type"] == "delta":
                now = time.perf_counter()
                if last is None:
                    out.to_first = now - sent
                else:
                    out.worst_gap = max(out.worst_gap, now - last)
                last = now
                seqs.append(m["seq"])
        out.deltas = len(seqs)
        if seqs != list(range(1, total + 1)):
            missing = sorted(set(range(1, total + 1)) - set(seqs))
            repeated = len(seqs) - len(set(seqs))
            out.error = f"{gid}: missing {missing[:5]}, {repeated} repeated"
        elif m["type"] != "end" or m["stop_reason"] != "max_tokens":
            out.error = f"{gid}: {m}"
    except (TimeoutError, RuntimeError, websockets.ConnectionClosed) as exc:
        out.error = f"{gid}: {type(exc).__name__}: {exc}"
    return out


async def resume_part(a: Replica, b: Replica, n: int) -> list[Resume]:
    await resume_once(a, b, "warm-b", 3)
    await resume_once(a, a, "warm-a", 3)

    async def lane(k: int) -> list[Resume]:
        out = []
        for i in range(k, n, LANES):
            for target in (b, a):
                out.append(await resume_once(a, target, f"r{i}{target.name}", 5 + i % 16))
        return out

    lanes = await asyncio.gather(*(lane(k) for k in range(LANES)))
    return [r for one in lanes for r in one]


# -- 3. @connections -------------------------------------------------------------------------


@dataclass
class Posts:
    target: str
    threads: int
    sent: int
    failed: int
    seconds: float
    delivered: int
    latencies: list[float]
    cores: Cores
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.sent / self.seconds


def post_for(
    url: str, ids: list[str], threads: int, seconds: float
) -> tuple[int, int, float, list[float], str]:
    """Every thread has its own boto3 client and posts round robin for `seconds`."""
    posters = [boto3_poster(url) for _ in range(threads)]
    for post in posters:  # warm connection pools and signing keys (a 410: nothing delivered)
        with contextlib.suppress(Exception):
            post("warmup=")
    counts = [[0, 0] for _ in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    barrier = threading.Barrier(threads + 1)
    deadline = [0.0]

    def work(t: int) -> None:
        barrier.wait()
        i = t
        while (began := time.perf_counter()) < deadline[0]:
            try:
                posters[t](ids[i % len(ids)])
                counts[t][0] += 1
                latencies[t].append(time.perf_counter() - began)
            except Exception as exc:
                counts[t][1] += 1
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            i += threads

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    barrier.wait()
    for w in workers:
        w.join()
    took = time.perf_counter() - began
    flat = [x for one in latencies for x in one]
    return (
        sum(c[0] for c in counts),
        sum(c[1] for c in counts),
        took,
        flat,
        errors[0] if errors else "",
    )


def post_part(a: Replica, b: Replica, c: Replica, r: Redis, seconds: float) -> list[Posts]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=receiver, args=(a.ws, RECEIVERS, child), daemon=True)
    proc.start()
    try:
        ids: list[str] = parent.recv()
        rows = []
        for threads in POST_THREADS:
            for target in (b, a):
                rows.append(post_row(target, threads, ids, seconds, [a, b, c], r, parent, proc))
                p = rows[-1]
                print(f"  posts to {target.name} x{threads}: {p.rate:,.0f}/s", file=sys.stderr)
        parent.send("done")
        proc.join(10)
        return rows
    finally:
        if proc.is_alive():
            proc.kill()


def post_row(
    target: Replica,
    threads: int,
    ids: list[str],
    seconds: float,
    servers: list[Replica],
    r: Redis,
    pipe: Connection,
    proc: Any,
) -> Posts:
    pipe.send("count")
    before: int = pipe.recv()
    watch = CpuWatch([s.pid for s in servers], r.pid, (proc.pid,))
    sent, failed, took, latencies, error = post_for(target.url, ids, threads, seconds)
    cores = watch.stop()
    delivered, deadline = 0, time.monotonic() + 10
    while time.monotonic() < deadline:
        pipe.send("count")
        delivered = pipe.recv() - before
        if delivered >= sent:
            break
        time.sleep(0.1)
    return Posts(target.name, threads, sent, failed, took, delivered, latencies, cores, error)


# -- 4. tokens/s, and 5. Redis commands per token ----------------------------------------------


@dataclass
class Stream:
    start: float
    first: float | None = None
    end: float = 0.0
    deltas: int = 0
    tokens: int = 0
    error: str = ""

    def rate(self) -> float | None:
        if self.first is None or self.deltas < 2 or self.end <= self.first:
            return None
        return (self.deltas - 1) / (self.end - self.first)


@dataclass
class Run:
    bus: str
    streams: list[Stream]
    cores: Cores
    redis_delta: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams if not s.error)

    @property
    def wall(self) -> float:
        return max(s.end for s in self.streams) - min(s.start for s in self.streams)


async def one_stream(ws: Any, gid: str, tokens: int, go: asyncio.Event) -> Stream:
    await go.wait()
    out = Stream(time.perf_counter())
    try:
        await ws.send(generate(gid, tokens))
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            kind = m["type"]
            if kind == "delta":
                out.deltas += 1
                if out.first is None:
                    out.first = time.perf_counter()
                if m["seq"] != out.deltas:
                    out.error = f"{gid}: delta {m['seq']} where {out.deltas} was due"
            elif kind == "end":
                out.tokens = m["usage"]["output_tokens"]
                if out.tokens != tokens or out.deltas != tokens:
                    out.error = out.error or f"{gid}: {out.deltas} deltas, {m}"
                break
            elif kind == "error":
                out.error = f"{gid}: {m}"
                break
    except (TimeoutError, websockets.ConnectionClosed) as exc:
        out.error = f"{gid}: {type(exc).__name__}: {exc}"
    out.end = time.perf_counter()
    return out


async def load(target: Replica, bus: str, tag: str, tokens: int, r: Redis) -> Run:
    """STREAMS connections (opened and registered first), one `generate` on each at once;
    CPU and Redis's figures are read from the send to the last `end` (and its flush)."""
    sockets = [await websockets.connect(target.ws) for _ in range(STREAMS)]
    try:
        await asyncio.sleep(0.2)  # the connections' registrations are written
        go = asyncio.Event()
        tasks = [
            asyncio.create_task(one_stream(ws, f"{tag}-{i}", tokens, go))
            for i, ws in enumerate(sockets)
        ]
        await asyncio.sleep(0.05)
        before = r.stats()
        watch = CpuWatch([target.pid], r.pid)
        go.set()
        streams = await asyncio.gather(*tasks)
        cores = watch.stop()
        await asyncio.sleep(0.1)  # the writer's last pipeline
        after = r.stats()
    finally:
        for ws in sockets:
            await ws.close()
    delta = {key: after[key] - before.get(key, 0) for key in after}
    delta["(reads)"] -= 2  # the reads of the second INFO commandstats and INFO stats
    return Run(bus, streams, cores, delta)


def bus_part(workdir: Path, r: Redis, scale: Scale) -> list[Run]:
    runs = []
    with (
        replica(workdir, "D", FAST_CONFIG, "--bus", r.url) as on_redis,
        replica(workdir, "M", FAST_CONFIG) as on_memory,
    ):
        for target in (on_redis, on_memory):  # warm-up
            asyncio.run(load(target, "warm", f"warm{target.name}", 50, r))
        time.sleep(0.5)
        for k in range(scale.rounds):
            order = (on_redis, on_memory) if k % 2 == 0 else (on_memory, on_redis)
            for target in order:
                bus = "redis" if target is on_redis else "memory"
                runs.append(asyncio.run(load(target, bus, f"t{k}{bus}", scale.tokens, r)))
                progress(runs[-1])
    return runs


def progress(run: Run) -> None:
    failed = sum(bool(s.error) for s in run.streams)
    print(f"  {run.bus} bus: {run.tokens / run.wall:,.0f} tok/s, {failed} failed", file=sys.stderr)


# -- report ----------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"


def spread(values: list[float]) -> str:
    """p50 / p99 / max in ms."""
    return " | ".join(ms(f(values)) for f in (lambda v: percentile(v, 50),
                                                lambda v: percentile(v, 99),
                                                lambda v: max(v, default=None)))  # fmt: skip


def busy_note(cores: list[Cores]) -> str:
    worst = max((c.other for c in cores), default=0.0)
    if worst <= BUSY_WARNING:
        return "no other process was busy"
    return f"**other processes used up to {worst:.2f} cores** during it"


def stop_section(stops: list[Stop], cores: Cores) -> list[str]:
    lines = [
        f"### 1. Stop latency: stop sent -> `end` received on A's socket (a word every "
        f"{PACE_MS} ms, one generation at a time)",
        "",
        "| Stop sent on | Stops (failed) | p50 (ms) | p99 (ms) | max (ms) | Deltas between "
        "stop and end | Words past the last delta |",
        "|---|---|---|---|---|---|---|",
    ]
    for where, label in (("B", "B (another replica, via Redis)"), ("A", "A (local baseline)")):
        mine = [s for s in stops if s.where == where]
        good = [s for s in mine if not s.error]
        to_end = [s.to_end for s in good if s.to_end is not None]
        past = [s.past_sent for s in good]
        lines.append(
            f"| {label} | {len(good)} ({len(mine) - len(good)}) | {spread(to_end)} "
            f"| {sum(s.late_deltas for s in good)} | max {max(past, default=0)} |"
        )
    errors = [s.error for s in stops if s.error]
    lines += ["", f"Cores client / replicas / redis / other: {cores}; {busy_note([cores])}."]
    if errors:
        lines.append(f"Failures: {'; '.join(errors[:3])}.")
    return lines


def resume_section(resumes: list[Resume], cores: Cores) -> list[str]:
    lines = [
        f"### 2. Resume latency: resume sent -> first delta ({LANES} lanes at once; the socket "
        f"on A closed after 5-20 deltas, resume {RESUME_WAIT_S * 1000:.0f} ms later)",
        "",
        "| Resumed on | Resumes (failed) | p50 (ms) | p99 (ms) | max (ms) | Largest gap after, "
        f"p99 (ms; pace {PACE_MS}) | Missing or repeated deltas |",
        "|---|---|---|---|---|---|---|",
    ]
    for where, label in (("B", "B (another replica, via Redis)"), ("A", "A (same replica)")):
        mine = [x for x in resumes if x.where == where]
        good = [x for x in mine if not x.error]
        first = [x.to_first for x in good if x.to_first is not None]
        gaps = [x.worst_gap for x in good]
        broken = sum("missing" in x.error for x in mine)
        lines.append(
            f"| {label} | {len(good)} ({len(mine) - len(good)}) | {spread(first)} "
            f"| {ms(percentile(gaps, 99))} | {broken} of {len(mine)} |"
        )
    errors = [x.error for x in resumes if x.error]
    lines += ["", f"Cores client / replicas / redis / other: {cores}; {busy_note([cores])}."]
    if errors:
        lines.append(f"Failures: {'; '.join(errors[:3])}.")
    return lines


def post_section(rows: list[Posts], seconds: float) -> list[str]:
    lines = [
        f"### 3. @connections: boto3 `post_to_connection` to {RECEIVERS} sockets held by A "
        f"({seconds:g} s per row)",
        "",
        "| Sent to | Threads | Posted (200) | Failed | Messages/s | Post p50 / p99 (ms) "
        "| Delivered | Cores: client / replicas / redis / other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in rows:
        label = "B (crosses Redis)" if p.target == "B" else "A (holds them)"
        lines.append(
            f"| {label} | {p.threads} | {p.sent:,} | {p.failed} | {fmt(p.rate, 0)} "
            f"| {ms(percentile(p.latencies, 50))} / {ms(percentile(p.latencies, 99))} "
            f"| {p.delivered:,} | {p.cores} |"
        )
    errors = [p.first_error for p in rows if p.first_error]
    lines += ["", f"Other processes: {busy_note([p.cores for p in rows])}."]
    if errors:
        lines.append(f"Failures: {'; '.join(errors[:3])}.")
    return lines


def bus_section(runs: list[Run], tokens: int) -> list[str]:
    lines = [
        f"### 4. Tokens/s through the bus ({STREAMS} WebSocket streams of {tokens:,} words at "
        f"once, scripted delay_ms 0; {len(runs) // 2} rounds against each replica, alternating; "
        "medians over rounds)",
        "",
        "| Bus | Tokens (failed streams) | Aggregate tok/s | Per-stream tok/s p50 | Server CPU "
        "ms / 1,000 tokens | redis-server CPU ms / 1,000 tokens | Cores: client / server / "
        "redis / other |",
        "|---|---|---|---|---|---|---|",
    ]
    medians: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for bus in ("memory", "redis"):
        mine = [r for r in runs if r.bus == bus]
        if not mine:
            continue
        aggregate = statistics.median(r.tokens / r.wall for r in mine)
        medians[bus] = aggregate
        per = [x for r in mine for s in r.streams if not s.error and (x := s.rate()) is not None]
        server = statistics.median(r.cores.servers * r.cores.wall / r.tokens * 1e6 for r in mine)
        cpu[bus] = server
        rds = statistics.median(r.cores.redis * r.cores.wall / r.tokens * 1e6 for r in mine)
        failed = sum(bool(s.error) for r in mine for s in r.streams)
        c = mine[len(mine) // 2].cores
        lines.append(
            f"| {bus} | {sum(r.tokens for r in mine):,} ({failed}) | {fmt(aggregate, 0)} "
            f"| {fmt(statistics.median(per) if per else None, 0)} | {server:,.1f} | {rds:,.2f} "
            f"| {c} |"
        )
    if len(medians) == 2:
        rounds = "; ".join(
            f"{bus}: " + ", ".join(f"{r.tokens / r.wall:,.0f}" for r in runs if r.bus == bus)
            for bus in ("memory", "redis")
        )
        speed, spent = medians["redis"] / medians["memory"], cpu["redis"] / cpu["memory"]
        lines += [
            "",
            f"Redis bus against memory bus: aggregate tokens/s x{speed:.2f}, server CPU per "
            f"token x{spent:.2f}. Each round's aggregate "
            f"(tok/s): {rounds}.",
        ]
    errors = [s.error for r in runs for s in r.streams if s.error]
    lines.append(f"Other processes: {busy_note([r.cores for r in runs])}.")
    if errors:
        lines.append(f"Failures: {'; '.join(errors[:3])}.")
    return lines


def redis_section(runs: list[Run]) -> list[str]:
    mine = [r for r in runs if r.bus == "redis"]
    tokens = sum(r.tokens for r in mine)
    if not mine or not tokens:
        return []
    total: dict[str, int] = {}
    for r in mine:
        for k, v in r.redis_delta.items():
            total[k] = total.get(k, 0) + v
    reads, bytes_in = total.pop("(reads)", 0), total.pop("(bytes in)", 0)
    commands = {k: v for k, v in sorted(total.items(), key=lambda kv: -kv[1]) if v > 0}
    calls = sum(commands.values())
    generations = STREAMS * len(mine)
    lines = [
        f"### 5. Redis commands per generated token (part 4's Redis rounds: {tokens:,} tokens, "
        f"{generations} generations)",
        "",
        "| Command | Calls | Per token | Per generation |",
        "|---|---|---|---|",
    ]
    for name, n in commands.items():
        lines.append(f"| {name} | {n:,} | {n / tokens:.4f} | {n / generations:.1f} |")
    lines += [
        f"| **all commands** | {calls:,} | {calls / tokens:.4f} | {calls / generations:.1f} |",
        f"| read events (about one per round trip) | {reads:,} | {reads / tokens:.4f} "
        f"| {reads / generations:.1f} |",
        f"| bytes into Redis | {bytes_in:,} | {bytes_in / tokens:,.1f} "
        f"| {bytes_in / generations:,.0f} |",
        "",
        f"Tokens per XADD (events batched in one log entry): "
        f"{tokens / max(1, commands.get('xadd', 0)):.1f}; tokens per round trip: "
        f"{tokens / max(1, reads):.1f}.",
    ]
    return lines


NOTES = [
    "Replicas A, B, C: `sluicegate serve --bus redis://...` on one redis-server, scripted "
    f"provider (a word every {PACE_MS} ms); everything on 127.0.0.1, the client in this "
    "process (the @connections receivers in a child process), all on the same cores.",
    "Stop: one generation at a time on A, a stop after 3 to 7 deltas, B and A alternately. "
    "A stop on B finds the generation's name and record in Redis, then publishes the stop to A "
    "with its writer's next pipeline (ticks of 10 ms); A cancels on receipt. 'Words past the "
    "last delta' is A's produced_tokens minus the `end`'s output_tokens.",
    "Resume: a resume on B reads the name, the record and the log from Redis and follows the "
    "rest with XREAD; on A it reads A's own log. 'Largest gap after' is the largest time "
    "between two deltas after the first, per resume (the live tail crossing Redis on B).",
    "@connections: each thread its own boto3 client (SigV4 signing on every call); a post to B "
    "looks the socket up in Redis, asks A over pub/sub and waits for A's answer. Delivered is "
    "what the receiving process got (after up to 10 s).",
    "Tokens/s: two fresh replicas D (`--bus`) and M (no bus) with one config, the other three "
    "stopped; 32 connections each send one `generate` at once; a round's aggregate is its "
    "tokens over the time from the first send to the last `end`; per-stream is (deltas - 1) "
    "over the time from the first to the last delta. CPU per 1,000 tokens from /proc "
    "(utime + stime).",
    "Redis commands: D's whole traffic in its rounds (lease renewals included); read events "
    "are Redis's total_reads_processed (a pipeline normally arrives in one read), less the "
    "benchmark's own INFO.",
]


def report(
    machine: str,
    stops: list[Stop],
    stop_cores: Cores,
    resumes: list[Resume],
    resume_cores: Cores,
    posts: list[Posts],
    runs: list[Run],
    scale: Scale,
    logged: list[str],
    quick: bool,
) -> str:
    title = "## Replicas on one Redis (bench/replicas.py" + (", --quick)" if quick else ")")
    lines = [BEGIN, title, "", machine, ""]
    lines += [*stop_section(stops, stop_cores), ""]
    lines += [*resume_section(resumes, resume_cores), ""]
    lines += [*post_section(posts, scale.post_seconds), ""]
    lines += [*bus_section(runs, scale.tokens), ""]
    lines += [*redis_section(runs), ""]
    lines.append(
        f"Server log: {len(logged)} ERROR or Traceback lines"
        + (f" (first: {logged[0]})." if logged else ".")
    )
    lines += ["", "Notes:", "", *[f"- {n}" for n in NOTES], END]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------


def run(workdir: Path, scale: Scale, machine: str, quick: bool) -> str:
    with redis_server(workdir / "redis") as r:
        with (
            replica(workdir, "A", CONFIG, "--bus", r.url) as a,
            replica(workdir, "B", CONFIG, "--bus", r.url) as b,
            replica(workdir, "C", CONFIG, "--bus", r.url) as c,
        ):
            pids = [a.pid, b.pid, c.pid]
            print("1. stop latency ...", file=sys.stderr, flush=True)
            watch = CpuWatch(pids, r.pid)
            stops = asyncio.run(stop_part(a, b, scale.stops))
            stop_cores = watch.stop()
            print("2. resume latency ...", file=sys.stderr, flush=True)
            watch = CpuWatch(pids, r.pid)
            resumes = asyncio.run(resume_part(a, b, scale.resumes))
            resume_cores = watch.stop()
            print("3. @connections ...", file=sys.stderr, flush=True)
            posts = post_part(a, b, c, r, scale.post_seconds)
        print("4. tokens/s, memory and redis bus ...", file=sys.stderr, flush=True)
        runs = bus_part(workdir, r, scale)
    return report(
        machine, stops, stop_cores, resumes, resume_cores, posts, runs, scale,
        server_errors(workdir), quick,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke run")
    parser.add_argument("--output", type=Path, help="results file (default: bench/results.md)")
    args = parser.parse_args(argv)
    output = args.output or (None if args.quick else RESULTS)
    signal.signal(signal.SIGTERM, raise_interrupt)
    busy = idle_check()
    if busy > BUSY_WARNING:
        print(f"warning: {busy:.2f} cores were busy before start", file=sys.stderr)
    machine = machine_line(busy)
    try:
        with tempfile.TemporaryDirectory(prefix="sluicegate-replicas-") as tmp:
            section = run(Path(tmp), QUICK if args.quick else FULL, machine, args.quick)
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(section)
    if output is not None:
        write_section(output, section, BEGIN, END)
        print(f"(section written to {output})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
