"""The engine cannot hang: faults injected at its one llama_decode call, leaks counted.

`Faulty` fails every decode once `fail` is set: what a failed llama.cpp call looks like to the
engine (an exception from its llama.cpp layer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest

from sluicegate import errors
from sluicegate.providers.engine import Engine, EngineConfig, EngineFailed, Sampling, Sequence
from sluicegate.providers.llamacpp import Llama
from sluicegate.providers.local import LocalProvider
from tests.conftest import wait_until
from tests.providers.test_engine import Collector, sequence, sink


class FaultyLlama(Llama):
    """The llama.cpp layer, whose one decode call fails once `fail` is set."""

    fail = False
    countdown: int | None = None  # decodes left before `fail` sets itself

    def _decode(self, ctx: Any, batch: Any) -> None:
        if self.countdown is not None:
            self.countdown -= 1
            self.fail = self.fail or self.countdown < 0
        if self.fail:
            raise RuntimeError("injected: llama_decode returned -3")
        super()._decode(ctx, batch)


class Faulty(Engine):
    layer = FaultyLlama

    @property
    def fail(self) -> bool:
        return bool(self.llama.fail)  # type: ignore[attr-defined]

    @fail.setter
    def fail(self, value: bool) -> None:
        self.llama.fail = value  # type: ignore[attr-defined]

    @property
    def countdown(self) -> int | None:
        return self.llama.countdown  # type: ignore[attr-defined,no-any-return]

    @countdown.setter
    def countdown(self, value: int | None) -> None:
        self.llama.countdown = value  # type: ignore[attr-defined]


class FailsAtOnceLlama(FaultyLlama):
    fail = True


class FailsAtOnce(Engine):
    layer = FailsAtOnceLlama


@pytest.fixture
def faulty(local: LocalProvider) -> Iterator[Faulty]:
    engine = Faulty(local.model, EngineConfig(n_ctx=2048, n_parallel=2, max_queue=8))
    yield engine
    engine.close()


def test_a_failed_decode_ends_every_sequence_and_refuses_new_ones(
    local: LocalProvider, faulty: Faulty
) -> None:
    # Greedy, so that no answer can end by itself within the steps before the fault.
    seqs = [sequence(local, f"Tell a long story about {x}.", 300, temperature=0) for x in "abcd"]
    faulty.countdown = 4  # the prompts' step, three decode steps, then the fault
    for seq in seqs:
        faulty.submit(seq)
    for seq in seqs:
        assert sink(seq).done.wait(30), "a sequence was left waiting on a dead engine"
        assert sink(seq).finish == "error"
    # two were decoding (b may have joined a step late), two queued
    assert all(s.decoded >= 3 for s in seqs[:2]) and [s.decoded for s in seqs[2:]] == [0, 0]
    assert not faulty.alive and faulty.failure is not None and "injected" in faulty.failure
    with pytest.raises(errors.ServiceUnavailable, match="stopped"):
        faulty.submit(sequence(local, "Anyone there?", 5))
    assert faulty.active() == (0, 0)
    assert faulty.stats.samplers == 0


def test_a_failed_warm_up_raises_instead_of_blocking(local: LocalProvider) -> None:
    raised: list[BaseException] = []

    def start() -> None:
        try:
            FailsAtOnce(local.model, EngineConfig(n_ctx=512, n_parallel=1))
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the engine's constructor hung on a failed warm-up"
    assert len(raised) == 1 and isinstance(raised[0], EngineFailed)
    assert "warm-up failed" in str(raised[0]) and "injected" in str(raised[0])


def test_a_sequence_cancelled_while_preempted_frees_its_sampler(local: LocalProvider) -> None:
    """Two 200-token prompts in a 256-cell cache: the second is preempted back to the queue
    (keeping its sampler), then cancelled there."""
    engine = Engine(local.model, EngineConfig(n_ctx=256, n_parallel=2, solo=False))
    try:
        words = local.model.tokenize(b" river valley stone water" * 80, False, False)
        a, b = (
            Sequence(k, words[i : i + 200], Sampling(40, temperature=0.8, seed=1), Collector())
            for k, i in (("a", 0), ("b", 1))
        )
        engine.submit(a)
        engine.submit(b)
        assert wait_until(lambda: engine.stats.preempted >= 1, timeout=60)
        assert b.sampler is not None and b in engine._waiting
        engine.cancel(b)
        assert sink(a).done.wait(60)
        assert wait_until(lambda: engine.active() == (0, 0))
        assert b.decoded == 0 and engine.stats.samplers == 0
        assert engine.kv_cells_used() == 0
    finally:
        engine.close()


def test_only_the_engine_thread_calls_llama_cpp_for_the_cell_count(
    local: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    callers: set[str] = set()
    original = llama_cpp.llama_memory_seq_pos_max

    def recording(*args: Any) -> Any:
        callers.add(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(llama_cpp, "llama_memory_seq_pos_max", recording)
    engine = Engine(local.model, EngineConfig(n_ctx=1024, n_parallel=2))
    try:
        seq = sequence(local, "Name three rivers.", 30)
        engine.submit(seq)
        counts = []
        while not sink(seq).done.is_set():
            counts.append(engine.kv_cells_used())  # from this (the event loop's) thread
            time.sleep(0.001)
        assert wait_until(lambda: engine.active() == (0, 0))
        assert max(counts) > 0 and engine.kv_cells_used() == 0
    finally:
        engine.close()
    assert callers == {"sluicegate-engine"}
