"""The batching engine with the real model: cancellation, limits, fairness and no leaks."""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sluicegate import errors
from sluicegate.events import ChatRequest, Message, TextDelta
from sluicegate.gateway import engine_figures
from sluicegate.generation import Generation
from sluicegate.providers.engine import Engine, EngineConfig, Sampling, Sequence
from sluicegate.providers.local import LocalProvider, embedded_model_path
from tests.conftest import wait_until


class Collector:
    """A sink that records what the engine sends for one sequence."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.finish: str | None = None
        self.done = threading.Event()

    def __call__(self, text: str, tokens: int, finish: str | None) -> None:
        self.texts.append(text)
        if finish is not None:
            self.finish = finish
            self.done.set()


def sequence(local: LocalProvider, text: str, max_tokens: int = 64, **kw: Any) -> Sequence:
    request = ChatRequest("m", (Message("user", text),), max_tokens=max_tokens)
    return Sequence(text[:20], local.tokenize(request), Sampling(max_tokens, **kw), Collector())


def sink(seq: Sequence) -> Collector:
    assert isinstance(seq.sink, Collector)
    return seq.sink


class FirstSteps:
    """Sinks that note the engine step of each sequence's first token, and its end."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.step: dict[str, int] = {}
        self.done: collections.defaultdict[str, threading.Event] = collections.defaultdict(
            threading.Event
        )

    def sink(self, key: str) -> Callable[[str, int, str | None], None]:
        def sink(text: str, tokens: int, finish: str | None) -> None:
            self.step.setdefault(key, self.engine.stats.steps)
            if finish is not None:
                self.done[key].set()

        return sink


@pytest.fixture
def small(local: LocalProvider) -> Iterator[Engine]:
    """A second engine on the same model: one sequence at a time, short queue, small prefill."""
    engine = Engine(
        local.model, EngineConfig(n_ctx=2048, n_parallel=1, prefill_chunk=16, max_queue=2)
    )
    yield engine
    engine.close()


def test_a_cancelled_queued_request_never_decodes(local: LocalProvider, small: Engine) -> None:
    first = sequence(local, "Tell a long story.", 120)
    queued = sequence(local, "Tell another story.", 120)
    small.submit(first)
    small.submit(queued)
    small.cancel(queued)
    assert sink(first).done.wait(60)
    assert wait_until(lambda: small.active() == (0, 0))
    assert queued.decoded == 0 and queued.n_past == 0 and sink(queued).texts == []
    assert small.stats.cancelled == 1


def test_cancel_during_prompt_processing_stops_it(local: LocalProvider, small: Engine) -> None:
    long = sequence(local, "word " * 600, 10)
    small.submit(long)
    assert wait_until(lambda: long.n_past > 0, timeout=30)
    small.cancel(long)
    assert wait_until(lambda: small.active() == (0, 0))
    assert long.decoded == 0
    assert long.n_past < len(long.prompt)  # the rest of the prompt was never computed
    assert small.kv_cells_used() == 0


def test_stop_ends_decoding_within_one_step_and_others_continue(local: LocalProvider) -> None:
    engine = local.engine
    a = sequence(local, "Write about rivers.", 300, temperature=0.8)
    b = sequence(local, "Write about mountains.", 150, temperature=0.8)
    engine.submit(a)
    engine.submit(b)
    assert wait_until(lambda: a.decoded >= 10)
    at_cancel = a.decoded
    engine.cancel(a)
    assert wait_until(lambda: a not in engine._running)
    assert a.decoded - at_cancel <= 1  # at most the step already under way
    assert sink(b).done.wait(60)
    assert sink(b).finish in ("end_turn", "max_tokens")
    assert sink(b).finish == "end_turn" or b.decoded == 150


def test_over_the_context_window_is_a_clear_validation_error(local: LocalProvider) -> None:
    seq = sequence(local, "hi", 9000)
    with pytest.raises(errors.ValidationError, match="context window of 8192 tokens"):
        local.engine.submit(seq)


def test_a_full_queue_throttles(local: LocalProvider, small: Engine) -> None:
    running = sequence(local, "Tell a long story.", 200)
    small.submit(running)
    assert wait_until(lambda: small.active()[0] == 1)
    waiting = [sequence(local, f"Story {i}.", 5) for i in range(2)]
    for seq in waiting:
        small.submit(seq)
    with pytest.raises(errors.Throttled, match="retry"):
        small.submit(sequence(local, "One too many.", 5))
    for seq in [running, *waiting]:
        small.cancel(seq)
    assert wait_until(lambda: small.active() == (0, 0))


def test_a_shared_prefix_is_reused_not_recomputed(local: LocalProvider) -> None:
    engine = local.engine
    system = "You are a meticulous assistant who answers in one sentence. " * 4
    before = engine.stats.prefix_tokens_reused
    computed_before = engine.stats.prompt_tokens
    seqs = []
    for i in range(3):
        request = ChatRequest(
            "m", (Message("user", f"Question {i}?"),), max_tokens=4, system=system
        )
        seq = Sequence(f"p{i}", local.tokenize(request), Sampling(4), Collector())
        engine.submit(seq)
        seqs.append(seq)
    for seq in seqs:
        assert sink(seq).done.wait(60)
    # Every request after the first took the system prompt's cells instead of computing them
    # (submitted together, they ride along with the first: the shared tokens are computed once).
    assert engine.stats.prefix_tokens_reused - before >= 2 * 40
    total = sum(len(seq.prompt) for seq in seqs)
    assert engine.stats.prompt_tokens - computed_before <= total - 2 * 40


def test_requests_on_their_way_join_an_idle_engines_first_step(local: LocalProvider) -> None:
    """An idle engine handed one request waits for those announced and still being tokenized
    (gather_ms from the last arrival at most), so that requests that come together get first
    tokens together; with nothing announced it starts at once, and an announcement never
    followed up holds the start for the window only. (No figure depends on this machine's
    speed: a window of 10 minutes stands for "until withdrawn", one of 0.2 s for "bounded".)"""
    long = {"gather_ms": 600_000, "gather_max_ms": 600_000}
    patient = Engine(local.model, EngineConfig(n_ctx=2048, n_parallel=4, **long))
    brief = Engine(local.model, EngineConfig(n_ctx=2048, n_parallel=4, gather_ms=200))
    on_patient, on_brief = FirstSteps(patient), FirstSteps(brief)
    first_step, done = on_patient.step, on_patient.done

    def seq(key: str, on: FirstSteps) -> Sequence:
        request = ChatRequest("m", (Message("user", f"Say {key}."),), max_tokens=3)
        return Sequence(key, local.tokenize(request), Sampling(3), on.sink(key))

    try:
        patient.announce()
        patient.announce()
        patient.submit(seq("a", on_patient))
        patient.withdraw()
        assert not done["a"].wait(0.3)  # waiting for b, which is still on its way
        patient.submit(seq("b", on_patient))
        patient.withdraw()
        assert done["a"].wait(60) and done["b"].wait(60)
        assert first_step["a"] == first_step["b"]  # the same step

        patient.submit(seq("alone", on_patient))  # nothing announced: no wait
        assert done["alone"].wait(60)

        patient.announce()  # held until the announced request comes or is given up
        patient.submit(seq("late", on_patient))
        assert not done["late"].wait(0.3)
        patient.withdraw()
        assert done["late"].wait(60)

        brief.announce()  # never followed up: the window ends the wait
        brief.submit(seq("bounded", on_brief))
        assert on_brief.done["bounded"].wait(60)
        brief.withdraw()
        assert wait_until(lambda: patient.active() == brief.active() == (0, 0))
    finally:
        patient.close()
        brief.close()


def test_a_burst_that_keeps_coming_joins_the_first_step_within_a_bound(
    local: LocalProvider,
) -> None:
    """The gathering window counts from the last arrival: requests of a burst that reach the
    engine one after another, each within the window of the one before, share the first step
    although the whole burst spans more than the window; but no longer than gather_max_ms in
    all. (Windows of seconds against gaps of 0.4 s: no figure depends on this machine.)"""
    requests = {f"r{i}": ChatRequest("m", (Message("user", f"Say {i}."),), max_tokens=2)
                for i in range(8)}  # fmt: skip
    prompts = {key: local.tokenize(r) for key, r in requests.items()}

    def burst(engine: Engine, keys: list[str]) -> dict[str, int]:
        on = FirstSteps(engine)
        for _ in keys:
            engine.announce()
        for i, key in enumerate(keys):
            if i:
                time.sleep(0.4)
            engine.submit(Sequence(key, prompts[key], Sampling(2), on.sink(key)))
            engine.withdraw()
        assert all(on.done[key].wait(60) for key in keys)
        return on.step

    keeps = Engine(local.model, EngineConfig(n_ctx=2048, n_parallel=8, gather_ms=1000,
                                             gather_max_ms=60_000))  # fmt: skip
    bounded = Engine(local.model, EngineConfig(n_ctx=2048, n_parallel=8, gather_ms=1000,
                                               gather_max_ms=1500))  # fmt: skip
    try:
        together = burst(keeps, ["r0", "r1", "r2", "r3"])  # 1.2 s from first to last
        assert len(set(together.values())) == 1
        split = burst(bounded, list(requests))  # 2.8 s: the bound starts the first step
        first = min(split.values())
        assert 1 < sum(step == first for step in split.values()) < len(requests)
    finally:
        keeps.close()
        bounded.close()


CODE = """def word_counts(text):
    counts = {}
    for word in text.lower().split():
        word = word.strip(".,!?")
        if word:
            counts[word] = counts.get(word, 0) + 1
    return counts
"""


def test_an_answer_that_repeats_its_prompt_takes_fewer_steps(local: LocalProvider) -> None:
    """Prompt lookup in the solo lane: the code the answer copies is drafted from the prompt
    and kept where the model samples the same; a stop in the middle of it still holds, and no
    cell is left behind (rejected drafts' cells are dropped)."""
    engine = local.engine
    assert engine.solo is not None and engine.config.lookup > 0
    ask = f"Return this code unchanged:\n\n```python\n{CODE}```"
    seq = sequence(local, ask, 120, temperature=0.0)
    before = (engine.stats.steps, engine.stats.drafted, engine.stats.draft_kept)
    engine.submit(seq)
    assert sink(seq).done.wait(120)
    steps, drafted, kept = (
        now - then
        for now, then in zip(
            (engine.stats.steps, engine.stats.drafted, engine.stats.draft_kept), before, strict=True
        )
    )
    answer = "".join(sink(seq).texts)
    assert "def word_counts(text):" in answer, answer  # (a 135M model copies loosely)
    assert kept > 0 and kept <= drafted
    figures = engine_figures(engine)  # as /metrics shows them
    assert figures["draft_tokens_kept_total"] == engine.stats.draft_kept >= kept
    assert figures["draft_tokens_total"] == engine.stats.drafted >= drafted
    # One token a step, and each draft token kept one more, after the prompt's pieces.
    pieces = -(-len(seq.prompt) // engine.config.prefill_chunk)
    assert steps == seq.decoded - kept + pieces - 1
    assert wait_until(lambda: engine.active() == (0, 0))
    assert engine.kv_cells_used() == 0

    stopped = sequence(local, ask, 120, temperature=0.0)
    engine.submit(stopped)
    assert wait_until(lambda: stopped.decoded >= 20)
    engine.cancel(stopped)
    at_cancel = stopped.decoded
    assert wait_until(lambda: engine.active() == (0, 0))
    assert stopped.decoded - at_cancel <= engine.config.lookup + 1  # the step under way
    assert sink(stopped).finish is None and engine.kv_cells_used() == 0


def test_multibyte_characters_are_never_split(local: LocalProvider) -> None:
    import codecs

    text = "Grüße aus 東京 🙂🎉 — naïve café ∑"
    tokens = local.model.tokenize(text.encode(), False, False)
    pieces = [local.engine._piece(t) for t in tokens]
    assert any(p and not _is_utf8(p) for p in pieces), "test text should split a character"
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = "".join(decoder.decode(p) for p in pieces) + decoder.decode(b"", final=True)
    assert out.lstrip() == text


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("q8_0", [False, True], ids=["shipped weights", "q8_0 + solo lane"])
def test_random_start_stop_disconnect_interleavings_leak_nothing(q8_0: bool) -> None:
    config = EngineConfig(n_ctx=768, n_parallel=4)
    provider = LocalProvider(embedded_model_path(), config, q8_0=q8_0)
    rng = random.Random(7)

    async def one(i: int) -> Generation:
        request = ChatRequest(
            "m",
            (Message("user", f"Story {i} about {rng.choice(['a fox', 'the sea', 'code'])}."),),
            max_tokens=rng.randint(1, 160),
            temperature=0.8,
        )
        gen = Generation(request, provider.stream, route="test", provider="local")
        await gen.start()
        action = rng.choice(["finish", "cancel", "disconnect", "instant"])
        if action != "finish":
            await asyncio.sleep(0 if action == "instant" else rng.uniform(0, 0.6))
            gen.cancel("cancelled" if action == "cancel" else "disconnected")
        await gen.wait()
        return gen

    async def alone() -> Generation:
        """A lone greedy answer at the end: it decodes in the solo lane whatever the random
        part's timing left (its last sequence may not have decoded alone)."""
        request = ChatRequest("m", (Message("user", "Tell a long story."),), max_tokens=24,
                              temperature=0.0)  # fmt: skip
        gen = Generation(request, provider.stream, route="test", provider="local")
        await gen.start()
        await gen.wait()
        return gen

    async def main() -> list[Generation]:
        return [*await asyncio.gather(*[one(i) for i in range(50)]), await alone()]

    try:
        gens = asyncio.run(main())
        engine = provider.engine
        assert wait_until(lambda: engine.active() == (0, 0))
        assert engine.kv_cells_used() == 0
        assert all(g.done for g in gens)
        for g in gens:
            deltas = [e for e in g.log if isinstance(e, TextDelta)]
            assert g.usage.output_tokens >= len(deltas)
            if g.stop_reason in ("end_turn", "max_tokens"):
                assert engine.recent[g.id] == g.usage.output_tokens + (g.stop_reason == "end_turn")
        if q8_0:
            assert engine.solo is not None and engine.stats.solo_moves > 0
        reasons = {g.stop_reason for g in gens}
        assert {"cancelled", "disconnected"} <= reasons and reasons & {"end_turn", "max_tokens"}
    finally:
        provider.close()


def test_prompts_are_tokenized_off_the_loop_and_hopeless_ones_refused_unread(
    local: LocalProvider,
) -> None:
    """A prompt's tokens are worked out in a thread (the loop goes on meanwhile); one that
    cannot fit the window, whatever it says, is refused before any tokenizing."""

    async def main() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        running = asyncio.create_task(ticker())
        request = ChatRequest("m", (Message("user", "word " * 40_000),), max_tokens=8)
        tokens = await local.tokens_of(request)
        seen = ticks  # read before this coroutine lets the ticker run again
        running.cancel()
        return len(tokens), seen

    count, ticks = asyncio.run(main())
    assert count > 40_000 and ticks >= 1
    huge = ChatRequest("m", (Message("user", "x" * 5_000_000),), max_tokens=8)
    with pytest.raises(errors.ValidationError, match="cannot fit this model's context window"):
        asyncio.run(local.tokens_of(huge))
