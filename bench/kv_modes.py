"""What batch invariance costs: the engine's two KV modes side by side, in one run.

    .venv/bin/python bench/kv_modes.py

`unified` (the default: one KV buffer, every sequence in one batch per step, a solo lane for a
lone stream) against `per-sequence` (a buffer per sequence and a decode call per sequence, so a
seed gives the same text alone or batched on any CPU). The embedded model as served (Q8_0
batches), in-process: no HTTP, so the figures are the engine's alone. For 1 and 8 streams of
128 tokens (distinct prompts, temperature 0.8, seeded, max_tokens cannot end early): aggregate
tokens/s, time to first token (median and worst), best of three runs. Run it on an otherwise
idle machine: llama.cpp's threads spin. Its table goes into bench/results.md (its own section).
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from dataclasses import dataclass

from bedrock_stream import RESULTS, idle_check, machine_line, write_section

from sluicegate.events import ChatRequest, Message
from sluicegate.providers.engine import EngineConfig, Sampling, Sequence
from sluicegate.providers.local import LocalProvider, embedded_model_path, system_info

TOKENS = 128
RUNS = 3
BEGIN = "<!-- bench/kv_modes.py: begin -->"
END = "<!-- bench/kv_modes.py: end -->"


@dataclass
class Timed:
    """A sink that notes when the first token and the end came."""

    start: float = 0.0
    first: float | None = None
    tokens: int = 0

    def __post_init__(self) -> None:
        self.done = threading.Event()

    def __call__(self, text: str, tokens: int, finish: str | None) -> None:
        self.first = self.first or time.perf_counter()
        self.tokens += tokens
        if finish is not None:
            self.done.set()


def run(provider: LocalProvider, streams: int, round_: int) -> tuple[float, list[float]]:
    """(aggregate tokens/s, each stream's time to first token in ms)."""
    sinks, seqs = [], []
    for i in range(streams):
        request = ChatRequest(
            "m",
            (Message("user", f"Round {round_}, story {i}: write about a harbour town."),),
            TOKENS,
        )
        sink = Timed()
        seqs.append(
            Sequence(
                f"{round_}-{i}", provider.tokenize(request), Sampling(TOKENS, 0.8, seed=i), sink
            )
        )
        sinks.append(sink)
    start = time.perf_counter()
    for seq, sink in zip(seqs, sinks, strict=True):
        sink.start = time.perf_counter()
        provider.engine.submit(seq)
    for sink in sinks:
        sink.done.wait()
    wall = time.perf_counter() - start
    return sum(s.tokens for s in sinks) / wall, [((s.first or 0) - s.start) * 1000 for s in sinks]


def measure() -> list[str]:
    """The table's rows, each mode's engine loaded alone (two would fight over the cores)."""
    rows: list[str] = []
    rates: dict[tuple[str, int], float] = {}
    for kv in ("unified", "per-sequence"):
        config = EngineConfig(kv=kv, n_ctx=4096)  # type: ignore[arg-type]
        provider = LocalProvider(embedded_model_path(), config, q8_0=True)
        try:
            for streams in (1, 8):
                rate, ttft = max(
                    (run(provider, streams, r) for r in range(RUNS)), key=lambda x: x[0]
                )
                rates[kv, streams] = rate
                rows.append(
                    f"| {kv} | {streams} | {rate:.1f} | {statistics.median(ttft):.0f} | "
                    f"{max(ttft):.0f} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
        finally:
            provider.close()
    for streams in (1, 8):
        ratio = rates["per-sequence", streams] / rates["unified", streams]
        rows.append(f"| per-sequence / unified | {streams} | {ratio:.2f}x | | |")
    return rows


def main() -> None:
    machine = machine_line(idle_check())
    lines = [BEGIN, "## KV modes: what batch invariance costs (bench/kv_modes.py)", "", machine]
    lines += ["", f"llama.cpp: {system_info()}", ""]
    lines += ["| KV mode | streams | aggregate tok/s | TTFT p50 (ms) | TTFT max (ms) |"]
    lines += ["|---|---|---|---|---|", *measure(), "", NOTE, END]
    section = "\n".join(lines) + "\n"
    print(section)
    write_section(RESULTS, section, BEGIN, END)


NOTE = (
    f"In-process engine, embedded model as served (Q8_0 batches; unified has the solo lane on "
    f"the shipped Q4_1 file), {TOKENS}-token answers at temperature 0.8, best of {RUNS} runs. "
    "TTFT: submit to first token."
)


if __name__ == "__main__":
    main()
