"""The engine with a KV buffer per sequence: the same seed gives the same text, alone or in a
batch, whatever else runs beside it, because each sequence is computed in decode calls of its
own, its prompt in pieces at fixed positions. Shared prefixes are still reused, a whole piece at
a time (by copying buffers). None of this depends on the CPU's kernels: the same calls run in
the same shapes either way (checked with native AVX-512 and with AVX2-only builds, README)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sluicegate.events import ChatRequest, Message
from sluicegate.providers.engine import Engine, EngineConfig, Sampling, Sequence
from sluicegate.providers.local import LocalProvider
from tests.conftest import wait_until
from tests.providers.test_engine import Collector, sink

# About 190 tokens with a question: more than one 128-token piece, so a piece is shared.
SYSTEM = "You are a meticulous assistant who answers in two short paragraphs. " * 14
PIECE = EngineConfig().prefill_chunk


@pytest.fixture
def engine(local: LocalProvider) -> Iterator[Engine]:
    e = Engine(local.model, EngineConfig(kv="per-sequence", n_ctx=1024, n_parallel=8))
    yield e
    e.close()


def seq(local: LocalProvider, text: str, max_tokens: int, **sampling: object) -> Sequence:
    request = ChatRequest("m", (Message("user", text),), max_tokens=max_tokens, system=SYSTEM)
    return Sequence(
        text[:16], local.tokenize(request), Sampling(max_tokens, **sampling), Collector()
    )  # type: ignore[arg-type]


def run(engine: Engine, seqs: list[Sequence]) -> list[str]:
    for s in seqs:
        engine.submit(s)
    for s in seqs:
        assert sink(s).done.wait(120)
    return ["".join(sink(s).texts) for s in seqs]


@pytest.mark.parametrize("sampling", [{"temperature": 0.9, "seed": 1234}, {"temperature": 0.0}])
def test_same_seed_same_text_alone_and_in_a_batch_of_8(
    local: LocalProvider, engine: Engine, sampling: dict[str, object]
) -> None:
    prompt = "Describe how a river shapes a valley. " + "Mention erosion and floods. " * 20
    [alone] = run(engine, [seq(local, prompt, 64, **sampling)])
    others = [
        seq(
            local,
            f"Tell me about topic number {i}: {'details ' * 40 * i}",
            20 + 9 * i,
            temperature=0.8,
        )
        for i in range(7)
    ]
    # The target starts third, in another slot, while others are still processing their
    # prompts (sharing its system prompt, of several lengths) or decoding.
    target = seq(local, prompt, 64, **sampling)
    assert len(target.prompt) > 2 * PIECE
    reused = engine.stats.prefix_tokens_reused
    texts = run(engine, [*others[:2], target, *others[2:]])
    assert engine.stats.prefix_tokens_reused > reused  # the shared system prompt was copied
    assert len(alone) > 40
    assert texts[2] == alone
    assert wait_until(lambda: engine.active() == (0, 0))
    assert engine.kv_cells_used() == 0 and engine.stats.samplers == 0


def test_prefix_reuse_copies_buffers_and_changes_nothing(
    local: LocalProvider, engine: Engine
) -> None:
    [fresh] = run(engine, [seq(local, "What is a tide?", 40, temperature=0.0)])
    reused_before = engine.stats.prefix_tokens_reused
    # Each finished prompt stays cached; the next request copies the shared part of it.
    run(engine, [seq(local, "What is a wave?", 8, temperature=0.0)])
    [again] = run(engine, [seq(local, "What is a tide?", 40, temperature=0.0)])
    assert engine.stats.prefix_tokens_reused - reused_before == 2 * PIECE  # a piece, twice
    assert again == fresh


def test_memory_figure_counts_a_buffer_per_sequence(local: LocalProvider, engine: Engine) -> None:
    per_cell = 30 * 2 * 192 * 2  # SmolLM2-135M: 30 layers, keys and values of 3 x 64, f16
    assert local.engine.kv_bytes() == 8192 * per_cell  # unified: the cells all share
    assert engine.kv_bytes() == (8 + 1) * 1024 * per_cell  # 8 sequences and the prefix cache
