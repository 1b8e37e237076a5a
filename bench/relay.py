"""What sluicegate adds in front of an upstream, side by side with LiteLLM's proxy, in one run.

    .venv/bin/python bench/relay.py

One zero-delay mock OpenAI upstream (bench/mock_openai.py: 64 chunks per answer) on this machine;
the same load straight to it, through `sluicegate serve` (an `openai` provider in front of it),
through LiteLLM's proxy (installed on first use into bench/.venv-litellm, a venv of its own),
and through bench/floor_relay.py: the least a Python relay can do (uvloop, asyncio streams,
each event parsed and written again; no limits, errors or cancel), this machine's ceiling for
any gateway written in Python.
Each server runs alone (one process each, 127.0.0.1). The client is a raw asyncio HTTP/1.1 client
(one connection per request, Connection: close), the same for every target:

- c=1: sequential requests in interleaved rounds (direct, sluicegate, LiteLLM, direct, ...);
  the time to the last chunk, and what each gateway adds to the direct figure: the median of
  round medians (stable on a shared machine) and the p99 over all requests;
- c=32: first-chunk p50/p99 and content chunks/s;
- paced lane: 64 chunks 20 ms apart, N concurrent streams; the worst gap between two chunks
  beyond the pace, at growing N, and the largest N with no added gap over 50 ms;
- server CPU seconds per 1,000 chunks (the gateway's process, utime + stime).

The table goes into bench/results.md (its own section).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bedrock_stream import (
    BIN,
    RESULTS,
    free_port,
    idle_check,
    machine_line,
    percentile,
    process_cpu,
    server_process,
    write_section,
)

HERE = Path(__file__).resolve().parent
LITELLM_VENV = HERE / ".venv-litellm"
BEGIN = "<!-- bench/relay.py: begin -->"
END = "<!-- bench/relay.py: end -->"
ROUNDS, PER_ROUND = 10, 20
CONCURRENT, CONCURRENT_REQUESTS = 32, 320
PACED_STEPS = (100, 250, 500, 1000)
PACE_MS, GAP_LIMIT_MS = 20.0, 50.0
CONTENT = re.compile(rb'"content": ?"[^"]')
KEY = "sk-bench-0123456789abcdef"  # LiteLLM's master key; the others accept any


@dataclass
class Sample:
    first: float = 0.0  # seconds from sending to the first content chunk
    total: float = 0.0  # to the end of the body
    chunks: int = 0
    worst_gap: float = 0.0
    ok: bool = False


@dataclass
class Target:
    name: str
    port: int
    path: str
    pid: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)


def request(port: int, path: str, model: str) -> bytes:
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello."}],
        }
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {KEY}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


async def one(target: Target, model: str) -> Sample:
    """One streamed request: when content chunks arrive (by their bytes: no JSON parsing)."""
    sample = Sample()
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    started = time.perf_counter()
    try:
        writer.write(request(target.port, target.path, model))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return sample
        last = None
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = time.perf_counter()
            found = len(CONTENT.findall(data))
            if found:
                sample.chunks += found
                if last is None:
                    sample.first = now - started
                else:
                    sample.worst_gap = max(sample.worst_gap, now - last)
                last = now
        sample.total = time.perf_counter() - started
        sample.ok = sample.chunks == 64
    finally:
        writer.close()
    return sample


async def sequential(targets: list[Target]) -> None:
    for _ in range(ROUNDS):
        for t in targets:
            got = [await one(t, "mock") for _ in range(PER_ROUND)]
            t.samples.setdefault("c1", []).extend(got)
            t.samples.setdefault("c1-rounds", []).append(
                Sample(
                    first=statistics.median(s.first for s in got),
                    total=statistics.median(s.total for s in got),
                )
            )


async def concurrent(target: Target, n: int, total: int, model: str, key: str) -> float:
    """Run `total` requests `n` at a time; the wall time."""
    gate = asyncio.Semaphore(n)

    async def limited() -> Sample:
        async with gate:
            return await one(target, model)

    started = time.perf_counter()
    target.samples[key] = await asyncio.gather(*[limited() for _ in range(total)])
    return time.perf_counter() - started


# -- servers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def mock(workdir: Path) -> Iterator[Target]:
    port = free_port()
    cmd = [str(BIN / "python"), str(HERE / "mock_openai.py"), str(port)]
    with server_process(cmd, f"http://127.0.0.1:{port}/v1/models", workdir / "mock.log") as pid:
        yield Target("upstream, direct", port, "/v1/chat/completions", pid)


@contextlib.contextmanager
def floor(workdir: Path, upstream: int) -> Iterator[Target]:
    port = free_port()
    cmd = [str(BIN / "python"), str(HERE / "floor_relay.py"), str(port), str(upstream)]
    with server_process(cmd, f"http://127.0.0.1:{port}/v1/models", workdir / "floor.log") as pid:
        yield Target("minimal Python relay (floor_relay.py)", port, "/v1/chat/completions", pid)


@contextlib.contextmanager
def sluicegate(workdir: Path, upstream: int) -> Iterator[Target]:
    port = free_port()
    config = workdir / "relay.toml"
    config.write_text(
        "max_generations_per_caller = 0\n"  # every bench stream comes from one address
        f'[providers.mock]\ntype = "openai"\nbase_url = "http://127.0.0.1:{upstream}/v1"\n'
        "max_concurrency = 2048\nmax_queue = 4096\n"
        '[[routes]]\nmatch = "*"\nprovider = "mock"\n'
    )
    cmd = [str(BIN / "sluicegate"), "serve", "--port", str(port), "--config", str(config)]
    cmd += ["--log-level", "warning"]
    with server_process(cmd, f"http://127.0.0.1:{port}/readyz", workdir / "sg.log") as pid:
        yield Target("sluicegate", port, "/v1/chat/completions", pid)


def litellm_ready() -> str | None:
    """Install LiteLLM's proxy into its own venv on first use; None, or why it is missing."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return None
    print("installing litellm[proxy] into bench/.venv-litellm ...", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", str(LITELLM_VENV)],
        [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            return f"LiteLLM could not be installed: {done.stderr.strip()[-300:]}"
    return None


@contextlib.contextmanager
def litellm(workdir: Path, upstream: int) -> Iterator[Target]:
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: mock\n    litellm_params:\n      model: openai/mock\n"
        f"      api_base: http://127.0.0.1:{upstream}/v1\n      api_key: bench\n"
        "  - model_name: paced\n    litellm_params:\n      model: openai/paced\n"
        f"      api_base: http://127.0.0.1:{upstream}/v1\n      api_key: bench\n"
        f"general_settings:\n  master_key: {KEY}\n"
    )
    cmd = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--num_workers", "1"]
    probe = f"http://127.0.0.1:{port}/health/liveliness"
    with server_process(cmd, probe, workdir / "litellm.log") as pid:
        yield Target("LiteLLM proxy", port, "/v1/chat/completions", pid)


# -- measuring ---------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def measure(target: Target) -> dict[str, str]:
    """c=32 and the server CPU it took; then the paced lane."""
    before = process_cpu(str(target.pid))
    wall = asyncio.run(concurrent(target, CONCURRENT, CONCURRENT_REQUESTS, "mock", "c32"))
    cpu = process_cpu(str(target.pid)) - before
    got = target.samples["c32"]
    chunks = sum(s.chunks for s in got)
    firsts = [s.first for s in got if s.ok]
    row = {
        "c32_ok": f"{sum(s.ok for s in got)} / {len(got)}",
        "c32_first": f"{ms(percentile(firsts, 50))} / {ms(percentile(firsts, 99))}",
        "c32_rate": f"{chunks / wall:,.0f}",
        "cpu": f"{cpu / max(chunks, 1) * 1e6:,.1f}",  # ms per 1,000 chunks (10 ms ticks)
    }
    passed, worst = 0, ""
    for n in PACED_STEPS:
        asyncio.run(concurrent(target, n, n, "paced", f"paced{n}"))
        samples = target.samples[f"paced{n}"]
        gap = max((s.worst_gap for s in samples), default=0.0) * 1000 - PACE_MS
        failed = sum(not s.ok for s in samples)
        worst += f"{n}: {gap:+.0f} ms{f' ({failed} failed)' if failed else ''}; "
        if gap > GAP_LIMIT_MS or failed:
            break
        passed = n
    row["paced"] = f"{passed or '< ' + str(PACED_STEPS[0])} ({worst.rstrip('; ')})"
    return row


def c1_rows(targets: list[Target]) -> dict[str, dict[str, str]]:
    """Each target's c=1 figures, and what it adds to the direct ones (first and last chunk)."""
    direct = targets[0]
    rows = {}
    for t in targets:
        row = {}
        for part in ("first", "total"):
            rounds = [getattr(s, part) for s in t.samples["c1-rounds"]]
            base = [getattr(s, part) for s in direct.samples["c1-rounds"]]
            every = [getattr(s, part) for s in t.samples["c1"]]
            base_every = [getattr(s, part) for s in direct.samples["c1"]]
            added = statistics.median(a - b for a, b in zip(rounds, base, strict=True))
            p99 = (percentile(every, 99) or 0) - (percentile(base_every, 99) or 0)
            row[part] = ms(statistics.median(rounds))
            row[f"added_{part}"] = "-" if t is direct else f"{ms(added)} / {ms(p99)}"
        rows[t.name] = row
    return rows


def main() -> None:
    machine = machine_line(idle_check())
    missing = litellm_ready()
    with tempfile.TemporaryDirectory(prefix="sluicegate-relay-") as tmp:
        workdir = Path(tmp)
        with contextlib.ExitStack() as stack:
            upstream = stack.enter_context(mock(workdir))
            targets = [upstream, stack.enter_context(sluicegate(workdir, upstream.port))]
            if missing is None:
                targets.append(stack.enter_context(litellm(workdir, upstream.port)))
            targets.append(stack.enter_context(floor(workdir, upstream.port)))
            for t in targets:  # warm-up: connections, imports, first-request paths
                asyncio.run(concurrent(t, 4, 8, "mock", "warm"))
            print("c=1 rounds ...", file=sys.stderr, flush=True)
            asyncio.run(sequential(targets))
            rows = c1_rows(targets)
            for t in targets:
                print(f"{t.name}: c=32 and paced ...", file=sys.stderr, flush=True)
                rows[t.name].update(measure(t))
    section = report(machine, targets, rows, missing)
    print(section)
    write_section(RESULTS, section, BEGIN, END)


def report(
    machine: str, targets: list[Target], rows: dict[str, dict[str, str]], missing: str | None
) -> str:
    lines = [
        BEGIN,
        "## Relay: sluicegate in front of an upstream (bench/relay.py)",
        "",
        machine,
        "",
    ]
    lines += [
        "| target | c=1 first / last chunk, median (ms) | added at c=1 to the first chunk: "
        "median of rounds / p99 (ms) | added to the last chunk (ms) | c=32 OK | c=32 first "
        "chunk p50 / p99 (ms) | c=32 chunks/s | server CPU ms per 1,000 chunks | paced lane: "
        "streams with no added gap over 50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        r = rows[t.name]
        lines.append(
            f"| {t.name} | {r['first']} / {r['total']} | {r['added_first']} | "
            f"{r['added_total']} | {r['c32_ok']} | {r['c32_first']} | {r['c32_rate']} | "
            f"{r['cpu']} | {r['paced']} |"
        )
    lines += ["", f"c=1: {ROUNDS} interleaved rounds of {PER_ROUND} requests per target."]
    lines += [f"c=32: {CONCURRENT_REQUESTS} requests, 32 at a time. Paced: {PACED_STEPS}."]
    lines += ["The client runs on the same 2 cores as the servers: at high N it is part of"]
    lines += ["the limit, the same for every target."]
    if missing:
        lines += ["", f"LiteLLM: {missing}"]
    return "\n".join([*lines, END]) + "\n"


if __name__ == "__main__":
    main()
