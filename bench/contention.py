"""A shared CPU: the embedded engine's speed with one busy process beside the server, in one run.

    .venv/bin/python bench/contention.py [--rounds 2]

For each engine setting, a `sluicegate serve` of its own: tokens/s of 1 stream and of 8
concurrent streams (boto3 InvokeModelWithResponseStream, 48 tokens each, temperature 0.7),
first on the idle machine, then with a Python busy-loop beside the server. Settings, alternated
`--rounds` times so that drift hits them alike: `adaptive` (the default: one thread while a
step at full width stalls, see providers/llamacpp.Threads), `fixed` (always n_threads = 2, as
before), `1 thread` (always one). Target: with the busy process, at least 40% of the idle
figure (a fair share is 50%), and the idle figure within 5% of `fixed`. Run it on an otherwise
idle machine. The table goes into bench/results.md (its own section).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from bedrock_stream import (
    BIN,
    RESULTS,
    free_port,
    idle_check,
    machine_line,
    server_process,
    write_section,
)
from botocore.config import Config

BEGIN = "<!-- bench/contention.py: begin -->"
END = "<!-- bench/contention.py: end -->"
PROMPT = "Write a short story about a lighthouse."
BODY = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 48, "temperature": 0.7,
                   "messages": [{"role": "user", "content": PROMPT}]})  # fmt: skip
SETTINGS = {
    "adaptive": "",
    "fixed": "[engine]\nadaptive_threads = false\n",
    "1 thread": "[engine]\nn_threads = 1\n",
}
HOG = "import time\nend = time.time() + 600\nwhile time.time() < end: pass"


def one(client: Any) -> int:
    resp = client.invoke_model_with_response_stream(modelId="m", body=BODY)
    tokens = 0
    for event in resp["body"]:
        chunk = json.loads(event["chunk"]["bytes"])
        if chunk["type"] == "message_delta":
            tokens = chunk["usage"]["output_tokens"]
    return tokens


def rate(client: Any, streams: int) -> float:
    started = time.monotonic()
    with ThreadPoolExecutor(streams) as pool:
        tokens = sum(pool.map(lambda _: one(client), range(streams)))
    return tokens / (time.monotonic() - started)


def measure(name: str, workdir: Path) -> tuple[float, float, float, float]:
    """(1 stream, 8 streams) tokens/s idle, then with the busy process."""
    port = free_port()
    config = workdir / f"{name.replace(' ', '_')}.toml"
    config.write_text(SETTINGS[name])
    cmd = [str(BIN / "sluicegate"), "serve", "--port", str(port), "--config", str(config),
           "--log-level", "warning"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, f"{url}/readyz", workdir / "server.log"):
        client = boto3.client(
            "bedrock-runtime", region_name="us-east-1", endpoint_url=url,
            aws_access_key_id="x", aws_secret_access_key="y",
            config=Config(read_timeout=600, retries={"max_attempts": 1}),
        )  # fmt: skip
        one(client)  # warm
        idle = (rate(client, 1), rate(client, 8))
        hog = subprocess.Popen([sys.executable, "-c", HOG])
        try:
            time.sleep(0.5)
            shared = (rate(client, 1), rate(client, 8))
        finally:
            hog.kill()
            hog.wait()
    return (*idle, *shared)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    busy = idle_check()
    machine = machine_line(busy)
    results: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="sg-contention-") as folder:
        for _ in range(args.rounds):
            for name in SETTINGS:
                print(f"{name} ...", file=sys.stderr, flush=True)
                results[name].append(measure(name, Path(folder)))
    lines = [BEGIN, "## A shared CPU (bench/contention.py)", "", machine, ""]
    lines += ["| engine threads | 1 stream idle | with a busy process | ratio | 8 streams idle | "
              "with a busy process | ratio |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, runs in results.items():
        a, b, c, d = (statistics.median(r[i] for r in runs) for i in range(4))
        lines.append(f"| {name} | {a:.1f} tok/s | {c:.1f} tok/s | {c / a:.2f}x | {b:.1f} tok/s |"
                     f" {d:.1f} tok/s | {d / b:.2f}x |")  # fmt: skip
    lines += ["", f"Medians of {args.rounds} rounds, settings alternated; 48 tokens per stream; "
              "the busy process is one Python busy-loop (one core's worth).", END]  # fmt: skip
    section = "\n".join(lines) + "\n"
    print(section)
    write_section(RESULTS, section, BEGIN, END)


if __name__ == "__main__":
    main()
