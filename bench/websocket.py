"""WebSocket benchmark: stop latency, @connections throughput, idle connections per GB.

Run it with `.venv/bin/python bench/websocket.py` on an otherwise idle machine (about two
minutes). Each part starts its own `sluicegate serve` on a free 127.0.0.1 port:

1. Stop latency (the embedded model): 8 WebSocket connections each keep one long generation
   running (max_tokens 1000); after 8 to 27 deltas a stream sends `stop`, waits for `end`, and
   starts the next one, until 40 stops. Measured from `stop` sent to `end` received, and from
   `stop` sent to the last token the engine decoded for that generation (`produced_tokens` of
   /sluicegate/generations/{requestId}, polled every 5 ms).
2. @connections throughput (scripted provider, no model): 8 receiving connections in a child
   process; senders post 128-byte messages for 5 s with stock boto3 `post_to_connection`
   (SigV4) and with raw httpx (`Authorization: Bearer <api_key>`), 1 and 8 threads.
3. Idle connections: opens N idle connections (default 4000; `ulimit -n` is raised first) and
   reads the server's resident memory (VmRSS) before, halfway and at the end; bytes per
   connection and connections per GiB, with and without permessage-deflate.

The tables are printed and written to their own section of bench/results.md (other sections
are left as they are).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing
import re
import resource
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
    fmt,
    free_port,
    idle_check,
    machine_line,
    percentile,
    process_cpu,
    prompt,
    raise_interrupt,
    server_process,
    write_section,
)
from botocore.config import Config

STREAMS = 8
STOPS = 40
STOP_MAX_TOKENS = 1000
POLL_S = 0.005
SETTLE_S = 0.3
STOP_TIMEOUT_S = 20.0
RECEIVERS = 8
POST_SECONDS = 5.0
POST_THREADS = (1, 8)
PAYLOAD = json.dumps({"type": "note", "text": "x" * 96}).encode()[:128].ljust(128)
API_KEY = "bench-key"
IDLE_CONNECTIONS = 4000
OPEN_BATCH = 250
PIPELINE = 32
RAW_CONNECTIONS = 4
BEGIN = "<!-- bench/websocket.py: begin -->"
END = "<!-- bench/websocket.py: end -->"
GIB = 1024**3


# -- servers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def sluicegate(workdir: Path, name: str, *flags: str) -> Iterator[tuple[str, int]]:
    """`sluicegate serve` with `flags`; yields its base URL and process id."""
    port = free_port()
    config = workdir / f"{name}.toml"
    # Every bench stream comes from one address: no per-caller cap.
    config.write_text(f'api_key = "{API_KEY}"\nmax_generations_per_caller = 0\n')
    cmd = [str(BIN / "sluicegate"), "serve", "--port", str(port), "--config", str(config)]
    cmd += ["--log-level", "warning", *flags]
    url = f"http://127.0.0.1:{port}"
    print(f"{name}: sluicegate on {url} ...", file=sys.stderr, flush=True)
    with server_process(cmd, f"{url}/metrics", workdir / f"{name}.log") as pid:
        yield url, pid


def ws_url(url: str) -> str:
    return url.replace("http", "ws", 1) + "/ws"


# -- 1. stop latency -------------------------------------------------------------------------


@dataclass
class Stop:
    """One stop: times in seconds after `stop` was sent."""

    to_end: float | None = None
    to_last_token: float = 0.0  # 0: no token was decoded after the stop
    decoded_after: int = 0
    stop_reason: str | None = None
    error: str = ""


@dataclass
class StopRun:
    stops: list[Stop]
    late_deltas: int
    cpu: CpuShare


async def stop_latency(url: str, pid: int, streams: int, stops: int) -> StopRun:
    rounds = -(-stops // streams)
    late = [0]
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        async with websockets.connect(ws_url(url)) as ws:  # warm-up: the model, the path
            await generate_and_stop(ws, http, "warm", prompt(99), 4, late)
        before = cpu_sample(pid)
        per_stream = await asyncio.gather(
            *(stop_stream(url, http, i, rounds, late) for i in range(streams))
        )
        cpu = cpu_share(before, cpu_sample(pid))
    found = [s for stream in per_stream for s in stream][:stops]
    return StopRun(found, late[0], cpu)


async def stop_stream(
    url: str, http: httpx.AsyncClient, i: int, rounds: int, late: list[int]
) -> list[Stop]:
    async with websockets.connect(ws_url(url), max_size=None) as ws:
        out = []
        for r in range(rounds):
            after = 8 + (7 * i + 3 * r) % 20  # stops spread over the decode steps
            out.append(await generate_and_stop(ws, http, f"s{i}r{r}", prompt(i), after, late))
        return out


async def generate_and_stop(
    ws: Any, http: httpx.AsyncClient, gid: str, text: str, after: int, late: list[int]
) -> Stop:
    """Generate, read `after` deltas, stop; then time `end` and the engine's last token."""
    out = Stop()
    body = {"action": "generate", "id": gid, "prompt": text, "max_tokens": STOP_MAX_TOKENS}
    await ws.send(json.dumps(body))
    request_id, seen = "", 0
    while seen < after:
        m = await next_message(ws, gid, late)
        request_id = m.get("requestId", request_id)
        seen += m["type"] == "delta"
        if m["type"] in ("end", "error"):
            out.error = f"ended before the stop: {m}"
            return out
    produced = (await describe(http, request_id))["produced_tokens"]
    sent = time.perf_counter()
    await ws.send(json.dumps({"action": "stop", "id": gid}))
    end = asyncio.create_task(wait_end(ws, gid, late))
    out.decoded_after, out.to_last_token = await watch_tokens(http, request_id, produced, sent)
    message, ended = await end
    out.to_end = ended - sent
    out.stop_reason = message.get("stop_reason")
    return out


async def next_message(ws: Any, gid: str, late: list[int]) -> dict[str, Any]:
    """The next message for `gid`; a delta for an earlier id (after its end) is counted."""
    while True:
        m: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), STOP_TIMEOUT_S))
        if m.get("id") == gid:
            return m
        late[0] += m.get("type") == "delta"


async def wait_end(ws: Any, gid: str, late: list[int]) -> tuple[dict[str, Any], float]:
    while True:
        m = await next_message(ws, gid, late)
        if m["type"] in ("end", "error"):
            return m, time.perf_counter()


async def watch_tokens(
    http: httpx.AsyncClient, request_id: str, produced: int, sent: float
) -> tuple[int, float]:
    """Poll until the generation is done and produced_tokens has settled: (tokens decoded
    after the stop, seconds from the stop to the poll that first saw the last of them)."""
    first, last_seen, changed = produced, 0.0, sent
    while (now := time.perf_counter()) - sent < STOP_TIMEOUT_S:
        info = await describe(http, request_id)
        now = time.perf_counter()
        if info["produced_tokens"] != produced:
            produced, changed, last_seen = info["produced_tokens"], now, now - sent
        if info["done"] and now - changed >= SETTLE_S:
            break
        await asyncio.sleep(POLL_S)
    return produced - first, last_seen


async def describe(http: httpx.AsyncClient, request_id: str) -> dict[str, Any]:
    response = await http.get(f"/sluicegate/generations/{request_id}")
    response.raise_for_status()
    info: dict[str, Any] = response.json()
    return info


# -- 2. @connections throughput --------------------------------------------------------------


def receiver(url: str, count: int, pipe: Connection) -> None:
    """Child process: `count` connections; sends their ids, then message totals on request."""
    asyncio.run(receive(url, count, pipe))


async def receive(url: str, count: int, pipe: Connection) -> None:
    total = [0]

    async def drain(ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in ws:
                total[0] += 1

    sockets = [await websockets.connect(url, compression=None) for _ in range(count)]
    ids = []
    for ws in sockets:
        await ws.send('{"action": "whoami"}')
        ids.append(json.loads(await ws.recv())["connectionId"])
    tasks = [asyncio.create_task(drain(ws)) for ws in sockets]
    pipe.send(ids)
    while await asyncio.to_thread(pipe.recv) == "count":
        pipe.send(total[0])
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*tasks)


@dataclass
class PostRow:
    client: str
    threads: int
    sent: int
    failed: int
    seconds: float
    delivered: int
    cpu: CpuShare
    receiver_cores: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds


def boto3_poster(url: str) -> Callable[[str], None]:
    client = boto3.client(
        "apigatewaymanagementapi",
        region_name="us-east-1",
        endpoint_url=f"{url}/ws",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 1}),
    )
    return lambda cid: client.post_to_connection(ConnectionId=cid, Data=PAYLOAD)


def httpx_poster(url: str) -> Callable[[str], None]:
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"})

    def post(cid: str) -> None:
        http.post(f"/ws/@connections/{quote(cid, safe='')}", content=PAYLOAD).raise_for_status()

    return post


def post_for(
    make: Callable[[str], Callable[[str], None]], url: str, ids: list[str], threads: int
) -> tuple[int, int, float]:
    """Every thread posts (round robin over the connections) for POST_SECONDS."""
    posters = [make(url) for _ in range(threads)]
    for post in posters:  # warm connection pools and signing keys (a 410: nothing delivered)
        with contextlib.suppress(Exception):
            post("warmup=")
    counts = [[0, 0] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    deadline = [0.0]

    def work(t: int) -> None:
        start.wait()
        i = t
        while time.perf_counter() < deadline[0]:
            try:
                posters[t](ids[i % len(ids)])
                counts[t][0] += 1
            except Exception:
                counts[t][1] += 1
            i += threads

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    began = time.perf_counter()
    deadline[0] = began + POST_SECONDS
    start.wait()
    for w in workers:
        w.join()
    return sum(c[0] for c in counts), sum(c[1] for c in counts), time.perf_counter() - began


def raw_poster(url: str, ids: list[str], connections: int) -> tuple[int, int, float]:
    """HTTP/1.1 requests written ready-made and pipelined (PIPELINE deep) on a few keep-alive
    connections: what the server can take when the client costs next to nothing."""
    host = url.removeprefix("http://")
    requests = [
        f"POST /ws/@connections/{quote(cid, safe='')} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(PAYLOAD)}\r\n\r\n".encode()
        + PAYLOAD
        for cid in ids
    ]
    window = b"".join(requests[i % len(requests)] for i in range(PIPELINE))

    async def one(deadline: float) -> tuple[int, int]:
        reader, writer = await asyncio.open_connection(*host.split(":"))
        ok = bad = 0
        while time.perf_counter() < deadline:
            writer.write(window)
            answers = bytearray()
            while answers.count(b"HTTP/1.1 ") < PIPELINE:
                answers += await reader.read(65536)
            good = answers.count(b"HTTP/1.1 200 ")
            ok, bad = ok + good, bad + PIPELINE - good
        writer.close()
        return ok, bad

    async def run() -> tuple[int, int, float]:
        began = time.perf_counter()
        done = await asyncio.gather(*(one(began + POST_SECONDS) for _ in range(connections)))
        return sum(d[0] for d in done), sum(d[1] for d in done), time.perf_counter() - began

    return asyncio.run(run())


def post_throughput(url: str, pid: int) -> list[PostRow]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=receiver, args=(ws_url(url), RECEIVERS, child), daemon=True)
    proc.start()
    try:
        ids: list[str] = parent.recv()
        rows = []
        runs: list[tuple[str, int, Callable[[], tuple[int, int, float]]]] = [
            (name, threads, functools.partial(post_for, make, url, ids, threads))
            for name, make in (
                ("boto3 (SigV4)", boto3_poster),
                ("httpx (Bearer key)", httpx_poster),
            )
            for threads in POST_THREADS
        ]
        raw = f"raw HTTP/1.1, pipelined {PIPELINE} deep (Bearer key)"
        runs.append(
            (raw, RAW_CONNECTIONS, functools.partial(raw_poster, url, ids, RAW_CONNECTIONS))
        )
        for name, threads, work in runs:
            rows.append(post_row(name, threads, work, pid, parent, proc.pid))
            print(f"  {name} x{threads}: {rows[-1].rate:,.0f} msg/s", file=sys.stderr)
        parent.send("done")
        proc.join(10)
        return rows
    finally:
        if proc.is_alive():
            proc.kill()


def post_row(
    name: str,
    threads: int,
    work: Callable[[], tuple[int, int, float]],
    pid: int,
    pipe: Connection,
    receiver_pid: int | None,
) -> PostRow:
    pipe.send("count")
    received_before: int = pipe.recv()
    before, rcv_before = cpu_sample(pid), process_cpu(str(receiver_pid))
    sent, failed, seconds = work()
    share = cpu_share(before, cpu_sample(pid))
    receiver_cores = (process_cpu(str(receiver_pid)) - rcv_before) / share.wall
    delivered, deadline = 0, time.monotonic() + 10
    while time.monotonic() < deadline:
        pipe.send("count")
        delivered = pipe.recv() - received_before
        if delivered >= sent:
            break
        time.sleep(0.1)
    # The receiver's CPU is inside `other`: take it out, it is shown on its own.
    share = CpuShare(share.client, share.server, max(0.0, share.other - receiver_cores), share.wall)
    return PostRow(name, threads, sent, failed, seconds, delivered, share, receiver_cores)


# -- 3. idle connections ---------------------------------------------------------------------


@dataclass
class IdleRow:
    compression: str
    connections: int
    rss_base: int
    rss_half: int
    rss_full: int
    responsive: bool
    errors: list[str] = field(default_factory=list)

    @property
    def per_connection(self) -> float:
        return (self.rss_full - self.rss_base) / self.connections

    @property
    def per_connection_marginal(self) -> float:
        return (self.rss_full - self.rss_half) / (self.connections - self.connections // 2)


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(found.group(1)) * 1024 if found else 0


def raise_open_files(wanted: int) -> int:
    """Raise this process's (and so its servers') open-file limit as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, wanted))
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def idle_connections(url: str, pid: int, n: int, compression: str | None) -> IdleRow:
    target = ws_url(url)

    async def open_many(count: int) -> list[Any]:
        opened: list[Any] = []
        for start in range(0, count, OPEN_BATCH):
            batch = min(OPEN_BATCH, count - start)
            opened += await asyncio.gather(
                *(
                    websockets.connect(target, compression=compression, ping_interval=None)
                    for _ in range(batch)
                )
            )
        return opened

    warm = await open_many(100)  # first connections allocate what every later one reuses
    await asyncio.gather(*(ws.close() for ws in warm))
    await asyncio.sleep(1.0)
    base = rss(pid)
    held = await open_many(n // 2)
    await asyncio.sleep(1.0)
    half = rss(pid)
    held += await open_many(n - n // 2)
    await asyncio.sleep(2.0)
    full = rss(pid)
    await held[0].send('{"action": "ping"}')
    responsive = json.loads(await asyncio.wait_for(held[0].recv(), 10)) == {"type": "pong"}
    for start in range(0, len(held), OPEN_BATCH):
        await asyncio.gather(*(ws.close() for ws in held[start : start + OPEN_BATCH]))
    return IdleRow(compression or "none", n, base, half, full, responsive)


# -- report ----------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"


def cores(share: CpuShare) -> str:
    return f"{share.client:.2f} / {share.server:.2f} / {share.other:.2f}"


def stop_section(run: StopRun, streams: int) -> list[str]:
    good = [s for s in run.stops if not s.error]
    to_end = [s.to_end for s in good if s.to_end is not None]
    to_token = [s.to_last_token for s in good]
    to_late_token = [s.to_last_token for s in good if s.decoded_after > 0]
    reasons = sorted({str(s.stop_reason) for s in good})
    with_token = sum(s.decoded_after > 0 for s in good)
    return [
        f"### Stop latency, {streams} streams running (embedded model, max_tokens "
        f"{STOP_MAX_TOKENS})",
        "",
        "| Measure | Stops | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
        f"| stop sent -> `end` received | {len(to_end)} | {ms(percentile(to_end, 50))} "
        f"| {ms(percentile(to_end, 99))} | {ms(max(to_end, default=None))} |",
        f"| stop sent -> last token decoded | {len(to_token)} "
        f"| {ms(percentile(to_token, 50))} | {ms(percentile(to_token, 99))} "
        f"| {ms(max(to_token, default=None))} |",
        f"| the same, stops after which a token was decoded | {len(to_late_token)} "
        f"| {ms(percentile(to_late_token, 50))} | {ms(percentile(to_late_token, 99))} "
        f"| {ms(max(to_late_token, default=None))} |",
        "",
        f"Tokens decoded after the stop: {sum(s.decoded_after for s in good)} in all, "
        f"{with_token} of {len(good)} stops decoded one or more (at most "
        f"{max((s.decoded_after for s in good), default=0)}); deltas received after an `end`: "
        f"{run.late_deltas}; stop_reason: {', '.join(reasons)}; failed stops: "
        f"{len(run.stops) - len(good)}{failures(run)}. Cores client / server / other: "
        f"{cores(run.cpu)}.",
    ]


def failures(run: StopRun) -> str:
    errors = [s.error for s in run.stops if s.error]
    return f" ({errors[0]})" if errors else ""


def post_section(rows: list[PostRow]) -> list[str]:
    lines = [
        f"### @connections: messages/s one process pushes ({len(PAYLOAD)}-byte messages, "
        f"{RECEIVERS} receiving connections, {POST_SECONDS:.0f} s per row, scripted server)",
        "",
        "| Client | Threads (raw: connections) | Posted (200) | Failed | Messages/s | Delivered | "
        "Cores: sender / server / other | Receiver cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.client} | {r.threads} | {r.sent:,} | {r.failed} | {fmt(r.rate, 0)} "
            f"| {r.delivered:,} | {cores(r.cpu)} | {r.receiver_cores:.2f} |"
        )
    return lines


def idle_section(rows: list[IdleRow], limit: int) -> list[str]:
    lines = [
        "### Idle connections held (server resident memory, VmRSS)",
        "",
        "| Compression | Connections | RSS before (MB) | RSS after (MB) | Bytes/connection "
        "(all) | Bytes/connection (second half) | Connections per GiB | Still answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = max(r.per_connection, r.per_connection_marginal)
        lines.append(
            f"| {r.compression} | {r.connections:,} | {r.rss_base / 1e6:,.1f} "
            f"| {r.rss_full / 1e6:,.1f} | {r.per_connection:,.0f} "
            f"| {r.per_connection_marginal:,.0f} | {GIB / per:,.0f} "
            f"| {'yes' if r.responsive else 'no'} |"
        )
    lines += ["", f"Open-file limit during the run: {limit:,}."]
    return lines


NOTES = [
    "Stop latency: each stream reads 8 to 27 deltas, reads produced_tokens, sends `stop` and "
    "starts its next generation once `end` has come, so about 8 generations run throughout. "
    "`end` is timed by the client; the last token decoded is the first 5 ms poll of "
    "/sluicegate/generations/{requestId} that shows the final produced_tokens (0 when no "
    "token was decoded after the stop), so it is an upper bound by one poll and one GET; "
    "percentiles are nearest-rank over all stops.",
    "@connections: every thread has its own client (keep-alive connections), posts round robin "
    "to the receiving connections and counts 200s; Delivered is what the receiving process got "
    "(after up to 10 s). Senders, server and receiver share the 2 cores: 'sender' near 1.0 "
    "with the server below it means the client (boto3's request building and SigV4 signing, "
    "or httpx) is the limit, not the server.",
    "Idle connections: opened by the `websockets` client without keep-alive pings, in batches "
    f"of {OPEN_BATCH}, after 100 warm-up connections were opened and closed; per GiB uses the "
    "larger of the two per-connection figures. uvicorn's own 20 s keep-alive pings run on the "
    "server side. The server keeps every connection's reader and writer tasks and its "
    "websockets protocol object; permessage-deflate adds a zlib compressor per connection.",
]


def report(
    machine: str, stop: StopRun | None, posts: list[PostRow], idle: list[IdleRow], limit: int
) -> str:
    lines = [BEGIN, "## WebSocket API (bench/websocket.py)", "", machine, ""]
    if stop is not None:
        lines += [*stop_section(stop, STREAMS), ""]
    if posts:
        lines += [*post_section(posts), ""]
    if idle:
        lines += [*idle_section(idle, limit), ""]
    lines += ["Notes:", "", *[f"- {n}" for n in NOTES], END]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--parts", default="stop,post,idle", help="which parts to run")
    parser.add_argument("--stops", type=int, default=STOPS)
    parser.add_argument("--idle", type=int, default=IDLE_CONNECTIONS, help="idle connections")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    signal.signal(signal.SIGTERM, raise_interrupt)
    limit = raise_open_files(args.idle + 1000)
    busy = idle_check()
    if busy > BUSY_WARNING:
        print(f"warning: {busy:.2f} cores were busy before start", file=sys.stderr)
    machine = machine_line(busy)
    stop, posts, idle = None, [], []
    try:
        with tempfile.TemporaryDirectory(prefix="sluicegate-wsbench-") as tmp:
            work = Path(tmp)
            if "stop" in parts:
                with sluicegate(work, "stop", "--route", "*=local") as (url, pid):
                    stop = asyncio.run(stop_latency(url, pid, STREAMS, args.stops))
            if "post" in parts:
                with sluicegate(work, "post", "--route", "*=scripted") as (url, pid):
                    posts = post_throughput(url, pid)
            if "idle" in parts:
                for compression in ("deflate", None):
                    with sluicegate(work, "idle", "--route", "*=scripted") as (url, pid):
                        idle.append(asyncio.run(idle_connections(url, pid, args.idle, compression)))
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    section = report(machine, stop, posts, idle, limit)
    print(section)
    write_section(args.output, section, BEGIN, END)
    print(f"(section written to {args.output})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
