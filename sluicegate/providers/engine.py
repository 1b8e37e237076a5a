"""The embedded engine: one thread owns the llama context and batches every sequence.

Each step advances all decoding sequences by one token and fills the rest of the batch with
pieces of waiting prompts, so a new prompt never holds running streams hostage and a new
stream's first token never waits for other answers to finish (continuous batching through
llama.cpp's `llama_batch` with per-sequence ids and per-sequence KV cache removal).

Other threads talk to the engine only through `submit` and `cancel`; a cancelled sequence is
dropped before the next step and its KV cells are freed. If a llama.cpp call fails, the engine
stops for good: every sequence it holds ends with an error, and `submit` refuses at once.

A sequence that decodes alone may move to a solo lane: a second context on weights that are
faster one token at a time (the shipped Q4_1 file, where the batch runs on Q8_0). Its KV cells
move with it (a few ms), and move back as soon as another request arrives.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import llama_cpp
from llama_cpp import _internals as llm

from sluicegate import errors

log = logging.getLogger(__name__)

# Called on the engine thread for every sampled token: (text, tokens, finish or None).
Sink = Callable[[str, int, str | None], None]
# Shorter shared prefixes are recomputed: not worth a KV cache operation.
MIN_PREFIX = 8


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
    max_queue: int = 256


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
    sampler: Any = None
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
    samplers: int = 0  # sampler chains alive (0 when idle: nothing leaked)


class EngineFailed(RuntimeError):
    """The engine could not start (its warm-up failed)."""


def silence_llama_logs() -> None:
    """Send llama.cpp's own logging to Python's (debug level) instead of stderr."""
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


class SoloLane:
    """A one-sequence context on other weights, for a sequence that decodes alone."""

    def __init__(self, model: llm.LlamaModel, n_ctx: int, n_threads: int) -> None:
        p = llama_cpp.llama_context_default_params()
        p.n_ctx, p.n_seq_max, p.n_batch, p.n_ubatch = n_ctx, 1, 64, 64
        p.n_threads = p.n_threads_batch = n_threads
        p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.no_perf = True
        self.ctx = llm.LlamaContext(model=model, params=p, verbose=False)
        self.batch = llm.LlamaBatch(n_tokens=64, embd=0, n_seq_max=1, verbose=False)
        self.seq: Sequence | None = None

    def enter(self, ctx: Any, seq: Sequence) -> None:
        """Take `seq` in, with a copy of its cells (they stay in `ctx` too: its retained
        prompt is still found there)."""
        self.clear()
        _move_cells(ctx, seq.slot, self.ctx.ctx, 0)
        self.seq = seq

    def leave(self, ctx: Any) -> None:
        """Give the sequence back to `ctx` with every cell it has now."""
        assert self.seq is not None
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), self.seq.slot, -1, -1)
        _move_cells(self.ctx.ctx, 0, ctx, self.seq.slot)
        self.clear()

    def clear(self) -> None:
        # The cells' metadata only: wiping the buffer itself (data=True) costs tens of ms.
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx.ctx), False)
        self.seq = None

    def batch_of(self, token: int, pos: int) -> Any:
        """A batch of one token at `pos`, with its logits."""
        b = self.batch.batch
        _put(b, 0, token, pos, [0], True)
        b.n_tokens = 1
        return b

    def cells(self) -> int:
        mem = llama_cpp.llama_get_memory(self.ctx.ctx)
        return int(llama_cpp.llama_memory_seq_pos_max(mem, 0) + 1)


def _move_cells(src: Any, src_seq: int, dst: Any, dst_seq: int) -> None:
    size = llama_cpp.llama_state_seq_get_size(src, src_seq)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(src, buf, size, src_seq)
    if written == 0 or llama_cpp.llama_state_seq_set_data(dst, buf, written, dst_seq) == 0:
        raise RuntimeError("could not move a sequence's KV cells between contexts")


class Engine:
    """The scheduler thread around one llama context; see the module docstring."""

    def __init__(
        self, model: llm.LlamaModel, config: EngineConfig, solo_model: llm.LlamaModel | None = None
    ) -> None:
        self.model = model
        self.config = config
        self.n_ctx_seq = min(config.n_ctx, model.n_ctx_train())
        self._unified = config.kv == "unified"
        self.ctx = llm.LlamaContext(model=model, params=self._params(config), verbose=False)
        self.batch = llm.LlamaBatch(
            n_tokens=config.n_batch, embd=0, n_seq_max=config.n_parallel + 1, verbose=False
        )
        self.solo: SoloLane | None = None
        if solo_model is not None and config.solo and self._unified:
            self.solo = SoloLane(solo_model, self.n_ctx_seq, config.n_threads)
        self.stats = EngineStats()
        self.recent: dict[str, int] = {}
        self._buf = ctypes.create_string_buffer(256)
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._free_slots = list(range(config.n_parallel - 1, -1, -1))
        self._cache_slot = config.n_parallel  # one extra sequence id holds the prefix cache
        self._cache_tokens: list[int] = []
        self._cv = threading.Condition()
        self._closed = False
        # Why the engine stopped for good (a llama.cpp call failed), or None while it serves.
        self.failure: str | None = None
        self._kv_used = 0  # counted on the engine thread, the only one that calls llama.cpp
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sluicegate-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.failure is not None:
            self._thread.join(timeout=10)
            raise EngineFailed(f"the embedded engine could not start: {self.failure}")

    def _warm_up(self) -> None:
        """Run a prompt-sized and a token-sized batch once, so the first request is not the one
        that pages the weights in and sizes the compute buffers."""
        b = self.batch.batch
        for size in (min(64, self.config.n_batch), 1):
            for i in range(size):
                _put(b, i, self.model.token_bos(), i, [0], i == size - 1)
            b.n_tokens = size
            self._decode(self.ctx.ctx, b)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx.ctx), True)
        if self.solo is not None:
            self._decode(self.solo.ctx.ctx, self.solo.batch_of(self.model.token_bos(), 0))
            self.solo.clear()

    def _decode(self, ctx: Any, batch: Any) -> None:
        """llama_decode, with every failure raised (the one place a decode happens)."""
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    @staticmethod
    def _params(config: EngineConfig) -> Any:
        p = llama_cpp.llama_context_default_params()
        p.n_seq_max = config.n_parallel + 1
        p.kv_unified = config.kv == "unified"
        p.n_ctx = config.n_ctx if p.kv_unified else config.n_ctx * p.n_seq_max
        p.n_batch = p.n_ubatch = config.n_batch
        p.n_threads = p.n_threads_batch = config.n_threads
        # Measured on 2 cores: no faster with flash attention, and without it a sequence's
        # logits do not depend on its batch neighbours (only on where its cells lie).
        p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.no_perf = True
        return p

    # -- the public, thread-safe side --------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence, or refuse it at once (too long for the window, queue full)."""
        if not seq.prompt:
            raise errors.ValidationError("The prompt is empty.")
        total = len(seq.prompt) + seq.sampling.max_tokens
        if total > self.n_ctx_seq:
            raise errors.ValidationError(
                f"The prompt ({len(seq.prompt)} tokens) plus max_tokens "
                f"({seq.sampling.max_tokens}) is {total} tokens, over this model's "
                f"context window of {self.n_ctx_seq} tokens: "
                "shorten the prompt or lower max_tokens."
            )
        with self._cv:
            if self.failure is not None:
                raise errors.ServiceUnavailable(
                    f"The embedded model's engine has stopped ({self.failure}): restart sluicegate."
                )
            if self._closed:
                raise errors.ServiceUnavailable("The engine is shutting down.")
            if len(self._waiting) >= self.config.max_queue:
                raise errors.Throttled(
                    f"Too many requests are waiting ({self.config.max_queue}); retry shortly."
                )
            self._waiting.append(seq)
            self._cv.notify()

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence: it leaves the batch before the next step (or never starts)."""
        with self._cv:
            seq.cancelled = True
            self._cv.notify()

    def active(self) -> tuple[int, int]:
        """(sequences running, sequences queued)."""
        with self._cv:
            return len(self._running), len(self._waiting)

    def decoded(self, key: str) -> int | None:
        """Tokens sampled so far for a sequence, running or recently ended."""
        for seq in list(self._running):
            if seq.key == key:
                return seq.decoded
        return self.recent.get(key)

    def kv_bytes(self) -> int:
        """Memory the KV cache takes (f16 keys and values, every layer, every cell)."""
        m = self.model.model
        heads, kv_heads = llama_cpp.llama_model_n_head(m), llama_cpp.llama_model_n_head_kv(m)
        per_cell = llama_cpp.llama_model_n_layer(m) * 2 * llama_cpp.llama_model_n_embd(m)
        cells = self.config.n_ctx * (1 if self._unified else self.config.n_parallel + 1)
        return int(cells * per_cell * kv_heads // heads * 2)

    @property
    def alive(self) -> bool:
        """Whether the engine thread runs and can take requests."""
        return self.failure is None and self._thread.is_alive() and not self._closed

    def kv_cells_used(self) -> int:
        """Cells that sequences hold in the KV cache (0 when idle: nothing leaked), as the
        engine thread last counted them."""
        return self._kv_used

    def _count_cells(self) -> int:
        mem = llama_cpp.llama_get_memory(self.ctx.ctx)
        used = sum(
            llama_cpp.llama_memory_seq_pos_max(mem, s) + 1 for s in range(self.config.n_parallel)
        )
        return int(used) + (self.solo.cells() if self.solo is not None else 0)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # -- the engine thread -----------------------------------------------------------------

    def _loop(self) -> None:
        # Every llama call happens on this thread: its OpenMP team is the only one there is.
        try:
            self._warm_up()
        except Exception as exc:
            log.exception("the engine's warm-up failed")
            self.failure = f"warm-up failed: {exc}"
            self._ready.set()
            return
        self._ready.set()
        try:
            while self._wait_for_work():
                self._drop_cancelled()
                self._admit()
                if self._running:
                    self._step()
                self._kv_used = self._count_cells()
        except Exception as exc:
            # The context's state is unknown after a failed call: stop rather than guess.
            log.exception("the engine failed; ending every sequence it holds")
            self._stop_for_good(f"{type(exc).__name__}: {exc}")
        else:
            self._stop_for_good("the engine was closed")

    def _stop_for_good(self, reason: str) -> None:
        """End every sequence held with an error, without calling llama.cpp again."""
        with self._cv:
            self.failure = self.failure or reason
            held = [*self._running, *self._waiting]
            self._running.clear()
            self._waiting.clear()
        for seq in held:
            self._free_sampler(seq)
            if not seq.cancelled:
                seq.sink("", 0, "error")

    def _wait_for_work(self) -> bool:
        with self._cv:
            while not self._closed and not self._running and not self._waiting:
                self._cv.wait()
            return not self._closed

    def _drop_cancelled(self) -> None:
        with self._cv:
            gone = [s for s in self._waiting if s.cancelled]
            for s in gone:
                self._waiting.remove(s)
                self._free_sampler(s)  # a preempted sequence keeps its chain while it waits
        for s in [s for s in self._running if s.cancelled]:
            self._release(s)
        self.stats.cancelled += len(gone)

    def _admit(self) -> None:
        with self._cv:
            while self._waiting and self._free_slots:
                seq = self._waiting[0]
                if self._running and self._kv_needed() + seq.pending > self.config.n_ctx:
                    return  # the KV cache is full: wait for a running sequence to end
                self._waiting.popleft()
                if seq.sampler is None:
                    try:
                        seq.sampler = _sampler(seq.sampling, self.model.vocab)
                    except ValueError:  # a grammar llama.cpp refused: this sequence's fault
                        log.exception("sequence %s: no sampler", seq.key)
                        seq.finished = True
                        seq.sink("", 0, "error")
                        continue
                    self.stats.samplers += 1
                seq.slot = self._free_slots.pop()
                seq.admitted_at = seq.admitted_at or time.monotonic()
                self._running.append(seq)

    def _kv_needed(self) -> int:
        """Cells the running sequences and the prefix cache hold, plus one step's growth each
        (0 with per-sequence buffers: admission already checked that each one fits its own)."""
        if not self._unified:
            return 0
        return sum(s.n_past + 1 for s in self._running) + len(self._cache_tokens)

    def _step(self) -> None:
        if not self._unified:
            self._step_each()
            return
        if self.solo is not None and self._solo_step(self.solo):
            return
        if self._kv_needed() > self.config.n_ctx:
            self.drop_prefix_cache()
        while self._kv_needed() > self.config.n_ctx and len(self._running) > 1:
            self._preempt(self._running[-1])
        outputs = self._fill_batch()
        self._decode(self.ctx.ctx, self.batch.batch)
        self.stats.steps += 1
        for i, seq in outputs:
            self._sample(seq, i)

    def _step_each(self) -> None:
        """Per-sequence KV: each sequence in a decode call of its own, its prompt in pieces that
        start at multiples of the piece size whatever else runs (see EngineConfig.kv)."""
        piece = self._piece_size
        budget = self.config.prefill_chunk
        for seq in list(self._running):
            prefilling = seq.pending > 1
            if prefilling:
                if budget <= 0:
                    continue
                self._reuse_prefix(seq)
            end = min(len(seq.tokens), (seq.n_past // piece + 1) * piece)
            b = self.batch.batch
            for i, tok in enumerate(seq.tokens[seq.n_past : end]):
                _put(b, i, tok, seq.n_past + i, [seq.slot], False)
            take = b.n_tokens = end - seq.n_past
            b.logits[take - 1] = end == len(seq.tokens)
            self._decode(self.ctx.ctx, b)
            seq.n_past = end
            if prefilling:
                budget -= take
                self.stats.prompt_tokens += take
            if seq.pending == 0:
                self._sample(seq, take - 1)
        self.stats.steps += 1

    @property
    def _piece_size(self) -> int:
        return min(self.config.prefill_chunk, self.config.n_batch)

    def _solo_step(self, solo: SoloLane) -> bool:
        """Run this step in the solo lane if one sequence decodes alone; move it back first
        if others have come. Whether the step was taken."""
        alone = len(self._running) == 1 and not self._waiting and self._running[0].pending == 1
        if solo.seq is not None and not alone:
            solo.leave(self.ctx.ctx)
            self.stats.solo_moves += 1
        elif solo.seq is None and alone:
            solo.enter(self.ctx.ctx, self._running[0])
            self.stats.solo_moves += 1
        if solo.seq is None:
            return False
        seq = solo.seq
        self._decode(solo.ctx.ctx, solo.batch_of(seq.tokens[seq.n_past], seq.n_past))
        seq.n_past += 1
        self.stats.steps += 1
        self._sample(seq, 0, solo.ctx.ctx)
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Give the youngest sequence's cells to the others; it recomputes them when readmitted."""
        self._free(seq)
        seq.n_past = 0
        with self._cv:
            self._waiting.appendleft(seq)
        self.stats.preempted += 1

    def _fill_batch(self) -> list[tuple[int, Sequence]]:
        """Decoding sequences first (one token each), then prompt pieces in arrival order.

        A prompt that shares its next tokens with an earlier one being computed rides along:
        those tokens enter the batch once, tagged with both sequences.
        """
        b = self.batch.batch
        n, outputs = 0, []
        budget = self.config.prefill_chunk
        riders = self._plan_sharing()
        # Riders go after their hosts: once carried past the shared part, they go on alone.
        for seq in sorted(self._running, key=lambda s: (s.pending > 1, s.ride_upto > 0)):
            prefilling = seq.pending > 1
            if seq.n_past < seq.ride_upto:
                continue  # its host ran out of room this step: no point computing it twice
            take = min(seq.pending, self.config.n_batch - n, budget if prefilling else 1)
            if take <= 0:
                continue
            for tok in seq.tokens[seq.n_past : seq.n_past + take]:
                along = [r for r, upto in riders.get(id(seq), []) if r.n_past < upto]
                _put(b, n, tok, seq.n_past, [seq.slot, *(r.slot for r in along)], False)
                for r in [seq, *along]:
                    r.n_past += 1
                self.stats.prefix_tokens_reused += len(along)
                n += 1
            if prefilling:
                budget -= take
                self.stats.prompt_tokens += take
            if seq.pending == 0:
                b.logits[n - 1] = True
                outputs.append((n - 1, seq))
        b.n_tokens = n
        return outputs

    def _plan_sharing(self) -> dict[int, list[tuple[Sequence, int]]]:
        """Before any n_past moves (sources may only offer computed cells): take shared cells
        that exist, and seat each prompt that can ride along with an earlier one."""
        riders: dict[int, list[tuple[Sequence, int]]] = {}
        for i, seq in enumerate(self._running):
            seq.ride_upto = 0
            if seq.pending <= 1:
                continue
            self._reuse_prefix(seq)
            if not self._unified:
                continue  # a batch token may not belong to two per-sequence buffers
            for host in self._running[:i]:
                upto = _common_prefix(seq.tokens, host.tokens, len(seq.tokens) - 1)
                if host.ride_upto or host.n_past != seq.n_past or upto - seq.n_past < MIN_PREFIX:
                    continue
                riders.setdefault(id(host), []).append((seq, upto))
                seq.ride_upto = upto
                break
        return riders

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Share KV cells with whoever holds the longest computed common prefix (no compute,
        no copy: the cells get one more sequence id)."""
        best, source = seq.n_past, None
        for other, held in self._prefix_sources(seq):
            common = min(_common_prefix(seq.tokens, other, len(seq.tokens) - 1), held)
            if not self._unified:
                # Whole pieces only: cells computed as this sequence would compute them itself.
                common -= common % self._piece_size
            if common > best:
                best, source = common, other
        if source is None or best - seq.n_past < MIN_PREFIX:
            return
        src = self._cache_slot if source is self._cache_tokens else self._slot_of(source)
        self._copy_cells(src, seq.slot, seq.n_past, best)
        self.stats.prefix_tokens_reused += best - seq.n_past
        seq.n_past = best

    def _prefix_sources(self, seq: Sequence) -> list[tuple[list[int], int]]:
        """(tokens, how many of them are in the KV cache) for each one seq may share with.

        Per-sequence: the prompt part only, as sampled tokens' cells were computed one by one."""
        found = [
            (s.tokens, s.n_past if self._unified else min(s.n_past, len(s.prompt)))
            for s in self._running
            if s is not seq
        ]
        if self._cache_tokens:
            found.append((self._cache_tokens, len(self._cache_tokens)))
        return found

    def _slot_of(self, tokens: list[int]) -> int:
        return next(s.slot for s in self._running if s.tokens is tokens)

    def _sample(self, seq: Sequence, i: int, ctx: Any = None) -> None:
        token = llama_cpp.llama_sampler_sample(seq.sampler, ctx or self.ctx.ctx, i)
        seq.tokens.append(token)
        seq.decoded += 1
        self.stats.tokens_decoded += 1
        if llama_cpp.llama_vocab_is_eog(self.model.vocab, token):
            # bytes of an unfinished character are dropped, never sent as U+FFFD
            self._finish(seq, "", 0, "end_turn")
            return
        text = seq.utf8.decode(self._piece(token))
        if seq.decoded >= seq.sampling.max_tokens:
            self._finish(seq, text, 1, "max_tokens")
        else:
            seq.sink(text, 1, None)

    def _piece(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(
            self.model.vocab, token, self._buf, len(self._buf), 0, False
        )
        return self._buf.raw[:n]

    def _finish(self, seq: Sequence, text: str, tokens: int, finish: str) -> None:
        seq.finished = True
        seq.sink(text, tokens, finish)
        self._release(seq)

    def _release(self, seq: Sequence) -> None:
        if seq.finished and seq.n_past >= len(seq.prompt) >= MIN_PREFIX:
            self._retain_prompt(seq)
        self._free(seq)
        self._free_sampler(seq)
        self.recent[seq.key] = seq.decoded
        if len(self.recent) > 10000:
            self.recent.pop(next(iter(self.recent)))
        if seq.cancelled and not seq.finished:
            self.stats.cancelled += 1
        log.debug("sequence %s released after %d tokens", seq.key, seq.decoded)

    def _retain_prompt(self, seq: Sequence) -> None:
        """Keep the last finished prompt's cells, so the next request sharing it starts warm."""
        self._copy_cells(seq.slot, self._cache_slot, 0, len(seq.prompt))
        self._cache_tokens = list(seq.prompt)

    def _copy_cells(self, src: int, dst: int, p0: int, p1: int) -> None:
        """Give `dst` the cells of `src` for positions [p0, p1) (dst's later ones are dropped).

        In a unified buffer the cells just gain a sequence id. Between per-sequence buffers
        llama.cpp copies whole buffers only: copy all, then drop what lies past p1 (the common
        prefix makes dst's own cells before p0 the same as src's)."""
        mem = llama_cpp.llama_get_memory(self.ctx.ctx)
        llama_cpp.llama_memory_seq_rm(mem, dst, p0, -1)
        if self._unified:
            llama_cpp.llama_memory_seq_cp(mem, src, dst, p0, p1)
        else:
            llama_cpp.llama_memory_seq_cp(mem, src, dst, -1, -1)
            llama_cpp.llama_memory_seq_rm(mem, dst, p1, -1)

    def drop_prefix_cache(self) -> None:
        """Forget the retained prompt (on the engine thread: call between steps only)."""
        mem = llama_cpp.llama_get_memory(self.ctx.ctx)
        llama_cpp.llama_memory_seq_rm(mem, self._cache_slot, -1, -1)
        self._cache_tokens = []

    def _free(self, seq: Sequence) -> None:
        if self.solo is not None and self.solo.seq is seq:
            self.solo.clear()
        mem = llama_cpp.llama_get_memory(self.ctx.ctx)
        llama_cpp.llama_memory_seq_rm(mem, seq.slot, -1, -1)
        self._kv_used = self._count_cells()  # before it leaves: once idle, the count is final
        self._running.remove(seq)
        with self._cv:
            self._free_slots.append(seq.slot)

    def _free_sampler(self, seq: Sequence) -> None:
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
            seq.sampler = None
            self.stats.samplers -= 1


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _put(b: Any, n: int, token: int, pos: int, slots: list[int], logits: bool) -> None:
    b.token[n] = token
    b.pos[n] = pos
    b.n_seq_id[n] = len(slots)
    for i, slot in enumerate(slots):
        b.seq_id[n][i] = slot
    b.logits[n] = logits


def _sampler(s: Sampling, vocab: Any) -> Any:
    grammar = None if s.grammar is None else grammar_sampler(vocab, s.grammar)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(x: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, x)

    if grammar is not None:
        # First in the chain: the other samplers then choose among allowed tokens only.
        add(grammar)

    if s.temperature <= 0:
        add(llama_cpp.llama_sampler_init_greedy())
        return chain
    if s.top_k > 0:
        add(llama_cpp.llama_sampler_init_top_k(s.top_k))
    if s.top_p < 1.0:
        add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
    add(llama_cpp.llama_sampler_init_temp(s.temperature))
    seed = s.seed if s.seed is not None else secrets.randbits(32)
    add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


def grammar_sampler(vocab: Any, grammar: str) -> Any:
    """llama.cpp's grammar sampler for a GBNF text; ValueError if llama.cpp cannot parse it."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise ValueError("llama.cpp could not parse the grammar")
    return sampler
