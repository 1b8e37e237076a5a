"""The one layer that calls llama.cpp: it carries out the scheduler's operations on a context
(and the solo lane's), samples, and counts cells. Called from the engine thread only."""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as llm

from sluicegate.providers.sampling import Sampler
from sluicegate.providers.scheduler import (
    Copy,
    Decode,
    EngineConfig,
    EngineStats,
    Free,
    FreeSampler,
    Op,
    Sampled,
    Sampling,
    Sequence,
    SoloClear,
    SoloEnter,
    SoloLeave,
    SoloTrim,
)

log = logging.getLogger(__name__)


def silence_llama_logs() -> None:
    """Send llama.cpp's own logging to Python's (debug level) instead of stderr."""
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


class SoloLane:
    """A one-sequence context on other weights, for a sequence that decodes alone."""

    def __init__(self, model: llm.LlamaModel, n_ctx: int, n_threads: int, flash: int) -> None:
        """`flash`: the batch context's flash attention type (its cells' layout follows it,
        and cells move between the two)."""
        p = llama_cpp.llama_context_default_params()
        p.n_ctx, p.n_seq_max, p.n_batch, p.n_ubatch = n_ctx, 1, 64, 64
        p.n_threads = p.n_threads_batch = n_threads
        p.flash_attn_type = flash
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

    def trim(self, p0: int) -> None:
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx.ctx), 0, p0, -1)

    def cells(self) -> int:
        mem = llama_cpp.llama_get_memory(self.ctx.ctx)
        return int(llama_cpp.llama_memory_seq_pos_max(mem, 0) + 1)


class Threads:
    """How many threads decodes use (the batch context's and the solo lane's alike): all the
    engine was given, or one while the cores are shared. llama.cpp's threads spin at every
    barrier; with another busy process on the same cores, a thread waits a whole time slice
    for its partner and a step can take 100 times longer. Twice a second a look at /proc says
    how many cores other processes keep busy: a core's worth or so, and decodes go down to one
    thread (which never waits for another) before the first stall; under half a core, back up.
    Each decode is also timed (by context and batch size class): steps at full width much
    slower than they were also send it down, and where /proc says nothing, a step at full
    width is tried now and then (backing off while it loses) to find the way back up."""

    SLOWER = 3.0  # steps this many times slower than the best seen: the cores are shared
    STALLED = 10.0  # one step this many times slower: shared, no need to wait for more
    ALPHA = 0.3  # weight of the newest step in each running mean
    FIRST_PROBE, LAST_PROBE = 2.0, 30.0  # seconds between probes at full width, doubling

    BUSY = 0.75  # other processes use this many cores: ours are shared (a client's share
    QUIET = 0.5  # of the cores stays below); under this many, the cores are free again
    LOOK_EVERY = 0.5  # seconds between looks at what other processes use

    def __init__(
        self,
        most: int,
        clock: Any = time.monotonic,
        others: Callable[[], float | None] | None = None,
    ) -> None:
        self.most = most
        # Cores other processes used since the last call (None: cannot tell; then a step at
        # full width is tried instead, which costs a stalled step each time).
        self.others = others or OtherLoad()
        self.n = most
        self.clock = clock
        self.mean: dict[tuple[int, tuple[bool, int]], float] = {}
        self.best: dict[tuple[bool, int], float] = {}
        self.probe_at = 0.0
        self.look_at = 0.0
        self.blind = True  # until the first look tells what other processes use
        self.backoff = self.FIRST_PROBE
        self.switches = 0

    def choose(self) -> int:
        """The thread count for the next decode (of any context: the cores are the same)."""
        now = self.clock()
        if now >= self.look_at:
            self.look_at = now + self.LOOK_EVERY
            load = self.others()
            if load is not None:
                self.blind = False
                if self.n == self.most and self.most > 1 and load >= self.BUSY:
                    self._go(1)  # before the first stall
                elif self.n != self.most and load < self.QUIET:
                    self._go(self.most)
        if self.blind and self.n != self.most and now >= self.probe_at:
            return self.most  # a probe: does full width win again?
        return self.n

    def record(self, n: int, solo: bool, rows: int, seconds: float) -> None:
        size = (solo, _size_class(rows))
        key = (n, size)
        old = self.mean.get(key)
        self.mean[key] = seconds if old is None else old + self.ALPHA * (seconds - old)
        if n == self.most and self.n == self.most:
            best = self.best.get(size)
            self.best[size] = self.mean[key] if best is None else min(best, self.mean[key])
            stalled = seconds > self.STALLED * self.best[size]
            if self.most > 1 and (stalled or self.mean[key] > self.SLOWER * self.best[size]):
                self._go(1)
        elif n == self.most and self.blind:  # a probe from one thread
            one = self.mean.get((1, size))
            if one is not None and seconds < one:
                self.mean[key] = seconds
                self.backoff = self.FIRST_PROBE
                self._go(self.most)
            else:
                self.backoff = min(self.backoff * 2, self.LAST_PROBE)
                self.probe_at = self.clock() + self.backoff

    def _go(self, n: int) -> None:
        # The means at the new width describe another time (the stalls, or a quiet machine).
        self.mean = {k: v for k, v in self.mean.items() if k[0] != n}
        self.n = n
        self.switches += 1
        self.probe_at = self.clock() + self.backoff


class OtherLoad:
    """Cores that processes other than this one kept busy since the last call, from /proc
    (None where there is none)."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._sample()

    def __call__(self) -> float | None:
        now = self._sample()
        if now is None or self.last is None:
            self.last = now
            return None
        (t0, busy0, own0), (t1, busy1, own1) = self.last, now
        self.last = now
        if t1 - t0 <= 0:
            return None
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / self.hz / (t1 - t0)

    @staticmethod
    def _sample() -> tuple[float, int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
        # user..steal, without guest time (already counted in user)
        busy = sum(fields[:8]) - idle
        return time.monotonic(), busy, int(own[11]) + int(own[12])  # utime, stime


def _size_class(rows: int) -> int:
    """Steps whose row counts are within 2x of each other: their times compare. (Where a row
    more costs as much as the first, as on AVX2 with Q8_0, 8 rows take 3x one row: in one
    class, that read as shared cores at every batch and halved 8 streams.)"""
    return min(rows.bit_length(), 9)


def _move_cells(src: Any, src_seq: int, dst: Any, dst_seq: int) -> None:
    size = llama_cpp.llama_state_seq_get_size(src, src_seq)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(src, buf, size, src_seq)
    if written == 0 or llama_cpp.llama_state_seq_set_data(dst, buf, written, dst_seq) == 0:
        raise RuntimeError("could not move a sequence's KV cells between contexts")


class Llama:
    """A context (n_parallel sequences and the prefix cache) and its batch, an optional solo
    lane, and the sampler chains: everything the engine asks of llama.cpp."""

    def __init__(
        self,
        model: llm.LlamaModel,
        config: EngineConfig,
        stats: EngineStats,
        solo_model: llm.LlamaModel | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.stats = stats
        self.unified = config.kv == "unified"
        params = context_params(config)
        self.ctx = llm.LlamaContext(model=model, params=params, verbose=False)
        self.batch = llm.LlamaBatch(
            n_tokens=config.n_batch, embd=0, n_seq_max=config.n_parallel + 1, verbose=False
        )
        self.n_ctx_seq = min(config.n_ctx, model.n_ctx_train())
        self.solo: SoloLane | None = None
        if solo_model is not None and config.solo and self.unified:
            self.solo = SoloLane(
                solo_model, self.n_ctx_seq, config.n_threads, params.flash_attn_type
            )
        self.kv_used = 0  # as last counted, after every change to the cells
        self.threads = Threads(config.n_threads)
        self._width: dict[int, int] = {}  # threads each context is set to, by its address
        self._buf = ctypes.create_string_buffer(256)
        self._vocab = (model.n_vocab(),)

    def warm_up(self) -> None:
        """Run a prompt-sized and a token-sized batch once, so the first request is not the one
        that pages the weights in and sizes the compute buffers."""
        b = self.batch.batch
        for size in (min(64, self.config.n_batch), 1):
            for i in range(size):
                _put(b, i, (self.model.token_bos(), i, (0,), i == size - 1))
            b.n_tokens = size
            self._decode(self.ctx.ctx, b)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx.ctx), True)
        if self.solo is not None:
            sb = self.solo.batch.batch
            _put(sb, 0, (self.model.token_bos(), 0, (0,), True))
            sb.n_tokens = 1
            self._decode(self.solo.ctx.ctx, sb)
            self.solo.clear()

    def _decode(self, ctx: Any, batch: Any) -> None:
        """llama_decode, with every failure raised (the one place a decode happens)."""
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    # -- carrying out the scheduler's operations ------------------------------------------

    def run(self, op: Op) -> Sampled | None:
        match op:
            case Decode():
                return self.decode(op)
            case Free(slot):
                llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
                self.kv_used = self.count_cells()
            case Copy(src, dst, p0, p1):
                self.copy(src, dst, p0, p1)
            case SoloEnter(seq):
                assert self.solo is not None
                self.solo.enter(self.ctx.ctx, seq)
            case SoloLeave():
                assert self.solo is not None
                self.solo.leave(self.ctx.ctx)
            case SoloClear():
                assert self.solo is not None
                self.solo.clear()
            case SoloTrim(p0):
                assert self.solo is not None
                self.solo.trim(p0)
            case FreeSampler(seq):
                self.free_sampler(seq)
        return None

    def decode(self, op: Decode) -> Sampled:
        solo = self.solo if op.solo else None
        ctx = solo.ctx.ctx if solo is not None else self.ctx.ctx
        b = solo.batch.batch if solo is not None else self.batch.batch
        for n, row in enumerate(op.rows):
            _put(b, n, row)
        b.n_tokens = len(op.rows)
        if self.config.adaptive_threads:
            width = self.threads.choose()
            if self._width.get(id(ctx)) != width:
                llama_cpp.llama_set_n_threads(ctx, width, width)
                self._width[id(ctx)] = width
            started = time.perf_counter()
            self._decode(ctx, b)
            self.threads.record(width, op.solo, len(op.rows), time.perf_counter() - started)
        else:
            self._decode(ctx, b)
        if not op.draft:
            return [self.sample(seq, i, ctx) for i, seq in op.outputs]
        sampled: Sampled = []
        for i, seq in op.outputs:
            token, eog, piece = self.sample(seq, i, ctx)
            sampled.append((token, eog, piece))
            if eog or i + 1 == len(op.rows) or op.rows[i + 1][0] != token:
                break  # the draft's next token is not the model's: the rest is not computed
        return sampled

    def sample(self, seq: Sequence, i: int, ctx: Any) -> tuple[int, bool, bytes]:
        if isinstance(seq.sampler, Sampler):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), self._vocab)
            token = seq.sampler(logits)
        else:
            token = int(llama_cpp.llama_sampler_sample(seq.sampler, ctx, i))
        if llama_cpp.llama_vocab_is_eog(self.model.vocab, token):
            return token, True, b""
        return token, False, self.piece(token)

    def piece(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(
            self.model.vocab, token, self._buf, len(self._buf), 0, False
        )
        return self._buf.raw[:n]

    def copy(self, src: int, dst: int, p0: int, p1: int) -> None:
        """Give `dst` the cells of `src` for positions [p0, p1) (dst's later ones are dropped).

        In a unified buffer the cells just gain a sequence id. Between per-sequence buffers
        llama.cpp copies whole buffers only: copy all, then drop what lies past p1 (the common
        prefix makes dst's own cells before p0 the same as src's)."""
        mem = self._memory
        llama_cpp.llama_memory_seq_rm(mem, dst, p0, -1)
        if self.unified:
            llama_cpp.llama_memory_seq_cp(mem, src, dst, p0, p1)
        else:
            llama_cpp.llama_memory_seq_cp(mem, src, dst, -1, -1)
            llama_cpp.llama_memory_seq_rm(mem, dst, p1, -1)

    @property
    def _memory(self) -> Any:
        return llama_cpp.llama_get_memory(self.ctx.ctx)

    def count_cells(self) -> int:
        mem = self._memory
        used = sum(
            llama_cpp.llama_memory_seq_pos_max(mem, s) + 1 for s in range(self.config.n_parallel)
        )
        return int(used) + (self.solo.cells() if self.solo is not None else 0)

    # -- samplers --------------------------------------------------------------------------

    def start(self, seq: Sequence) -> bool:
        """Give a sequence its sampler chain (a preempted one keeps its own); False if
        llama.cpp refuses it (a grammar it cannot parse)."""
        if seq.sampler is not None:
            return True
        try:
            seq.sampler = sampler(seq.sampling, self.model.vocab)
        except ValueError:
            log.exception("sequence %s: no sampler", seq.key)
            return False
        self.stats.samplers += 1
        return True

    def free_sampler(self, seq: Sequence) -> None:
        if seq.sampler is not None:
            if not isinstance(seq.sampler, Sampler):
                llama_cpp.llama_sampler_free(seq.sampler)
            seq.sampler = None
            self.stats.samplers -= 1

    def kv_bytes(self) -> int:
        """Memory the KV cache takes (f16 keys and values, every layer, every cell)."""
        m = self.model.model
        heads, kv_heads = llama_cpp.llama_model_n_head(m), llama_cpp.llama_model_n_head_kv(m)
        per_cell = llama_cpp.llama_model_n_layer(m) * 2 * llama_cpp.llama_model_n_embd(m)
        cells = self.config.n_ctx * (1 if self.unified else self.config.n_parallel + 1)
        return int(cells * per_cell * kv_heads // heads * 2)


def context_params(config: EngineConfig) -> Any:
    p = llama_cpp.llama_context_default_params()
    p.n_seq_max = config.n_parallel + 1
    p.kv_unified = config.kv == "unified"
    p.n_ctx = config.n_ctx if p.kv_unified else config.n_ctx * p.n_seq_max
    p.n_batch = p.n_ubatch = config.n_batch
    p.n_threads = p.n_threads_batch = config.n_threads
    # Flash attention: faster steps with many sequences (EngineConfig.flash_attn); without it
    # a sequence's logits do not depend on its batch neighbours, which the per-sequence
    # layout promises.
    on = config.flash_attn and p.kv_unified
    p.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if on else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    p.no_perf = True
    return p


def _put(b: Any, n: int, row: tuple[int, int, tuple[int, ...], bool]) -> None:
    token, pos, slots, logits = row
    b.token[n] = token
    b.pos[n] = pos
    b.n_seq_id[n] = len(slots)
    for i, slot in enumerate(slots):
        b.seq_id[n][i] = slot
    b.logits[n] = logits


def sampler(s: Sampling, vocab: Any) -> Any:
    """Our numpy sampler where it gives the same distribution faster (sampling.py): no top_k,
    no grammar; llama.cpp's chain otherwise."""
    if s.grammar is None and s.top_k <= 0:
        return Sampler(s.temperature, s.top_p, s.seed)
    return sampler_chain(s, vocab)


def sampler_chain(s: Sampling, vocab: Any) -> Any:
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
