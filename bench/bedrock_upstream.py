"""The `bedrock` provider's way of calling Bedrock against aiobotocore's, side by side in one run.

    .venv/bin/python bench/bedrock_upstream.py            # the full run: writes bench/results.md
    .venv/bin/python bench/bedrock_upstream.py --quick    # a few hundred events each: a smoke run

One zero-delay Bedrock upstream on this machine (bench/mock_bedrock.py: 64 text events per
answer, ConverseStream and InvokeModelWithResponseStream), and two clients of it, each in a
process of its own, for each API:

- ours: sluicegate's BedrockProvider (botocore's SigV4 signer, sluicegate's sans-IO event stream
  decoder over its pooled aiohttp client), read as the gateway reads it: `provider.stream()`, its
  canonical events;
- aiobotocore: `converse_stream` / `invoke_model_with_response_stream` on an aiobotocore client
  (botocore's parsers over aiohttp), each `chunk` JSON-decoded as an application must. It is
  installed on first use into bench/.venv-aiobotocore, a venv of its own (not a project
  dependency).

Per client and API: text events/s at c=1 (sequential) and c=32; the client process's CPU seconds
per 1,000 events (utime + stime, all threads); the first text event's latency p50/p99. Rounds
alternate the clients (ours, aiobotocore, ours, ...): events/s is the median of the rounds'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-aiobotocore"
BEGIN = "<!-- bench/bedrock_upstream.py: begin -->"
END = "<!-- bench/bedrock_upstream.py: end -->"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
PROMPT = "Say hello."
EVENTS = 64  # text events per answer (bench/mock_bedrock.py)
CONCURRENCY = 32
FULL = {"rounds": 3, "warm": 16, "c1": 100, "c32": 320}
QUICK = {"rounds": 1, "warm": 1, "c1": 2, "c32": 4}
CLIENTS = ("ours", "aiobotocore")
APIS = ("converse", "invoke")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "bench-secret"}

# One request: (seconds to its first text event or None, text events).
One = Callable[[], Awaitable[tuple[float | None, int]]]


# -- the workers (one process per client, API and round) ---------------------------------------


async def ours(url: str, api: str) -> tuple[One, Callable[[], Awaitable[None]]]:
    from sluicegate.config import UpstreamSettings
    from sluicegate.events import ChatRequest, Message, TextDelta
    from sluicegate.generation import Meter
    from sluicegate.providers.bedrock import BedrockProvider

    settings = UpstreamSettings.model_validate(
        {"type": "bedrock", "endpoint_url": url, "region": "us-east-1", "api": api,
         "max_concurrency": 64, "max_queue": 4096}
    )  # fmt: skip
    provider = BedrockProvider("bench", settings)
    request = ChatRequest(model=MODEL, messages=(Message("user", PROMPT),), max_tokens=EVENTS)

    async def one() -> tuple[float | None, int]:
        started, first, n = time.perf_counter(), None, 0
        stream = provider.stream(request, Meter())
        async with contextlib.aclosing(stream):
            async for event in stream:
                if isinstance(event, TextDelta):
                    n += 1
                    first = first or time.perf_counter() - started
        return first, n

    return one, provider.aclose


async def aiobotocore(url: str, api: str) -> tuple[One, Callable[[], Awaitable[None]]]:
    from aiobotocore.config import AioConfig  # type: ignore[import-not-found]
    from aiobotocore.session import get_session  # type: ignore[import-not-found]

    config = AioConfig(max_pool_connections=64, retries={"max_attempts": 1})
    made = get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=url, config=config
    )
    client = await made.__aenter__()
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": EVENTS,
                       "messages": [{"role": "user", "content": PROMPT}]})  # fmt: skip

    async def converse() -> tuple[float | None, int]:
        started, first, n = time.perf_counter(), None, 0
        response = await client.converse_stream(
            modelId=MODEL,
            messages=[{"role": "user", "content": [{"text": PROMPT}]}],
            inferenceConfig={"maxTokens": EVENTS},
        )
        async for event in response["stream"]:
            if "contentBlockDelta" in event:
                n += 1
                first = first or time.perf_counter() - started
        return first, n

    async def invoke() -> tuple[float | None, int]:
        started, first, n = time.perf_counter(), None, 0
        response = await client.invoke_model_with_response_stream(modelId=MODEL, body=body)
        async for event in response["body"]:
            if json.loads(event["chunk"]["bytes"])["type"] == "content_block_delta":
                n += 1
                first = first or time.perf_counter() - started
        return first, n

    async def close() -> None:
        await made.__aexit__(None, None, None)

    return (converse if api == "converse" else invoke), close


async def phase(one: One, concurrency: int, requests: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)

    async def limited() -> tuple[float | None, int]:
        async with gate:
            return await one()

    cpu, started = time.process_time(), time.perf_counter()
    got = await asyncio.gather(*[limited() for _ in range(requests)])
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "events": sum(n for _, n in got),
        "short": sum(n != EVENTS for _, n in got),  # answers that lost events
        "wall": wall,
        "cpu": cpu,
        "firsts": [f for f, _ in got if f is not None],
    }


async def work(client: str, url: str, api: str, sizes: dict[str, int]) -> dict[str, Any]:
    one, close = await (ours if client == "ours" else aiobotocore)(url, api)
    try:
        for _ in range(sizes["warm"]):  # connections, imports, first-request paths
            await one()
        c1 = await phase(one, 1, sizes["c1"])
        c32 = await phase(one, CONCURRENCY, sizes["c32"])
    finally:
        await close()
    return {"c1": c1, "c32": c32, "versions": versions(client)}


def versions(client: str) -> str:
    from importlib.metadata import version

    names = ("aiohttp", "botocore") if client == "ours" else ("aiobotocore", "aiohttp", "botocore")
    return ", ".join(f"{n} {version(n)}" for n in names)


# -- the run -----------------------------------------------------------------------------------


def bench_venv() -> Path:
    """aiobotocore's venv, made on first use; its python."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print("installing aiobotocore into bench/.venv-aiobotocore ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "aiobotocore"], check=True)
    return python


def worker(python: Path, client: str, api: str, url: str, sizes: dict[str, int]) -> dict[str, Any]:
    cmd = [str(python), __file__, "--worker", client, "--api", api, "--url", url,
           "--sizes", json.dumps(sizes)]  # fmt: skip
    env = {**os.environ, **CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{client} {api} failed: {done.stderr.strip()[-2000:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(runs: list[dict[str, Any]], key: str) -> dict[str, str]:
    parts = [r[key] for r in runs]
    events = sum(p["events"] for p in parts)
    firsts = [f for p in parts for f in p["firsts"]]
    p50, p99 = percentile(firsts, 50), percentile(firsts, 99)
    return {
        "rate": f"{statistics.median(p['events'] / p['wall'] for p in parts):,.0f}",
        "cpu": f"{sum(p['cpu'] for p in parts) / max(events, 1) * 1000:.3f}",
        "first": f"{(p50 or 0) * 1000:.2f} / {(p99 or 0) * 1000:.2f}",
        "short": str(sum(p["short"] for p in parts)),
    }


def run(quick: bool) -> str:
    sys.path.insert(0, str(HERE))
    from bedrock_stream import (
        BIN,
        RESULTS,
        free_port,
        idle_check,
        machine_line,
        server_process,
        write_section,
    )

    sizes = QUICK if quick else FULL
    machine = machine_line(idle_check(0.5 if quick else 2.0))
    pythons = {"ours": BIN / "python", "aiobotocore": bench_venv()}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="sluicegate-bedrock-upstream-") as tmp:
        port = free_port()
        cmd = [str(BIN / "python"), str(HERE / "mock_bedrock.py"), str(port)]
        url = f"http://127.0.0.1:{port}"
        with server_process(cmd, url + "/ready", Path(tmp) / "mock.log"):
            for r in range(sizes["rounds"]):
                for api in APIS:
                    for client in CLIENTS:
                        print(f"round {r + 1}: {client} {api} ...", file=sys.stderr, flush=True)
                        got = worker(pythons[client], client, api, url, sizes)
                        runs.setdefault((client, api), []).append(got)
    section = report(machine, runs, sizes)
    if not quick:
        write_section(RESULTS, section, BEGIN, END)
    return section


def report(machine: str, runs: dict[tuple[str, str], list[dict[str, Any]]], sizes: Any) -> str:
    lines = [BEGIN, "## The bedrock provider against aiobotocore (bench/bedrock_upstream.py)", ""]
    lines += [machine, ""]
    lines += [
        "| client | API | c=1 events/s | c=32 events/s | client CPU s per 1,000 events, "
        "c=1 / c=32 | first event p50 / p99 (ms), c=1 | c=32 | answers short of events |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (client, api), found in runs.items():
        a, b = summary(found, "c1"), summary(found, "c32")
        lines.append(
            f"| {client} | {api} | {a['rate']} | {b['rate']} | {a['cpu']} / {b['cpu']} | "
            f"{a['first']} | {b['first']} | {int(a['short']) + int(b['short'])} |"
        )
    lines += ["", f"{sizes['rounds']} rounds; each: {sizes['warm']} warm-up requests, then "
              f"{sizes['c1']} sequential and {sizes['c32']} at most {CONCURRENCY} at a time, "
              f"{EVENTS} text events each. The upstream is bench/mock_bedrock.py; each client "
              "runs in a process of its own, on the same cores as the upstream."]  # fmt: skip
    used = {found[0]["versions"] for found in runs.values()}
    lines += ["", "Client libraries: " + "; ".join(sorted(used)) + "."]
    return "\n".join([*lines, END]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred events: a smoke run")
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--api", choices=APIS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        found = asyncio.run(work(args.worker, args.url, args.api, json.loads(args.sizes)))
        print(json.dumps(found))
        return
    print(run(args.quick))


if __name__ == "__main__":
    main()
