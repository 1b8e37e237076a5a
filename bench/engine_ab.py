"""One `[engine]` setting, A against B, rounds alternated in one run (this machine drifts).

    .venv/bin/python bench/engine_ab.py flash_attn true false [--levels 8,32] [--alternations 3]
                                        [--prompt default|code]

Each alternation starts `sluicegate serve` once per value and measures it through the OpenAI
door with `sluicegate.bench` (the same prompts and sampling as bench/llama_server.py); the table
holds the medians over alternations of each level's aggregate tokens/s and first-token p99.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from llama_server import (
    BIN,
    MAX_TOKENS,
    PROMPTS,
    SAMPLING,
    TEMPERATURE,
    cpu_name,
    free_port,
    running,
)

from sluicegate import bench


def one(
    setting: str, value: str, levels: list[int], rounds: int, workdir: Path, prompt: str
) -> list[bench.Level]:
    config = workdir / f"{setting}-{value}.toml"
    config.write_text(f"max_generations_per_caller = 0\n[engine]\n{setting} = {value}\n")
    port = free_port()
    cmd = [str(BIN / "sluicegate"), "serve", "--host", "127.0.0.1", "--port", str(port),
           "--config", str(config)]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with running(cmd, base + "/readyz", workdir):
        target = bench.Target(
            base, "openai", "default", prompt=prompt, max_tokens=MAX_TOKENS,
            temperature=TEMPERATURE, extra=dict(SAMPLING),
        )  # fmt: skip
        return asyncio.run(bench.measure(target, levels, rounds, warmup=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("setting")
    parser.add_argument("values", nargs=2)
    parser.add_argument("--levels", default="8,32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--alternations", type=int, default=3)
    parser.add_argument("--prompt", choices=sorted(PROMPTS), default="default")
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    seen: dict[str, dict[int, list[tuple[float, float]]]] = {v: {} for v in args.values}
    with tempfile.TemporaryDirectory(prefix="sg-ab-") as tmp:
        for n in range(args.alternations):
            for value in args.values if n % 2 == 0 else reversed(args.values):
                for level in one(
                    args.setting, value, levels, args.rounds, Path(tmp), PROMPTS[args.prompt]
                ):
                    f = level.figures()
                    rate, p99 = float(f["aggregate_tps"] or 0), float(f["ttft_p99"] or 0)
                    seen[value].setdefault(level.concurrency, []).append((rate, p99))
                    said = f"{rate:.1f} tok/s, first token p99 {p99 * 1000:.0f} ms"
                    print(f"{args.setting}={value} {level.concurrency} streams: {said}", flush=True)
    print(
        f"\n{args.setting}, {cpu_name()}, prompt {args.prompt!r}, "
        f"medians of {args.alternations} alternations:\n"
    )
    print("| value | " + " | ".join(f"{c} streams tok/s, TTFT p99" for c in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for value, found in seen.items():
        cells = [
            f"{statistics.median(r for r, _ in found[c]):.1f}, "
            f"{statistics.median(p for _, p in found[c]) * 1000:.0f} ms"
            for c in levels
        ]
        print(f"| {value} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
