"""Streaming benchmark: sluicegate's Bedrock door, driven by real boto3 clients.

Run it with `make bench` (that is `.venv/bin/python bench/bedrock_stream.py`) on an otherwise
idle machine; it takes a few minutes. `--peer` adds llama-cpp-python's own OpenAI-compatible
server on the same GGUF file for comparison (it needs the server extras:
`.venv/bin/pip install 'llama-cpp-python[server]==0.3.36'`).

What it does, one server at a time:

1. Starts `sluicegate serve` (routes `scripted*` -> scripted provider at zero delay, 128 words;
   `*` -> the embedded SmolLM2-135M model) on a free 127.0.0.1 port, waits for /metrics.
2. Embedded model through `invoke_model_with_response_stream`: 1 stream (3 runs, median),
   8 and 32 concurrent streams, each scenario after a warm-up request. Streams start together
   (a barrier), one boto3 client per stream.
3. Gateway overhead: the scripted provider at 1 and 32 streams (content_block_delta events/s).
4. Stop latency: 4 long streams, each closed by the client after ~20 deltas; how many tokens
   the engine still decoded and how long until the generation was done.
5. With `--peer`: the same prompts at 1 and 8 streams against `python -m llama_cpp.server`.

The tables are printed and written to bench/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import boto3
import httpx
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
RESULTS = ROOT / "bench" / "results.md"

LOCAL_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
SCRIPTED_MODEL = "scripted-bench"
MAX_TOKENS = 128
WARMUP_TOKENS = 16
SINGLE_RUNS = 3
STOP_STREAMS = 4
STOP_MAX_TOKENS = 1000
STOP_AFTER_DELTAS = 20
POLL_S = 0.005
SETTLE_S = 0.3
STOP_TIMEOUT_S = 15.0
START_TIMEOUT_S = 180.0
# Every bench stream comes from one address: no per-caller cap.
SERVER_CONFIG = "max_generations_per_caller = 0\n[scripted]\ndelay_ms = 0\nlength = 128\n"
NAMES = (
    "Ada", "Bram", "Cora", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kaia",
    "Luca", "Mira", "Nils", "Oona", "Pavel", "Quinn", "Rosa", "Sami", "Tove", "Uma", "Viktor",
    "Wren", "Xena", "Yusuf", "Zoe", "Anouk", "Basil", "Cyra", "Dario", "Esme", "Finn",
)  # fmt: skip
T = TypeVar("T")
CLK_TCK = os.sysconf("SC_CLK_TCK")
BUSY_WARNING = 0.1  # cores used by other processes during a measurement
MIN_CPU_WALL_S = 0.5
STOP_OK = {"end_turn", "max_tokens", "stop_sequence", "stop", "length"}


# -- results ---------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """One stream as the client saw it; times are perf_counter seconds."""

    start: float
    end: float = 0.0
    first: float | None = None
    tokens: int = 0
    deltas: int = 0
    stop_reason: str | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.stop_reason in STOP_OK

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    def rate(self, count: int) -> float | None:
        """Units per second after the first one arrived (the streaming rate a reader sees)."""
        if self.first is None or count < 2 or self.end <= self.first:
            return None
        return (count - 1) / (self.end - self.first)


@dataclass
class Row:
    """One line of the throughput table."""

    target: str
    streams: str
    unit: str
    ok: int
    failed: int
    aggregate: float | None
    per_stream: float | None
    ttft_p50: float | None
    ttft_p99: float | None
    ttft_max: float | None
    units_total: int
    failures: list[str] = field(default_factory=list)
    cpu: CpuShare | None = None


@dataclass
class StopResult:
    """One stream of the stop-latency test."""

    request_id: str = ""
    deltas_at_close: int = 0
    produced_at_close: int | None = None
    produced_final: int | None = None
    close_to_done_ms: float | None = None
    steps_close_to_done: int | None = None
    # When the last token after the close was first seen (None: no token after the close).
    close_to_last_token_ms: float | None = None
    steps_close_to_last_token: int | None = None
    stop_reason: str | None = None
    error: str = ""

    @property
    def decoded_after_close(self) -> int | None:
        if self.produced_final is None or self.produced_at_close is None:
            return None
        return self.produced_final - self.produced_at_close


@dataclass
class StopReport:
    streams: list[StopResult]
    engine_before: dict[str, float] | None
    engine_after: dict[str, float] | None
    cpu: CpuShare


# -- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least p% of values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(
    target: str, streams: str, unit: str, runs: list[list[StreamResult]], use_deltas: bool
) -> Row:
    """Aggregate rate per run (median over runs), per-stream rate median and TTFT percentiles."""
    results = [r for run in runs for r in run]
    good = [r for r in results if r.ok]
    count = count_deltas if use_deltas else count_tokens
    aggregates = [a for run in runs if (a := aggregate_rate(run, count)) is not None]
    rates = [x for r in good if (x := r.rate(count(r))) is not None]
    ttfts = [t for r in good if (t := r.ttft) is not None]
    return Row(
        target=target,
        streams=streams,
        unit=unit,
        ok=len(good),
        failed=len(results) - len(good),
        aggregate=median(aggregates),
        per_stream=median(rates),
        ttft_p50=percentile(ttfts, 50),
        ttft_p99=percentile(ttfts, 99),
        ttft_max=max(ttfts, default=None),
        units_total=sum(count(r) for r in good),
        failures=[r.error or f"stop_reason={r.stop_reason}" for r in results if not r.ok],
    )


def count_deltas(r: StreamResult) -> int:
    return r.deltas


def count_tokens(r: StreamResult) -> int:
    return r.tokens


def aggregate_rate(run: list[StreamResult], count: Callable[[StreamResult], int]) -> float | None:
    """Units received by the successful streams over the wall time of the whole run."""
    if not run:
        return None
    wall = max(r.end for r in run) - min(r.start for r in run)
    return sum(count(r) for r in run if r.ok) / wall if wall > 0 else None


# -- CPU accounting --------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far: all CPUs (busy), this process, the server process; and wall time."""

    wall: float
    busy: float
    client: float
    server: float


@dataclass(frozen=True)
class CpuShare:
    """CPU used over an interval, in cores (1.0 = one core busy the whole time)."""

    client: float
    server: float
    other: float  # everything else on the machine: should be ~0 for trustworthy figures
    wall: float

    @property
    def measurable(self) -> bool:
        """/proc counts in 10 ms ticks: shorter intervals give meaningless shares."""
        return self.wall >= MIN_CPU_WALL_S


def cpu_sample(server_pid: int | None = None) -> CpuSample:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return CpuSample(
        wall=time.perf_counter(),
        busy=(user + nice + system + irq + softirq + steal) / CLK_TCK,
        client=process_cpu("self"),
        server=0.0 if server_pid is None else process_cpu(str(server_pid)),
    )


def process_cpu(pid: str) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = stat.rpartition(")")[2].split()  # fields from 3 (state) on
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def cpu_share(a: CpuSample, b: CpuSample) -> CpuShare:
    wall = max(b.wall - a.wall, 1e-9)
    client, server = b.client - a.client, b.server - a.server
    other = max(0.0, b.busy - a.busy - client - server)
    return CpuShare(client / wall, server / wall, other / wall, wall)


def idle_check(seconds: float = 2.0) -> float:
    """Cores busy on the whole machine over a short sample, before anything starts."""
    before = cpu_sample()
    time.sleep(seconds)
    share = cpu_share(before, cpu_sample())
    return share.client + share.other


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def server_process(cmd: list[str], probe_url: str, log_path: Path) -> Iterator[int]:
    """Run a server in its own process group until the block ends (also on errors/Ctrl-C)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until_up(proc, probe_url, log_path)
            yield proc.pid
        finally:
            stop_group(proc)


def wait_until_up(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url} in {START_TIMEOUT_S:.0f}s:\n{tail(log_path)}")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def sluicegate_cmd(port: int, config: Path) -> list[str]:
    return [
        str(BIN / "sluicegate"), "serve", "--host", "127.0.0.1", "--port", str(port),
        "--config", str(config), "--route", "scripted*=scripted", "--route", "*=local",
        "--log-level", "warning",
    ]  # fmt: skip


def peer_cmd(port: int, model: Path) -> list[str]:
    return [
        str(BIN / "python"), "-m", "llama_cpp.server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--n_threads", "2",
        "--interrupt_requests", "false",
    ]  # fmt: skip


# -- running streams together ------------------------------------------------------------------


def run_together(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run fn(0..n-1) on n threads released at the same moment by a barrier."""
    barrier = threading.Barrier(n)

    def worker(i: int) -> T:
        barrier.wait(timeout=120)
        return fn(i)

    pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="stream")
    try:
        return [f.result() for f in [pool.submit(worker, i) for i in range(n)]]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def prompt(i: int) -> str:
    """Stream i's prompt: the same long-answer request, a different keeper's name."""
    name = NAMES[i % len(NAMES)] + ("" if i < len(NAMES) else f" the {i // len(NAMES) + 1}th")
    return f"Write a long story about a lighthouse keeper named {name}."


WARMUP_PROMPT = "Write a long story about a lighthouse keeper named Morgan."


@dataclass
class Measured:
    runs: list[list[StreamResult]]
    warmup: StreamResult
    cpu: CpuShare


def measure(
    stream: Callable[[int], StreamResult],
    n: int,
    runs: int,
    warmup: Callable[[], StreamResult],
    server_pid: int,
) -> Measured:
    """A warm-up request, then `runs` rounds of n concurrent streams."""
    warm = warmup()
    before = cpu_sample(server_pid)
    results = [run_together(n, stream) for _ in range(runs)]
    return Measured(results, warm, cpu_share(before, cpu_sample(server_pid)))


def to_row(target: str, n: int, unit: str, measured: Measured, use_deltas: bool) -> Row:
    runs = len(measured.runs)
    label = f"{n} (median of {runs} runs)" if runs > 1 else str(n)
    row = summarize(target, label, unit, measured.runs, use_deltas)
    row.cpu = measured.cpu
    warm = measured.warmup
    if not warm.ok:
        row.failures.append(f"warm-up: {warm.error or f'stop_reason={warm.stop_reason}'}")
    progress(row)
    return row


# -- boto3 (Bedrock) -------------------------------------------------------------------------


def bedrock_clients(url: str, n: int) -> list[Any]:
    """One bedrock-runtime client per concurrent stream (created up front, sequentially)."""
    session = boto3.session.Session(
        aws_access_key_id="AKIDBENCHMARK", aws_secret_access_key="bench", region_name="us-east-1"
    )
    config = Config(read_timeout=300, retries={"max_attempts": 1}, max_pool_connections=64)
    return [session.client("bedrock-runtime", endpoint_url=url, config=config) for _ in range(n)]


def anthropic_body(text: str, max_tokens: int) -> str:
    return json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "messages": [{"role": "user", "content": text}],
        }
    )


def bedrock_stream(client: Any, model: str, text: str, max_tokens: int) -> StreamResult:
    """One InvokeModelWithResponseStream call, read to the end."""
    result = StreamResult(start=time.perf_counter())
    try:
        response = client.invoke_model_with_response_stream(
            modelId=model, body=anthropic_body(text, max_tokens)
        )
        for event in response["body"]:
            on_chunk(result, json.loads(event["chunk"]["bytes"]))
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    result.end = time.perf_counter()
    return result


def on_chunk(result: StreamResult, chunk: dict[str, Any]) -> None:
    kind = chunk.get("type")
    if kind == "content_block_delta":
        result.deltas += 1
        if result.first is None:
            result.first = time.perf_counter()
    elif kind == "message_delta":
        result.tokens = int(chunk["usage"]["output_tokens"])
        result.stop_reason = chunk["delta"]["stop_reason"]


# (row label, model id, unit, count deltas rather than output tokens?, streams, runs)
SCENARIOS = [
    ("sluicegate, embedded model", LOCAL_MODEL, "tok/s", False, 1, SINGLE_RUNS),
    ("sluicegate, embedded model", LOCAL_MODEL, "tok/s", False, 8, 1),
    ("sluicegate, embedded model", LOCAL_MODEL, "tok/s", False, 32, 1),
    # A scripted run takes milliseconds: more rounds steady the figures.
    ("sluicegate, scripted (0 ms)", SCRIPTED_MODEL, "events/s", True, 1, SINGLE_RUNS),
    ("sluicegate, scripted (0 ms)", SCRIPTED_MODEL, "events/s", True, 32, 5),
]


def bedrock_scenarios(url: str, server_pid: int) -> list[Row]:
    clients = bedrock_clients(url, max(s[4] for s in SCENARIOS))
    rows = []
    for target, model, unit, use_deltas, n, runs in SCENARIOS:

        def stream(i: int, model: str = model) -> StreamResult:
            return bedrock_stream(clients[i], model, prompt(i), MAX_TOKENS)

        def warmup(model: str = model) -> StreamResult:
            return bedrock_stream(clients[0], model, WARMUP_PROMPT, WARMUP_TOKENS)

        measured = measure(stream, n, runs, warmup, server_pid)
        rows.append(to_row(target, n, unit, measured, use_deltas))
    return rows


def progress(row: Row) -> None:
    print(
        f"  {row.target} x{row.streams}: {fmt(row.aggregate)} {row.unit} aggregate, "
        f"TTFT p50 {fmt_ms(row.ttft_p50)} ms, {row.failed} failed",
        file=sys.stderr,
        flush=True,
    )


# -- stop latency ----------------------------------------------------------------------------


def stop_latency(url: str, server_pid: int) -> StopReport:
    clients = bedrock_clients(url, STOP_STREAMS)
    with httpx.Client(base_url=url, timeout=10) as http:
        bedrock_stream(clients[0], LOCAL_MODEL, WARMUP_PROMPT, WARMUP_TOKENS)
        before, cpu_before = engine_figures(http), cpu_sample(server_pid)
        streams = run_together(STOP_STREAMS, lambda i: stop_one(clients[i], http, prompt(i)))
        cpu = cpu_share(cpu_before, cpu_sample(server_pid))
        after = engine_figures(http)
    return StopReport(streams, before, after, cpu)


def stop_one(client: Any, http: httpx.Client, text: str) -> StopResult:
    """Read ~20 deltas of a long stream, close it, then watch the generation wind down."""
    out = StopResult()
    try:
        response = client.invoke_model_with_response_stream(
            modelId=LOCAL_MODEL, body=anthropic_body(text, STOP_MAX_TOKENS)
        )
        out.request_id = response["ResponseMetadata"]["RequestId"]
        out.deltas_at_close = read_deltas(response["body"], STOP_AFTER_DELTAS)
        # Read just before the close, steps first: both differences are upper bounds.
        steps_at_close = engine_steps(http)
        out.produced_at_close = generation(http, out.request_id)["produced_tokens"]
        # EventStream.close() closes urllib3's response and its connection: the socket is shut
        # and the server sees the disconnect (checked: stop_reason comes back `disconnected`).
        response["body"].close()
        closed_at = time.perf_counter()
        watch_until_settled(http, out, closed_at, steps_at_close)
    except Exception as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    return out


def read_deltas(body: Any, wanted: int) -> int:
    seen = 0
    for event in body:
        if json.loads(event["chunk"]["bytes"]).get("type") == "content_block_delta":
            seen += 1
            if seen >= wanted:
                break
    return seen


def watch_until_settled(
    http: httpx.Client, out: StopResult, closed_at: float, steps_at_close: int | None
) -> None:
    """Poll the generation until it is done and produced_tokens has not moved for a while."""
    changed_at, produced = closed_at, out.produced_at_close
    while time.perf_counter() - closed_at < STOP_TIMEOUT_S:
        info = generation(http, out.request_id)
        now = time.perf_counter()
        if info["done"] and out.close_to_done_ms is None:
            out.close_to_done_ms = (now - closed_at) * 1000
            out.stop_reason = info["stop_reason"]
            out.steps_close_to_done = steps_since(http, steps_at_close)
        if info["produced_tokens"] != produced:
            produced, changed_at = info["produced_tokens"], now
            out.close_to_last_token_ms = (now - closed_at) * 1000
            out.steps_close_to_last_token = steps_since(http, steps_at_close)
        if out.close_to_done_ms is not None and now - changed_at >= SETTLE_S:
            break
        time.sleep(POLL_S)
    else:
        out.error = f"not settled {STOP_TIMEOUT_S:.0f}s after close"
    out.produced_final = produced


def steps_since(http: httpx.Client, steps_before: int | None) -> int | None:
    steps = engine_steps(http)
    return None if steps is None or steps_before is None else steps - steps_before


def generation(http: httpx.Client, request_id: str) -> dict[str, Any]:
    response = http.get(f"/sluicegate/generations/{request_id}")
    response.raise_for_status()
    info: dict[str, Any] = response.json()
    return info


def engine_figures(http: httpx.Client) -> dict[str, float] | None:
    response = http.get("/sluicegate/engine")
    if response.status_code != 200:
        return None
    figures: dict[str, float] = response.json()
    return figures


def engine_steps(http: httpx.Client) -> int | None:
    figures = engine_figures(http)
    return None if figures is None else int(figures["steps_total"])


# -- the peer: llama-cpp-python's OpenAI server ----------------------------------------------


def peer_missing() -> list[str]:
    import importlib.util

    wanted = ("fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
    return [m for m in wanted if importlib.util.find_spec(m) is None]


def openai_stream(http: httpx.Client, text: str, max_tokens: int) -> StreamResult:
    """One streamed chat completion; each chunk with non-empty delta content counts as a token."""
    result = StreamResult(start=time.perf_counter())
    payload = {
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
    }
    try:
        with http.stream("POST", "/v1/chat/completions", json=payload) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    on_openai_chunk(result, json.loads(line[6:]))
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    result.end = time.perf_counter()
    result.deltas = result.tokens
    return result


def on_openai_chunk(result: StreamResult, chunk: dict[str, Any]) -> None:
    choice = chunk["choices"][0]
    if choice["delta"].get("content"):
        result.tokens += 1
        if result.first is None:
            result.first = time.perf_counter()
    if choice.get("finish_reason"):
        result.stop_reason = choice["finish_reason"]


def peer_scenarios(url: str, server_pid: int) -> list[Row]:
    rows = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with httpx.Client(base_url=url, timeout=httpx.Timeout(300, connect=10), limits=limits) as http:
        for n in (1, 8):
            runs = SINGLE_RUNS if n == 1 else 1
            measured = measure(
                lambda i: openai_stream(http, prompt(i), MAX_TOKENS),
                n,
                runs,
                lambda: openai_stream(http, WARMUP_PROMPT, WARMUP_TOKENS),
                server_pid,
            )
            rows.append(to_row("llama-cpp-python server", n, "tok/s", measured, False))
    return rows


def run_peer(workdir: Path) -> list[Row] | str:
    """The peer's rows, or why it was skipped."""
    missing = peer_missing()
    if missing:
        return (
            f"peer skipped: {', '.join(missing)} missing; install with "
            f"`{BIN / 'pip'} install 'llama-cpp-python[server]==0.3.36'`"
        )
    from sluicegate.providers.local import embedded_model_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"llama-cpp-python server on {url} ...", file=sys.stderr, flush=True)
    cmd = peer_cmd(port, embedded_model_path())
    with server_process(cmd, f"{url}/v1/models", workdir / "peer.log") as pid:
        return peer_scenarios(url, pid)


# -- report ----------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def machine_line(busy: float) -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Machine: {os.cpu_count()} CPUs (nproc), {model}; Python {platform.python_version()}; "
        f"{now}; load average at start {load}; cores busy just before start {busy:.2f}"
    )


def throughput_table(rows: list[Row]) -> list[str]:
    lines = [
        "| Target | Streams | OK / failed | Aggregate | Per-stream p50 | TTFT p50 (ms) "
        "| TTFT p99 (ms) | TTFT max (ms) | Units received | Cores: client / server / other |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.target} | {r.streams} | {r.ok} / {r.failed} | {fmt(r.aggregate)} {r.unit} "
            f"| {fmt(r.per_stream)} {r.unit} | {fmt_ms(r.ttft_p50)} | {fmt_ms(r.ttft_p99)} "
            f"| {fmt_ms(r.ttft_max)} | {r.units_total:,} | {cores(r.cpu)} |"
        )
    return lines


def stop_table(report: StopReport) -> list[str]:
    lines = [
        "| Stream | Deltas read | produced_tokens at close | produced_tokens final "
        "| Decoded after close | Close -> done (ms) | Engine steps close -> done "
        "| Close -> last token seen (ms) | Engine steps close -> last token | stop_reason |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(report.streams, 1):
        lines.append(
            f"| {i} | {s.deltas_at_close} | {opt(s.produced_at_close)} | {opt(s.produced_final)} "
            f"| {opt(s.decoded_after_close)} | {fmt(s.close_to_done_ms)} "
            f"| {opt(s.steps_close_to_done)} | {fmt(s.close_to_last_token_ms)} "
            f"| {opt(s.steps_close_to_last_token)} | {s.stop_reason or s.error or '-'} |"
        )
    return lines


def cores(share: CpuShare | None) -> str:
    if share is None:
        return "-"
    if not share.measurable:
        return f"- (run too short: {share.wall * 1000:.0f} ms)"
    return f"{share.client:.2f} / {share.server:.2f} / {share.other:.2f}"


def opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def engine_delta_line(report: StopReport) -> str:
    before, after = report.engine_before, report.engine_after
    if before is None or after is None:
        return "Engine counters: not available."
    keys = ("steps_total", "decoded_tokens_total", "cancelled_sequences_total")
    parts = [f"{k} +{after[k] - before[k]:g}" for k in keys]
    idle = f"running {after['running_sequences']:g}, KV cells used {after['kv_cells_used']:g}"
    return (
        f"Engine counters over the whole stop test: {', '.join(parts)}; afterwards {idle}. "
        f"Cores client / server / other during it: {cores(report.cpu)}."
    )


NOTES = [
    "Aggregate = units received by successful streams / wall time of the run (first request "
    "sent to last stream ended). Per-stream = (units - 1) / (last byte - first delta), the "
    "rate a reader sees once text flows. TTFT = request sent -> first content delta parsed "
    "by the client. 1-stream rows: median of 3 sequential runs; their TTFT percentiles are "
    "over those 3 samples. Percentiles are nearest-rank.",
    "sluicegate tokens = output_tokens of message_delta; scripted events = content_block_delta "
    "events (one word each); llama-cpp-python tokens = SSE chunks with non-empty "
    "delta.content (it sends one per token).",
    "Clients are Python threads (boto3 / httpx) on the same 2 cores as the server, so "
    "client-side parsing competes with the server for CPU, most visibly in the scripted rows. "
    "Cores = CPU seconds per wall second during the runs (1.00 = one core) used by the "
    "benchmark process, the server process and everything else (from /proc); 'other' well "
    "above 0 means another program was competing and the row is not trustworthy (not shown "
    f"for runs under {MIN_CPU_WALL_S:g} s: /proc counts 10 ms ticks).",
    "Stop test: engine steps_total, then produced_tokens (/sluicegate/generations/<id>), are "
    "read just before the client closes, so tokens and steps after close are upper bounds; "
    "the client closes with boto3's response['body'].close(), which closes the urllib3 "
    "connection (the server reports stop_reason disconnected). Times after the close are "
    f"measured by polling every {POLL_S * 1000:g} ms (resolution: one poll plus one GET). "
    "done is the gateway's generation state; the engine may still finish the decode step in "
    "flight, which is the last token column ('-': no token after the close).",
]


PEER_NOTE = (
    "llama-cpp-python server runs with --interrupt_requests false (otherwise each new request "
    "cuts the running stream short); it serves one request at a time."
)


def suspect(share: CpuShare) -> bool:
    return share.measurable and share.other > BUSY_WARNING


def report(rows: list[Row], stop: StopReport | None, peer_note: str, machine: str) -> str:
    lines = ["# sluicegate streaming benchmark", "", machine, ""]
    lines += ["## Throughput and time to first token", "", *throughput_table(rows), ""]
    failures = [f"{r.target} x{r.streams}: {f}" for r in rows for f in r.failures]
    if failures:
        lines += ["Failures:", "", *[f"- {f}" for f in failures], ""]
    busy = [f"{r.target} x{r.streams}" for r in rows if r.cpu and suspect(r.cpu)]
    if busy:
        lines += [f"**Warning: other programs used the CPU during: {'; '.join(busy)}.**", ""]
    if stop is not None:
        lines += [
            f"## Stop latency ({STOP_STREAMS} streams, max_tokens {STOP_MAX_TOKENS}, "
            f"client closes after {STOP_AFTER_DELTAS} deltas)",
            "",
            *stop_table(stop),
            "",
            engine_delta_line(stop),
            "",
        ]
    peer_ran = any(r.target.startswith("llama-cpp") for r in rows)
    notes = [*NOTES, *([PEER_NOTE] if peer_ran else []), *([peer_note] if peer_note else [])]
    lines += ["## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------


def run_sluicegate(
    workdir: Path, extra: Sequence[str] = (), engine: str = ""
) -> tuple[list[Row], StopReport]:
    config = workdir / "sluicegate.toml"
    config.write_text(SERVER_CONFIG + (f"[engine]\n{engine}\n" if engine else ""))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"sluicegate on {url} ...", file=sys.stderr, flush=True)
    cmd = [*sluicegate_cmd(port, config), *extra]
    with server_process(cmd, f"{url}/metrics", workdir / "server.log") as pid:
        rows = bedrock_scenarios(url, pid)
        print("  stop latency ...", file=sys.stderr, flush=True)
        stop = stop_latency(url, pid)
    return rows, stop


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace one script's section of the results file (between its begin and end marks),
    or append it; keep the rest."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        text = head + section.rstrip("\n") + rest.partition(end)[2]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text)


def other_sections(path: Path) -> str:
    """Sections other benchmarks keep in the same file (marked `<!-- bench/NAME: begin -->`)."""
    old = path.read_text() if path.exists() else ""
    start = old.find("<!-- bench/")
    return "\n" + old[start:] if start >= 0 else ""


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # a server that would not start
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1


def run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peer", action="store_true", help="also run llama-cpp-python's server")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the table")
    parser.add_argument("--weights", help="for `sluicegate serve --weights`: auto, q8_0 or file")
    parser.add_argument("--engine", default="", help="[engine] settings, e.g. 'kv = \"unified\"'")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    busy = idle_check()
    machine = machine_line(busy)
    if busy > BUSY_WARNING:
        print(f"warning: {busy:.2f} cores were busy before start", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-") as tmp:
        extra = ["--weights", args.weights] if args.weights else []
        rows, stop = run_sluicegate(Path(tmp), extra, args.engine)
        peer_note = ""
        if args.peer:
            peer = run_peer(Path(tmp))
            if isinstance(peer, str):
                print(peer, file=sys.stderr)
                peer_note = peer
            else:
                rows += peer
    text = report(rows, stop, peer_note, machine)
    print(text)
    args.output.write_text(text + other_sections(args.output))
    print(f"(written to {args.output})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
