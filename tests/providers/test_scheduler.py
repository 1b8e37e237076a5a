"""The scheduler without the model: a fake KV cache carries out its operations and checks
them, and hypothesis throws thousands of random workloads at it (arrivals, shared and long
prompts, stops, a full cache, refused samplers).

What must hold, whatever happens:
- the scheduler's `n_past` for each sequence is exactly the cells its slot holds (in the batch
  context or in the solo lane), after every operation: it never plans from cells that are not
  there, and never computes a position twice;
- a batch never exceeds `n_batch` rows, and every running sequence that decodes gets its token
  in every batched step (prompt pieces never starve running decodes);
- every sequence ends (finished or cancelled) and, at the end, no cell (but the prefix cache),
  slot or sampler is left;
- a stop takes effect at the next plan: a cancelled sequence decodes no token after it;
- with room for everyone (no preemption), a sequence gets its first token within
  ceil(prompt tokens admitted before it and its own / prefill_chunk) + 1 steps of admission.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate.providers.scheduler import (
    LOOKUP_NGRAM,
    Copy,
    Decode,
    EngineConfig,
    Free,
    FreeSampler,
    Lookup,
    Op,
    Sampled,
    Sampling,
    Scheduler,
    Sequence,
    SoloClear,
    SoloEnter,
    SoloLeave,
    SoloTrim,
    Step,
)

EOG = 0


@dataclass
class Fake:
    """What llama.cpp's context would hold, checked at every operation."""

    config: EngineConfig
    rng: random.Random
    eog_chance: float
    cells: dict[int, set[int]] = field(default_factory=dict)
    solo: set[int] = field(default_factory=set)
    samplers: int = 0
    batched_steps: list[tuple[list[Sequence], Decode]] = field(default_factory=list)
    refuse_chance: float = 0.0
    # A deterministic model (the next token from all before it), or None: random tokens.
    model: Callable[[list[int]], int] | None = None
    steps: int = 0

    def slot(self, s: int) -> set[int]:
        return self.cells.setdefault(s, set())

    def run(self, op: Op, sched: Scheduler) -> Sampled | None:
        match op:
            case Free(slot):
                self.cells[slot] = set()
            case Copy(src, dst, p0, p1):
                want = set(range(p0, p1))
                assert want <= self.slot(src), f"copy of cells {src} does not hold"
                self.cells[dst] = {p for p in self.slot(dst) if p < p0} | want
            case SoloEnter(seq):
                self.solo = set(self.slot(seq.slot))
            case SoloLeave(seq):
                self.cells[seq.slot] = set(self.solo)
                self.solo = set()
            case SoloClear():
                self.solo = set()
            case SoloTrim(p0):
                self.solo = {p for p in self.solo if p < p0}
            case FreeSampler(seq):
                if seq.sampler is not None:
                    seq.sampler = None
                    self.samplers -= 1
            case Decode(rows, outputs, solo, draft):
                self.steps += 1
                assert 0 < len(rows) <= self.config.n_batch
                for _, pos, slots, _ in rows:
                    for s in slots:
                        held = self.solo if solo else self.slot(s)
                        assert pos not in held, f"position {pos} of {s} computed twice"
                        assert pos == 0 or pos - 1 in held, f"a gap before {pos} in {s}"
                        held.add(pos)
                assert all(rows[i][3] for i, _ in outputs)
                if not solo:
                    decoding = [s for s in sched.running if s.pending == 0 and s.decoded > 0]
                    self.batched_steps.append((decoding, op))
                if not draft:
                    return [self.sample(seq.tokens[: rows[i][1] + 1]) for i, seq in outputs]
                assert solo and [i for i, _ in outputs] == list(range(len(rows)))
                seq = outputs[0][1]
                assert rows[0][1] == len(seq.tokens) - 1, "a draft starts at the pending token"
                sampled = []
                for i in range(len(rows)):
                    ahead = rows[i + 1][0] if i + 1 < len(rows) else None
                    got = self.sample(seq.tokens + [r[0] for r in rows[1 : i + 1]], ahead)
                    sampled.append(got)
                    if got[1] or got[0] != ahead:
                        break
                return sampled
        return None

    def sample(self, context: list[int], ahead: int | None = None) -> tuple[int, bool, bytes]:
        if self.model is not None:
            token = self.model(context)
        elif self.rng.random() < self.eog_chance:
            token = EOG
        elif ahead is not None and self.rng.random() < 0.6:
            token = ahead  # the model agrees with a draft
        else:
            token = self.rng.randrange(1, 50)
        return (EOG, True, b"") if token == EOG else (token, False, f"w{token} ".encode())

    def start(self, seq: Sequence) -> bool:
        if seq.sampler is not None:
            return True
        if self.rng.random() < self.refuse_chance:
            return False
        seq.sampler = object()
        self.samplers += 1
        return True


@dataclass
class Ended:
    finish: str | None = None
    tokens: int = 0
    text: str = ""
    after_cancel: int = 0


def carry_out(plan: Step, fake: Fake, sched: Scheduler) -> None:
    try:
        op = next(plan)
        while True:
            result = fake.run(op, sched)
            check_cells(fake, sched, op)
            op = plan.send(result)
    except StopIteration:
        pass


def check_cells(fake: Fake, sched: Scheduler, op: Op) -> None:
    for seq in sched.running:
        if op == Free(seq.slot) or (isinstance(op, SoloClear) and seq is sched.solo_seq):
            continue  # being freed: it leaves `running` as the plan resumes
        held = fake.solo if sched.solo_seq is seq else fake.slot(seq.slot)
        assert held == set(range(seq.n_past)), (seq.key, seq.n_past, sorted(held)[-3:])
    if sched.cache_tokens:
        assert set(range(len(sched.cache_tokens))) <= fake.slot(sched.cache_slot)


@dataclass
class Arrival:
    at: int  # step
    prompt: list[int]
    max_tokens: int
    cancel_after: int | None  # steps after arrival


def prompts(draw: st.DrawFn, bases: list[list[int]]) -> list[int]:
    base = draw(st.sampled_from(bases))
    keep = draw(st.integers(0, len(base)))
    tail = draw(st.lists(st.integers(1, 49), min_size=1 if keep == 0 else 0, max_size=40))
    prompt = base[:keep] + tail
    # Some prompts end by repeating a part of themselves, as code edits do (prompt lookup).
    start = draw(st.integers(0, len(prompt)))
    return prompt + prompt[start : start + draw(st.sampled_from([0, 0, 6, 20]))]


@st.composite
def workloads(draw: st.DrawFn) -> tuple[EngineConfig, list[Arrival], float, float, int]:
    n_ctx = draw(st.sampled_from([96, 256, 2048]))
    config = EngineConfig(
        n_ctx=n_ctx,
        n_parallel=draw(st.integers(1, 6)),
        kv=draw(st.sampled_from(["unified", "unified", "per-sequence"])),
        n_batch=draw(st.sampled_from([8, 32, 64])),
        prefill_chunk=draw(st.sampled_from([4, 16, 64])),
    )
    bases = [draw(st.lists(st.integers(1, 49), min_size=8, max_size=60)) for _ in range(2)]
    arrivals = [
        Arrival(
            at=draw(st.integers(0, 30)),
            prompt=prompts(draw, bases),
            max_tokens=draw(st.integers(1, 30)),
            cancel_after=draw(st.none() | st.integers(0, 20)),
        )
        for _ in range(draw(st.integers(1, 14)))
    ]
    room = min(n_ctx, config.n_ctx)
    arrivals = [a for a in arrivals if len(a.prompt) + a.max_tokens <= room]
    return (
        config,
        arrivals,
        draw(st.sampled_from([0.0, 0.05])),
        draw(st.sampled_from([0.0, 0.1])),
        draw(st.integers(0, 2**32)),
    )


def simulate(
    config: EngineConfig,
    arrivals: list[Arrival],
    eog: float,
    refuse: float,
    seed: int,
    solo: bool,
    model: Callable[[list[int]], int] | None = None,
) -> tuple[Scheduler, Fake, dict[str, Ended], dict[str, tuple[int, int]]]:
    sched = Scheduler(config, config.n_ctx, solo=solo)
    fake = Fake(config, random.Random(seed), eog, refuse_chance=refuse, model=model)
    ended: dict[str, Ended] = {}
    seqs: dict[str, Sequence] = {}
    first_token: dict[str, tuple[int, int]] = {}  # key -> (admitted at step, first token step)
    step = 0

    def sink_for(key: str) -> object:
        def sink(text: str, tokens: int, finish: str | None) -> None:
            e = ended.setdefault(key, Ended())
            assert e.finish is None, f"{key} ended twice"
            e.tokens += tokens
            e.text += text
            if seqs[key].cancelled:
                e.after_cancel += tokens
            if tokens and key in first_token and first_token[key][1] < 0:
                first_token[key] = (first_token[key][0], step)
            e.finish = finish

        return sink

    pending = sorted(enumerate(arrivals), key=lambda x: x[1].at)
    cancels: dict[int, list[str]] = {}
    while step < 5000:
        while pending and pending[0][1].at <= step:
            i, a = pending.pop(0)
            key = f"s{i}"
            seqs[key] = Sequence(key, a.prompt, Sampling(a.max_tokens), sink_for(key))  # type: ignore[arg-type]
            sched.waiting.append(seqs[key])
            if a.cancel_after is not None:
                cancels.setdefault(step + a.cancel_after, []).append(key)
        for key in cancels.pop(step, []):
            seqs[key].cancelled = True
        carry_out(sched.drop_cancelled(), fake, sched)
        while (seq := sched.next_admission()) is not None:
            if fake.start(seq):
                sched.admit(seq, float(step))
                first_token.setdefault(seq.key, (step, -1))
            else:
                sched.refuse(seq)
        if sched.running:
            carry_out(sched.step(), fake, sched)
        step += 1
        if not pending and not sched.running and not sched.waiting and not cancels:
            break
    return sched, fake, ended, first_token


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(workloads(), st.booleans())
def test_every_sequence_ends_and_nothing_leaks(
    work: tuple[EngineConfig, list[Arrival], float, float, int], solo: bool
) -> None:
    config, arrivals, eog, refuse, seed = work
    sched, fake, ended, _ = simulate(config, arrivals, eog, refuse, seed, solo)
    assert not sched.running and not sched.waiting, "the simulation did not drain"
    for i, a in enumerate(arrivals):
        key = f"s{i}"
        e = ended.get(key)
        if a.cancel_after is not None and (e is None or e.finish is None):
            continue  # cancelled before it finished: released without a finish, as the engine does
        assert e is not None and e.finish in ("end_turn", "max_tokens", "error"), (key, e)
        if e.finish == "max_tokens":
            assert e.tokens == a.max_tokens
        assert e.tokens <= a.max_tokens
    assert fake.samplers == 0
    assert sorted(sched.free_slots) == list(range(config.n_parallel))
    for slot, held in fake.cells.items():
        if slot != sched.cache_slot:
            assert not held, f"slot {slot} leaked {len(held)} cells"
    assert not fake.solo


@SETTINGS
@given(workloads(), st.booleans())
def test_a_stop_takes_effect_at_the_next_plan(
    work: tuple[EngineConfig, list[Arrival], float, float, int], solo: bool
) -> None:
    config, arrivals, eog, refuse, seed = work
    _, _, ended, _ = simulate(config, arrivals, eog, refuse, seed, solo)
    for e in ended.values():
        assert e.after_cancel == 0  # not one token decoded for a sequence once it was stopped


@SETTINGS
@given(workloads(), st.booleans())
def test_prompt_pieces_never_starve_running_decodes(
    work: tuple[EngineConfig, list[Arrival], float, float, int], solo: bool
) -> None:
    config, arrivals, eog, refuse, seed = work
    _, fake, _, _ = simulate(config, arrivals, eog, refuse, seed, solo)
    if config.kv != "unified":
        return
    for decoding, decode in fake.batched_steps:
        computed = {slot for _, _, slots, _ in decode.rows for slot in slots}
        for seq in decoding:
            if not seq.cancelled:
                assert seq.slot in computed or seq.finished, f"{seq.key} got no token this step"


@SETTINGS
@given(workloads())
def test_with_room_for_all_the_first_token_comes_within_the_stated_bound(
    work: tuple[EngineConfig, list[Arrival], float, float, int],
) -> None:
    config, arrivals, eog, _, seed = work
    roomy = EngineConfig(
        n_ctx=100_000, n_parallel=max(len(arrivals), 1), kv=config.kv, n_batch=config.n_batch,
        prefill_chunk=config.prefill_chunk,
    )  # fmt: skip
    sched, _, _, first = simulate(roomy, arrivals, eog, 0.0, seed, solo=False)
    assert sched.stats.preempted == 0
    admitted = sorted(first.items(), key=lambda kv: kv[1][0])
    for n, (key, (at, got)) in enumerate(admitted):
        if got < 0:
            continue  # stopped (or ended at once) before a first token
        i = int(key[1:])
        ahead = sum(len(arrivals[int(k[1:])].prompt) for k, (a2, _) in admitted[:n] if a2 <= at)
        chunk = min(roomy.prefill_chunk, roomy.n_batch)
        bound = math.ceil((ahead + len(arrivals[i].prompt)) / chunk) + 1
        assert got - at <= bound, (key, got - at, bound)


def copying_model(seed: int) -> Callable[[list[int]], int]:
    """The next token from the whole context, the same every time: it often goes on as the
    context went on after its last four tokens the time before (an answer that repeats its
    prompt), else a token from a hash; now and then the end."""

    def model(context: list[int]) -> int:
        h = zlib.crc32(repr((seed, context[-6:], len(context))).encode())
        if h % 23 == 0:
            return EOG
        tail = context[-4:]
        for start in range(len(context) - 5, -1, -1):
            if context[start : start + 4] == tail and h % 5:
                return context[start + 4]
        return h % 49 + 1

    return model


@SETTINGS
@given(workloads(), st.integers(1, 8), st.booleans())
def test_prompt_lookup_changes_no_token_only_the_steps(
    work: tuple[EngineConfig, list[Arrival], float, float, int], lookup: int, apart: bool
) -> None:
    """With the same model, every answer is the same token for token with prompt lookup and
    without it (the solo lane's drafts keep only what the model samples; a stop may come a
    few tokens sooner or later, as steps end sooner). `apart`: one request at a time, none
    stopped: each decodes alone, in the solo lane, and each draft token kept saves a step."""
    config, arrivals, _, _, seed = work
    if apart:
        arrivals = [replace(a, at=i * 200, cancel_after=None) for i, a in enumerate(arrivals)]
    model = copying_model(seed)
    runs = [
        simulate(replace(config, lookup=n), arrivals, 0.0, 0.0, seed, True, model)
        for n in (0, lookup)
    ]
    (_, plain, plain_ended, _), (sched, drafted, ended, _) = runs
    for key in ended.keys() | plain_ended.keys():
        e, other = ended.get(key, Ended()), plain_ended.get(key, Ended())
        if e.finish is not None and other.finish is not None:
            assert (e.text, e.finish) == (other.text, other.finish), key
        else:  # stopped in one run or both
            assert e.text.startswith(other.text) or other.text.startswith(e.text), key
    assert sched.stats.draft_kept <= sched.stats.drafted
    if apart:
        assert drafted.steps == plain.steps - sched.stats.draft_kept


def test_prompt_lookup_drafts_what_followed_the_last_run_of_tokens() -> None:
    config = EngineConfig(n_ctx=256, n_parallel=2, lookup=3)
    assert LOOKUP_NGRAM == 5  # (the example's runs)
    prompt = [5, 6, 7, 8, 9, 10, 11, 12, 13, 1, 2, 3, 4, 9, 9, 5, 6, 7, 8, 9]

    def model(context: list[int]) -> int:
        """What followed the last five tokens before (the answer repeats the prompt)."""
        for start in range(len(context) - 6, -1, -1):
            if context[start : start + 5] == context[-5:]:
                return context[start + 5]
        return EOG

    arrivals = [Arrival(at=0, prompt=prompt, max_tokens=6, cancel_after=None)]
    sched, fake, ended, _ = simulate(config, arrivals, 0.0, 0.0, 0, True, model)
    # The prompt's step samples 10 (after 5 6 7 8 9); the next step drafts 11 12 13 (after
    # 6 7 8 9 10), keeps all three and samples 1 after them; the last one (no room for a draft
    # under max_tokens) samples 2.
    assert ended["s0"].text == "w10 w11 w12 w13 w1 w2 "
    assert (sched.stats.drafted, sched.stats.draft_kept, fake.steps) == (3, 3, 3)
    lookup, again = Lookup(), [1, 2, 3, 4, 5, 7, 8, 9, 1, 2, 3, 4, 5]
    assert lookup.draft(again, 3) == [7, 8, 9]  # what followed 1 2 3 4 5 before
    lookup.took(3, 0)  # the model kept none of it: the next draft is two tokens
    assert lookup.draft(again, 3) == [7, 8]
    lookup.took(2, 2)  # all of it: as long as allowed again
    assert lookup.draft(again, 3) == [7, 8, 9]
    assert not fake.solo and ended["s0"].finish == "max_tokens"
