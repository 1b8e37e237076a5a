"""The engine's policy, with no llama.cpp in it: who is admitted, what goes in each step's
batch, when to preempt, share a prefix, move to the solo lane, finish and free.

A step is a generator of operations (`Op`) that the llama.cpp layer carries out in order; a
`Decode` is sent back the tokens it sampled, so that what follows in the same step (a finished
sequence's cells freed, its prompt kept for the next request) depends on them exactly as if
the two were one loop. The scheduler's own state (each sequence's `n_past`, the prefix cache,
the solo lane's sequence) is what the KV cache holds once the operations yielded so far are
done; a sequence being freed leaves `running` just after its `Free`, so that nobody sees it
gone before its cells are. Tests
drive it with a fake model (tests/providers/test_scheduler.py); `engine.py` drives it with the
real one.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

# Called on the engine thread for every sampled token: (text, tokens, finish or None).
Sink = Callable[[str, int, str | None], None]
# Shorter shared prefixes are recomputed: not worth a KV cache operation.
MIN_PREFIX = 8
# Tokens that must repeat before prompt lookup drafts what followed them (EngineConfig.lookup):
# shorter ones match by chance, and a rejected draft costs nearly its length in compute (on a
# 2-core EPYC, 2 rows cost 1.96x one row, 4 rows 2.9x, 8 rows 4.6x).
LOOKUP_NGRAM = 5


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Engine sizes; the defaults suit a 2-core machine and a small model."""

    n_ctx: int = 8192
    n_parallel: int = 32
    # unified: one KV buffer that all sequences share (n_ctx cells in all; any one may use the
    # whole window), every sequence in one batch per step. per-sequence: a buffer of n_ctx
    # cells for each sequence (n_parallel + 1 times the memory), and each sequence computed in
    # its own decode call, its prompt in pieces at fixed positions: its rows then meet the same
    # kernels in the same shapes whoever else runs, so a seed gives the same text alone or
    # batched, on any CPU. It costs the batching: streams take turns instead of sharing steps.
    kv: Literal["unified", "per-sequence"] = "unified"
    # Let a lone decoding sequence use the solo lane, when the engine is given one.
    solo: bool = True
    n_batch: int = 512
    # Prompt tokens processed per step: running streams wait for at most this much prefill.
    prefill_chunk: int = 128
    n_threads: int = 2
    # Go down to one thread while another process keeps the cores busy (llamacpp.Threads).
    adaptive_threads: bool = True
    # llama.cpp's flash attention, in the unified layout (the per-sequence one keeps it off: it
    # makes a row's logits depend on its batch neighbours). Measured on a 2-core EPYC: 10%
    # faster steps at 8 streams, 20-25% at 32.
    flash_attn: bool = True
    max_queue: int = 256
    # Prompt lookup in the solo lane: when the last LOOKUP_NGRAM tokens appeared earlier in
    # the prompt or the answer, the tokens that followed them then go into the step as a
    # draft of up to this many tokens (one more than the model kept of the last draft, at
    # least two), and every one the model samples the same is kept (an answer that repeats
    # its prompt, as code edits do, takes fewer steps). 0: off.
    lookup: int = 7
    # An idle engine that is handed a request waits for the others already on their way
    # (being tokenized) to join its first step, as long as they keep coming: until none is on
    # its way, or none has arrived for gather_ms, or gather_max_ms in all. Requests that come
    # together get their first tokens together, instead of one step after another (32 sent at
    # once arrive over 12-21 ms on a 2-core EPYC: a prompt's tokenizing takes 0.3 ms).
    gather_ms: float = 10.0
    gather_max_ms: float = 50.0


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    # A GBNF grammar (root rule `root`) the sampled text must follow, as llama.cpp reads it.
    grammar: str | None = None


@dataclass(eq=False, slots=True)
class Sequence:
    """One request inside the engine. `decoded` counts tokens sampled for it (the proof of work).

    `tokens` is the prompt followed by every sampled token; the first `n_past` of them are in
    the KV cache. A decoding sequence has exactly one token pending (the last one sampled).
    """

    key: str
    prompt: list[int]
    sampling: Sampling
    sink: Sink
    tokens: list[int] = field(default_factory=list)
    slot: int = -1
    n_past: int = 0
    decoded: int = 0
    admitted_at: float | None = None
    cancelled: bool = False
    finished: bool = False
    ride_upto: int = 0  # this step, another sequence computes its tokens up to here
    sampler: Any = None  # the llama.cpp layer's; kept while a preempted sequence waits
    utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.n_past


@dataclass(slots=True)
class EngineStats:
    steps: int = 0
    tokens_decoded: int = 0
    prompt_tokens: int = 0
    cancelled: int = 0
    preempted: int = 0
    prefix_tokens_reused: int = 0
    solo_moves: int = 0  # sequences moved into or out of the solo lane
    drafted: int = 0  # prompt lookup's draft tokens computed, and those the model kept
    draft_kept: int = 0
    samplers: int = 0  # sampler chains alive (0 when idle: nothing leaked)


# -- operations: what the llama.cpp layer does, in the order yielded ---------------------------


@dataclass(frozen=True, slots=True)
class Free:
    """Drop every cell of a sequence id."""

    slot: int


@dataclass(frozen=True, slots=True)
class Copy:
    """Give `dst` the cells of `src` for positions [p0, p1) (dst's later ones are dropped)."""

    src: int
    dst: int
    p0: int
    p1: int


@dataclass(frozen=True, slots=True)
class SoloEnter:
    """Copy `seq`'s cells into the solo lane, which decodes it from now on."""

    seq: Sequence


@dataclass(frozen=True, slots=True)
class SoloLeave:
    """Give the solo lane's sequence back to the batch, with every cell it has now."""

    seq: Sequence


@dataclass(frozen=True, slots=True)
class SoloClear:
    """Forget the solo lane's cells (its sequence is being freed)."""


@dataclass(frozen=True, slots=True)
class SoloTrim:
    """Drop the solo lane's cells from position `p0` on (a draft's tokens the model did not
    keep)."""

    p0: int


@dataclass(frozen=True, slots=True)
class FreeSampler:
    seq: Sequence


# (token, position, sequence ids, logits wanted)
Row = tuple[int, int, tuple[int, ...], bool]


@dataclass(slots=True)
class Decode:
    """One llama_decode call; then one token sampled from the logits of each output row.
    Sent back: for each output, (token, end of generation, the token's bytes).

    `draft`: the outputs are one sequence's rows in order, all but the first a draft; each
    output after the first is sampled only if the one before gave its row's token (and no
    end of generation), so fewer may come back, and the sampler draws exactly as it would
    have one token per step."""

    rows: list[Row]
    outputs: list[tuple[int, Sequence]]
    solo: bool = False
    draft: bool = False


Op = Free | Copy | SoloEnter | SoloLeave | SoloClear | SoloTrim | FreeSampler | Decode
Sampled = list[tuple[int, bool, bytes]]
Step = Generator[Op, Sampled | None, None]


class Scheduler:
    """The state and the decisions; not thread-safe (the engine holds its lock around the
    calls that touch `waiting`, which `submit` fills from other threads)."""

    def __init__(self, config: EngineConfig, n_ctx_seq: int, solo: bool = False) -> None:
        self.config = config
        self.n_ctx_seq = n_ctx_seq
        self.unified = config.kv == "unified"
        self.solo = solo and self.unified and config.solo
        self.solo_seq: Sequence | None = None
        self.solo_from = 0  # the solo sequence's cells in the batch context end here
        self.stats = EngineStats()
        self.recent: dict[str, int] = {}
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_slots = list(range(config.n_parallel - 1, -1, -1))
        self.cache_slot = config.n_parallel  # one extra sequence id holds the prefix cache
        self.cache_tokens: list[int] = []
        self.lookup = Lookup()  # the solo lane's sequence's (a new one for each)

    # -- between steps ---------------------------------------------------------------------

    def drop_cancelled(self) -> Step:
        gone = [s for s in self.waiting if s.cancelled]
        for s in gone:
            self.waiting.remove(s)
            yield FreeSampler(s)  # a preempted sequence keeps its chain while it waits
        for s in [s for s in self.running if s.cancelled]:
            yield from self._release(s)
        self.stats.cancelled += len(gone)

    def next_admission(self) -> Sequence | None:
        """The next waiting sequence to admit, taken off the queue (it needs a sampler), or
        None: no free slot, or the KV cache is full (wait for a running one to end)."""
        if not self.waiting or not self.free_slots:
            return None
        seq = self.waiting[0]
        if self.running and self.kv_needed() + seq.pending > self.config.n_ctx:
            return None
        return self.waiting.popleft()

    def admit(self, seq: Sequence, now: float) -> None:
        seq.slot = self.free_slots.pop()
        seq.admitted_at = seq.admitted_at or now
        self.running.append(seq)

    def refuse(self, seq: Sequence) -> None:
        """It could not be started (its sampler was refused): it ends with an error."""
        seq.finished = True
        seq.sink("", 0, "error")

    def kv_needed(self) -> int:
        """Cells the running sequences and the prefix cache hold, plus one step's growth each
        (0 with per-sequence buffers: admission already checked that each one fits its own)."""
        if not self.unified:
            return 0
        return sum(s.n_past + 1 for s in self.running) + len(self.cache_tokens)

    def drop_prefix_cache(self) -> Step:
        self.cache_tokens = []
        yield Free(self.cache_slot)

    def held(self) -> list[Sequence]:
        """Every sequence held, running or waiting (when the engine stops for good)."""
        held = [*self.running, *self.waiting]
        self.running.clear()
        self.waiting.clear()
        return held

    # -- a step ----------------------------------------------------------------------------

    def step(self) -> Step:
        if not self.unified:
            yield from self._step_each()
            return
        if self.solo and (yield from self._solo_step()):
            return
        if self.kv_needed() > self.config.n_ctx:
            yield from self.drop_prefix_cache()
        while self.kv_needed() > self.config.n_ctx and len(self.running) > 1:
            yield from self._preempt(self.running[-1])
        riders: dict[int, list[tuple[Sequence, int]]] = {}
        yield from self._plan_sharing(riders)
        decode = self._fill_batch(riders)
        sampled = yield decode
        self.stats.steps += 1
        yield from self._sampled(decode, sampled)

    def _step_each(self) -> Step:
        """Per-sequence KV: each sequence in a decode call of its own, its prompt in pieces that
        start at multiples of the piece size whatever else runs (see EngineConfig.kv)."""
        piece = self._piece_size
        budget = self.config.prefill_chunk
        for seq in list(self.running):
            prefilling = seq.pending > 1
            if prefilling:
                if budget <= 0:
                    continue
                yield from self._reuse_prefix(seq)
            end = min(len(seq.tokens), (seq.n_past // piece + 1) * piece)
            last = end == len(seq.tokens)  # logits for the last row only, when it ends the prompt
            rows: list[Row] = [
                (tok, seq.n_past + i, (seq.slot,), last and seq.n_past + i == end - 1)
                for i, tok in enumerate(seq.tokens[seq.n_past : end])
            ]
            take = len(rows)
            seq.n_past = end
            if prefilling:
                budget -= take
                self.stats.prompt_tokens += take
            decode = Decode(rows, [(take - 1, seq)] if seq.pending == 0 else [])
            sampled = yield decode
            yield from self._sampled(decode, sampled)
        self.stats.steps += 1

    @property
    def _piece_size(self) -> int:
        return min(self.config.prefill_chunk, self.config.n_batch)

    def _solo_step(self) -> Generator[Op, Sampled | None, bool]:
        """Run this step in the solo lane if one sequence decodes alone; move it back first
        if others have come. Whether the step was taken."""
        alone = len(self.running) == 1 and not self.waiting and self.running[0].pending == 1
        if self.solo_seq is not None and not alone:
            leaving, self.solo_seq = self.solo_seq, None
            yield SoloLeave(leaving)
            self.stats.solo_moves += 1
        elif self.solo_seq is None and alone:
            self.solo_seq = self.running[0]
            self.lookup = Lookup()
            self.solo_from = self.solo_seq.n_past
            yield SoloEnter(self.solo_seq)
            self.stats.solo_moves += 1
        if self.solo_seq is None:
            return False
        seq = self.solo_seq
        # Never a draft past max_tokens: every token sampled is one the answer may have.
        room = min(
            self.config.lookup, seq.sampling.max_tokens - seq.decoded - 1, self.config.n_batch - 1
        )
        draft = self.lookup.draft(seq.tokens, room) if room > 0 else []
        tokens = [seq.tokens[seq.n_past], *draft]
        rows: list[Row] = [(t, seq.n_past + i, (0,), True) for i, t in enumerate(tokens)]
        decode = Decode(rows, [(i, seq) for i in range(len(rows))], True, bool(draft))
        seq.n_past += len(rows)
        sampled = yield decode
        self.stats.steps += 1
        if draft:
            assert sampled is not None and 0 < len(sampled) <= len(rows)
            self.stats.drafted += len(draft)
            self.stats.draft_kept += len(sampled) - 1
            self.lookup.took(len(draft), len(sampled) - 1)
            if len(sampled) < len(rows):
                seq.n_past -= len(rows) - len(sampled)
                yield SoloTrim(seq.n_past)
        yield from self._sampled(decode, sampled)
        return True

    def _preempt(self, seq: Sequence) -> Step:
        """Give the youngest sequence's cells to the others; it recomputes them when readmitted."""
        yield from self._free(seq)
        seq.n_past = 0
        self.waiting.appendleft(seq)
        self.stats.preempted += 1

    def _fill_batch(self, riders: dict[int, list[tuple[Sequence, int]]]) -> Decode:
        """Decoding sequences first (one token each), then prompt pieces in arrival order.

        A prompt that shares its next tokens with an earlier one being computed rides along:
        those tokens enter the batch once, tagged with both sequences.
        """
        rows: list[Row] = []
        outputs = []
        budget = self.config.prefill_chunk
        # Riders go after their hosts: once carried past the shared part, they go on alone.
        for seq in sorted(self.running, key=lambda s: (s.pending > 1, s.ride_upto > 0)):
            prefilling = seq.pending > 1
            if seq.n_past < seq.ride_upto:
                continue  # its host ran out of room this step: no point computing it twice
            take = min(seq.pending, self.config.n_batch - len(rows), budget if prefilling else 1)
            if take <= 0:
                continue
            for tok in seq.tokens[seq.n_past : seq.n_past + take]:
                along = [r for r, upto in riders.get(id(seq), []) if r.n_past < upto]
                rows.append((tok, seq.n_past, (seq.slot, *(r.slot for r in along)), False))
                for r in [seq, *along]:
                    r.n_past += 1
                self.stats.prefix_tokens_reused += len(along)
            if prefilling:
                budget -= take
                self.stats.prompt_tokens += take
            if seq.pending == 0:
                rows[-1] = (*rows[-1][:3], True)
                outputs.append((len(rows) - 1, seq))
        return Decode(rows, outputs)

    def _plan_sharing(self, riders: dict[int, list[tuple[Sequence, int]]]) -> Step:
        """Before any n_past moves (sources may only offer computed cells): take shared cells
        that exist, and seat each prompt that can ride along with an earlier one."""
        for i, seq in enumerate(self.running):
            seq.ride_upto = 0
            if seq.pending <= 1:
                continue
            yield from self._reuse_prefix(seq)
            for host in self.running[:i]:
                upto = _common_prefix(seq.tokens, host.tokens, len(seq.tokens) - 1)
                if host.ride_upto or host.n_past != seq.n_past or upto - seq.n_past < MIN_PREFIX:
                    continue
                riders.setdefault(id(host), []).append((seq, upto))
                seq.ride_upto = upto
                break

    def _reuse_prefix(self, seq: Sequence) -> Step:
        """Share KV cells with whoever holds the longest computed common prefix (no compute,
        no copy: the cells get one more sequence id)."""
        best, source = seq.n_past, None
        for other, held in self._prefix_sources(seq):
            common = min(_common_prefix(seq.tokens, other, len(seq.tokens) - 1), held)
            if not self.unified:
                # Whole pieces only: cells computed as this sequence would compute them itself.
                common -= common % self._piece_size
            if common > best:
                best, source = common, other
        if source is None or best - seq.n_past < MIN_PREFIX:
            return
        src = self.cache_slot if source is self.cache_tokens else self._slot_of(source)
        self.stats.prefix_tokens_reused += best - seq.n_past
        start, seq.n_past = seq.n_past, best
        yield Copy(src, seq.slot, start, best)

    def _prefix_sources(self, seq: Sequence) -> list[tuple[list[int], int]]:
        """(tokens, how many of them are in the KV cache) for each one seq may share with.

        Per-sequence: the prompt part only, as sampled tokens' cells were computed one by one."""
        found = [
            (s.tokens, s.n_past if self.unified else min(s.n_past, len(s.prompt)))
            for s in self.running
            if s is not seq
        ]
        if self.cache_tokens:
            found.append((self.cache_tokens, len(self.cache_tokens)))
        return found

    def _slot_of(self, tokens: list[int]) -> int:
        return next(s.slot for s in self.running if s.tokens is tokens)

    # -- after a decode --------------------------------------------------------------------

    def _sampled(self, decode: Decode, sampled: Sampled | None) -> Step:
        assert sampled is not None
        assert len(sampled) == len(decode.outputs) or (decode.draft and len(sampled) >= 1)
        for (_, seq), (token, eog, piece) in zip(decode.outputs, sampled, strict=False):
            seq.tokens.append(token)
            seq.decoded += 1
            self.stats.tokens_decoded += 1
            if eog:
                # bytes of an unfinished character are dropped, never sent as U+FFFD
                yield from self._finish(seq, "", 0, "end_turn")
                continue
            text = seq.utf8.decode(piece)
            if seq.decoded >= seq.sampling.max_tokens:
                yield from self._finish(seq, text, 1, "max_tokens")
            else:
                seq.sink(text, 1, None)

    def _finish(self, seq: Sequence, text: str, tokens: int, finish: str) -> Step:
        seq.finished = True
        seq.sink(text, tokens, finish)
        yield from self._release(seq)

    def _release(self, seq: Sequence) -> Step:
        # Keep the last finished prompt's cells: the next request sharing it starts warm. Only
        # those in the batch context: what the solo lane computed (the prompt's last token,
        # when it went there at once) is not.
        kept = min(len(seq.prompt), self.solo_from if seq is self.solo_seq else seq.n_past)
        if seq.finished and kept >= MIN_PREFIX:
            self.cache_tokens = seq.prompt[:kept]
            yield Copy(seq.slot, self.cache_slot, 0, kept)
        yield from self._free(seq)
        yield FreeSampler(seq)
        self.recent[seq.key] = seq.decoded
        if len(self.recent) > 10000:
            self.recent.pop(next(iter(self.recent)))
        if seq.cancelled and not seq.finished:
            self.stats.cancelled += 1

    def _free(self, seq: Sequence) -> Step:
        if self.solo_seq is seq:
            yield SoloClear()
            self.solo_seq = None
            self.lookup = Lookup()
        yield Free(seq.slot)  # (the cells are counted again before it leaves `running`)
        self.running.remove(seq)
        self.free_slots.append(seq.slot)


class Lookup:
    """Where each run of LOOKUP_NGRAM tokens last appeared in one sequence's tokens (which only
    grow), kept up to date as the answer grows; a draft is what followed the last such run the
    last time, one token longer than what the model kept of the previous draft (at least two;
    after a draft kept whole, up to `most`)."""

    def __init__(self) -> None:
        self.after: dict[tuple[int, ...], int] = {}  # a run -> where what followed it starts
        self.indexed = 0  # runs starting before this are in `after`
        self.length: int | None = None  # the next draft's, if the last was cut short

    def took(self, drafted: int, kept: int) -> None:
        self.length = None if kept == drafted else max(2, kept + 1)

    def draft(self, tokens: list[int], most: int) -> list[int]:
        n = LOOKUP_NGRAM
        if self.length is not None:
            most = min(most, self.length)
        # A run counts once a token follows it (the last run is the one looked up).
        for start in range(self.indexed, len(tokens) - n):
            self.after[tuple(tokens[start : start + n])] = start + n
        self.indexed = max(self.indexed, len(tokens) - n)
        at = self.after.get(tuple(tokens[-n:]))
        return [] if at is None else tokens[at : at + most]


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
