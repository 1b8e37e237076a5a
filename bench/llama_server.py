"""sluicegate's embedded engine beside llama.cpp's own C++ `llama-server`, in one run.

    .venv/bin/python bench/llama_server.py [--levels 1,8,32] [--rounds 2] [--alternations 2]
                                           [--prompt default|code]

llama-server is built here, once, in a bench-only step: from the llama.cpp that the pinned
llama-cpp-python source distribution vendors (the very version the engine runs), target
`llama-server` only, native CPU kernels, no web UI, nothing downloaded but that sdist from PyPI.
It lands in bench/.venv-llama-server/ (ignored by git) and is reused.

Then, one server at a time on an otherwise idle machine, in alternations (the systems in turn,
then in the reverse order: this machine drifts by 15-40% within the hour, and each system is
measured both early and late; a level's figures pool the rounds of every alternation), the
same client code
(`sluicegate.bench`, the measuring code of `sluicegate bench URL`) drives:

1. `sluicegate serve` (the embedded SmolLM2-135M: Q8_0 batches, the shipped Q4_1 for a lone
   stream) through its OpenAI door and its Bedrock door;
2. `llama-server -np 32 --cont-batching` on the Q8_0 copy sluicegate batches on;
3. `llama-server -np 8` on the shipped Q4_1 file (levels up to 8).

Every request: the same prompt (`--prompt code`: a code edit, whose answer repeats much of
its prompt), `max_tokens` 128, the same sampling (temperature 0.2, top_p 0.9,
the embedded model's card defaults), and `ignore_eos` for llama-server is NOT set: both stop where
the model stops, and tokens/s counts the tokens each server reports. The table goes to stdout and
bench/results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

from sluicegate import bench
from sluicegate.providers.local import embedded_model_path, q8_0_weights

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
BUILD = ROOT / "bench" / ".venv-llama-server"
PIN = "0.3.36"  # llama-cpp-python, as pyproject.toml pins it
RESULTS = ROOT / "bench" / "results.md"
SAMPLING = {"top_p": 0.9}
TEMPERATURE = 0.2
MAX_TOKENS = 128
CODE = """def merge_intervals(intervals):
    \"\"\"Merge overlapping [start, end] intervals.\"\"\"
    intervals = sorted(intervals, key=lambda x: x[0])
    merged = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
"""
# --prompt: the usual question, or a code edit, whose answer repeats much of its prompt (what
# prompt lookup is for).
PROMPTS = {
    "default": bench.PROMPT,
    "code": f"Rename the function to join_ranges and return the code:\n\n```python\n{CODE}```",
}
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would fetch the web UI from Hugging Face
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
]


def llama_server() -> Path:
    """The llama-server binary, built from the pinned sdist's vendored llama.cpp the first time."""
    exe = BUILD / "build" / "bin" / "llama-server"
    if exe.exists():
        return exe
    BUILD.mkdir(parents=True, exist_ok=True)
    sdist = BUILD / f"llama_cpp_python-{PIN}.tar.gz"
    if not sdist.exists():
        print(f"downloading the llama-cpp-python {PIN} sdist from PyPI", flush=True)
        subprocess.run(
            [str(BIN / "pip"), "download", "-q", "--no-deps", "--no-binary", ":all:",
             "-d", str(BUILD), f"llama-cpp-python=={PIN}"],
            check=True,
        )  # fmt: skip
    source = BUILD / f"llama_cpp_python-{PIN}" / "vendor" / "llama.cpp"
    if not source.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(BUILD, filter="data")
    print("building llama-server (about 5-10 minutes on 2 cores, once)", flush=True)
    started = time.monotonic()
    subprocess.run(["cmake", "-S", str(source), "-B", str(BUILD / "build"), *CMAKE_FLAGS],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    subprocess.run(
        ["cmake", "--build", str(BUILD / "build"), "--target", "llama-server",
         "-j", str(os.cpu_count() or 2)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    print(f"built {exe} in {time.monotonic() - started:.0f} s", flush=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url} exited with {proc.returncode}: {log.read_text()[-1500:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    sys.exit(f"{url} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def running(cmd: Sequence[str], ready: str, workdir: Path) -> Iterator[None]:
    log = workdir / f"{Path(cmd[0]).name}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        wait_ready(ready, proc, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        time.sleep(1.0)  # the next server gets quiet cores


def measure(target: bench.Target, levels: Sequence[int], rounds: int) -> list[bench.Level]:
    print(f"  {target.name}: levels {','.join(map(str, levels))}", flush=True)
    found = asyncio.run(bench.measure(target, levels, rounds, warmup=2))
    for level in found:
        print("   ", " | ".join(bench.row(target.name, level)), flush=True)
    return found


def sluicegate_rows(
    levels: Sequence[int], rounds: int, workdir: Path, prompt: str
) -> list[tuple[str, list[bench.Level]]]:
    port = free_port()
    config = workdir / "sluicegate.toml"
    config.write_text("max_generations_per_caller = 0\n")
    cmd = [str(BIN / "sluicegate"), "serve", "--host", "127.0.0.1", "--port", str(port),
           "--config", str(config)]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    rows = []
    with running(cmd, base + "/readyz", workdir):
        for door, label in (
            ("openai", "sluicegate, OpenAI door"),
            ("bedrock", "sluicegate, Bedrock door"),
        ):
            target = bench.Target(
                base, bench.door_named(door), "anthropic.claude-3-haiku-20240307-v1:0",
                prompt=prompt, max_tokens=MAX_TOKENS, temperature=TEMPERATURE,
                extra=dict(SAMPLING), label=label,
            )  # fmt: skip
            rows.append((label, measure(target, levels, rounds)))
    return rows


def peer_rows(
    exe: Path,
    weights: Path,
    parallel: int,
    levels: Sequence[int],
    rounds: int,
    workdir: Path,
    label: str,
    prompt: str,
) -> tuple[str, list[bench.Level]]:
    port = free_port()
    threads = str(os.cpu_count() or 2)
    cmd = [str(exe), "-m", str(weights), "--host", "127.0.0.1", "--port", str(port),
           "-np", str(parallel), "-c", str(256 * 2 * parallel if parallel > 8 else 8192),
           "--cont-batching", "-t", threads, "-tb", threads, "--no-webui", "--jinja"]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with running(cmd, base + "/health", workdir):
        target = bench.Target(
            base + "/v1", "openai", "smollm2", prompt=prompt, max_tokens=MAX_TOKENS,
            temperature=TEMPERATURE, extra=dict(SAMPLING), label=label,
        )  # fmt: skip
        return label, measure(target, [c for c in levels if c <= parallel], rounds)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ratios(results: list[tuple[str, list[bench.Level]]], ours: str, peer: str) -> list[str]:
    """sluicegate over the peer at each level both ran: aggregate tokens/s and first-token p99."""
    by = {name: {lv.concurrency: lv.figures() for lv in found} for name, found in results}
    lines = []
    for c in sorted(set(by.get(ours, {})) & set(by.get(peer, {}))):
        a, b = by[ours][c], by[peer][c]
        rate = a["aggregate_tps"] and b["aggregate_tps"] and a["aggregate_tps"] / b["aggregate_tps"]
        ttft = a["ttft_p99"] and b["ttft_p99"] and a["ttft_p99"] / b["ttft_p99"]
        lines.append(
            f"- {c} streams: {ours} / {peer}: aggregate tokens/s {rate:.2f}x, "
            f"first-token p99 {ttft:.2f}x"
            if rate and ttft
            else f"- {c} streams: no figure"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--alternations", type=int, default=2)
    parser.add_argument("--prompt", choices=sorted(PROMPTS), default="default")
    parser.add_argument("--build-only", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    prompt = PROMPTS[args.prompt]
    exe = llama_server()
    if args.build_only:
        return
    shipped = embedded_model_path()
    q8 = q8_0_weights(shipped)
    started = datetime.datetime.now(datetime.UTC)
    systems: list[Callable[[Path], list[tuple[str, list[bench.Level]]]]] = [
        lambda workdir: sluicegate_rows(levels, args.rounds, workdir, prompt),
        lambda workdir: [
            peer_rows(
                exe, q8, 32, levels, args.rounds, workdir, "llama-server -np 32, Q8_0 copy", prompt
            )
        ],
        lambda workdir: [
            peer_rows(
                exe,
                shipped,
                8,
                levels,
                args.rounds,
                workdir,
                "llama-server -np 8, shipped Q4_1",
                prompt,
            )
        ],
    ]
    merged: dict[str, dict[int, bench.Level]] = {}
    with tempfile.TemporaryDirectory(prefix="sg-llama-server-") as tmp:
        for n in range(args.alternations):  # the machine drifts: each system early and late
            print(f"alternation {n + 1} of {args.alternations}", flush=True)
            for system in systems if n % 2 == 0 else systems[::-1]:
                for label, found in system(Path(tmp)):
                    for level in found:
                        kept = merged.setdefault(label, {}).setdefault(
                            level.concurrency, bench.Level(level.concurrency, [])
                        )
                        kept.rounds.extend(level.rounds)
    order = ["sluicegate, OpenAI door", "sluicegate, Bedrock door",
             "llama-server -np 32, Q8_0 copy", "llama-server -np 8, shipped Q4_1"]  # fmt: skip
    results = [(label, list(merged[label].values())) for label in order if label in merged]
    title = (
        f"## Embedded engine beside llama-server ({started:%Y-%m-%d %H:%M} UTC, {cpu_name()}, "
        f"{os.cpu_count()} cores, {MAX_TOKENS}-token answers, prompt {args.prompt!r})"
    )
    pooled = f"{args.alternations} alternations of {args.rounds} rounds per level, pooled."
    text = "\n".join([title, "", pooled, "", bench.table(results)])
    for ours, peer in (
        ("sluicegate, OpenAI door", "llama-server -np 32, Q8_0 copy"),
        ("sluicegate, OpenAI door", "llama-server -np 8, shipped Q4_1"),
    ):
        text += "".join(line + "\n" for line in ratios(results, ours, peer))
    for line in bench.errors(results)[:10]:
        text += f"- error: {line}\n"
    print("\n" + text)
    previous = RESULTS.read_text() if RESULTS.exists() else ""
    RESULTS.write_text(previous + "\n" + text)
    print(f"(appended to {RESULTS.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
