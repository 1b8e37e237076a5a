"""Why the embedded model is served as Q8_0: quality and raw llama.cpp speed, side by side.

    .venv/bin/python bench/weights.py

For the shipped Q4_1 file and its Q8_0 conversion (what `sluicegate serve` uses by default):
perplexity on a fixed text (this repository's README and events.py), prompt processing speed
(one 128-token piece), and decode speed at 1 and 8 sequences in the engine's configuration
(one unified KV cache). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals as llm

from sluicegate.providers.engine import silence_llama_logs
from sluicegate.providers.local import embedded_model_path, model_params, q8_0_weights

ROOT = Path(__file__).resolve().parent.parent
PROMPT, STEPS = 100, 60


def context(model: llm.LlamaModel, n_seq: int, logits_all: bool = False) -> llm.LlamaContext:
    p = llama_cpp.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = 8192, 2048, 2048, n_seq
    p.n_threads = p.n_threads_batch = 2
    p.kv_unified = True
    p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return llm.LlamaContext(model=model, params=p, verbose=False)


def decode(ctx: llm.LlamaContext, batch: llm.LlamaBatch, items: list[tuple[int, int, int]]) -> None:
    """items: (token, position, sequence); logits for every item."""
    b = batch.batch
    for n, (tok, pos, seq) in enumerate(items):
        b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = tok, pos, 1, True
        b.seq_id[n][0] = seq
    b.n_tokens = len(items)
    if llama_cpp.llama_decode(ctx.ctx, b) != 0:
        raise RuntimeError("llama_decode failed")


def perplexity(model: llm.LlamaModel) -> float:
    text = (ROOT / "README.md").read_text()[:2500] + (ROOT / "sluicegate/events.py").read_text()
    tokens = model.tokenize(text.encode(), True, False)[:1500]
    ctx, batch = context(model, 1), llm.LlamaBatch(n_tokens=2048, embd=0, n_seq_max=1)
    decode(ctx, batch, [(t, i, 0) for i, t in enumerate(tokens)])
    n_vocab = model.n_vocab()
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx.ctx), (len(tokens), n_vocab))
    top = logits.max(axis=1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    nll = -np.mean([logp[i, tokens[i + 1]] for i in range(len(tokens) - 1)])
    return math.exp(float(nll))


def speeds(model: llm.LlamaModel) -> tuple[float, float, float]:
    """(prompt tokens/s, decode tokens/s with 1 sequence, with 8 sequences)."""
    best = [0.0, 0.0, 0.0]
    for _ in range(3):  # best of three: the machine is shared
        out = []
        for n_seq in (1, 8):
            ctx = context(model, n_seq)
            batch = llm.LlamaBatch(n_tokens=2048, embd=0, n_seq_max=8)
            decode(ctx, batch, [(1, 0, 0)])  # warm-up: buffers sized, weights paged in
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx.ctx), True)
            start = time.perf_counter()
            for s in range(n_seq):
                decode(ctx, batch, [(100 + (i * 7 + s) % 1000, i, s) for i in range(PROMPT)])
            if n_seq == 1:
                out.append(PROMPT / (time.perf_counter() - start))
            start = time.perf_counter()
            for step in range(STEPS):
                decode(ctx, batch, [(500 + s, PROMPT + step, s) for s in range(n_seq)])
            out.append(n_seq * STEPS / (time.perf_counter() - start))
        best = [max(a, b) for a, b in zip(best, out, strict=True)]
    return best[0], best[1], best[2]


def main() -> None:
    silence_llama_logs()
    shipped = embedded_model_path()
    rows = []
    for label, path in (("Q4_1 (as shipped)", shipped), ("Q8_0 (served)", q8_0_weights(shipped))):
        model = llm.LlamaModel(path_model=str(path), params=model_params(), verbose=False)
        ppl = perplexity(model)
        prompt, one, eight = speeds(model)
        size = path.stat().st_size / 1e6
        rows.append(
            f"| {label} | {size:.0f} MB | {ppl:.2f} | {prompt:.0f} | {one:.0f} | {eight:.0f} |"
        )
    print("| weights | file | perplexity | prompt tok/s | decode tok/s, 1 seq | 8 seqs |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
