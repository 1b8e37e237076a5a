"""The embedded engine: one thread drives the scheduler's plan through the llama.cpp layer.

Each step advances all decoding sequences by one token and fills the rest of the batch with
pieces of waiting prompts, so a new prompt never holds running streams hostage and a new
stream's first token never waits for other answers to finish (continuous batching through
llama.cpp's `llama_batch` with per-sequence ids and per-sequence KV cache removal).

Three parts: the policy (`scheduler.py`: admission, batches, preemption, prefix sharing, the
solo lane, as operations; no llama.cpp), the llama.cpp layer (`llamacpp.py`: the only code that
calls it), and this thread, which drives both and talks to the asyncio side. Other threads talk
to the engine only through `submit` and `cancel`; a cancelled sequence is dropped before the
next step and its KV cells are freed. If a llama.cpp call fails, the engine stops for good:
every sequence it holds ends with an error, and `submit` refuses at once.

A sequence that decodes alone may move to a solo lane: a second context on weights that are
faster one token at a time (the shipped Q4_1 file, where the batch runs on Q8_0). Its KV cells
move with it (a few ms), and move back as soon as another request arrives.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque

from llama_cpp import _internals as llm

from sluicegate import errors
from sluicegate.providers.llamacpp import Llama, SoloLane, grammar_sampler, silence_llama_logs
from sluicegate.providers.scheduler import (
    MIN_PREFIX,
    EngineConfig,
    EngineStats,
    Sampling,
    Scheduler,
    Sequence,
    Sink,
    Step,
)

log = logging.getLogger(__name__)

__all__ = [
    "MIN_PREFIX",
    "Engine",
    "EngineConfig",
    "EngineFailed",
    "EngineStats",
    "Sampling",
    "Sequence",
    "Sink",
    "SoloLane",
    "grammar_sampler",
    "silence_llama_logs",
]


# The engine thread takes the GIL back after every llama.cpp call; while the event loop holds it,
# the wait lasts up to Python's switch interval (5 ms by default), per step. A/B on a 2-core EPYC
# (sluicegate bench, alternated): 8 streams 126 against 116 tok/s, first token p99 145 against
# 178 ms; 32 streams 144 against 139.
SWITCH_INTERVAL = 0.0005


class EngineFailed(RuntimeError):
    """The engine could not start (its warm-up failed)."""


class Engine:
    """The thread around one llama context and its scheduler; see the module docstring."""

    layer: type[Llama] = Llama  # (tests inject faults in a subclass's decode)

    def __init__(
        self, model: llm.LlamaModel, config: EngineConfig, solo_model: llm.LlamaModel | None = None
    ) -> None:
        self.model = model
        self.config = config
        self.llama = self.layer(model, config, EngineStats(), solo_model)
        self.n_ctx_seq = self.llama.n_ctx_seq
        self.sched = Scheduler(config, self.n_ctx_seq, solo=self.llama.solo is not None)
        self.llama.stats = self.stats = self.sched.stats
        self._cv = threading.Condition()
        self._closed = False
        self._expected = 0  # requests announced and not yet submitted (being tokenized)
        self._arrived = 0.0  # when the last request was announced or submitted
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        # Why the engine stopped for good (a llama.cpp call failed), or None while it serves.
        self.failure: str | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sluicegate-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.failure is not None:
            self._thread.join(timeout=10)
            raise EngineFailed(f"the embedded engine could not start: {self.failure}")

    # -- what tests and introspection look at ------------------------------------------------

    @property
    def solo(self) -> SoloLane | None:
        return self.llama.solo

    @property
    def recent(self) -> dict[str, int]:
        return self.sched.recent

    @property
    def _waiting(self) -> deque[Sequence]:
        return self.sched.waiting

    @property
    def _running(self) -> list[Sequence]:
        return self.sched.running

    def _piece(self, token: int) -> bytes:
        return self.llama.piece(token)

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
            if len(self.sched.waiting) >= self.config.max_queue:
                raise errors.Throttled(
                    f"Too many requests are waiting ({self.config.max_queue}); retry shortly."
                )
            self.sched.waiting.append(seq)
            self._arrived = time.monotonic()
            self._cv.notify()

    def announce(self) -> None:
        """A request is on its way (its prompt is being tokenized): an idle engine waits a
        little for it to join the first step (EngineConfig.gather_ms). Each announcement is
        followed by one `withdraw`, once the request is submitted or given up."""
        with self._cv:
            self._expected += 1
            self._arrived = time.monotonic()

    def withdraw(self) -> None:
        with self._cv:
            self._expected -= 1
            self._cv.notify()

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence: it leaves the batch before the next step (or never starts)."""
        with self._cv:
            seq.cancelled = True
            self._cv.notify()

    def active(self) -> tuple[int, int]:
        """(sequences running, sequences queued)."""
        with self._cv:
            return len(self.sched.running), len(self.sched.waiting)

    def decoded(self, key: str) -> int | None:
        """Tokens sampled so far for a sequence, running or recently ended."""
        for seq in list(self.sched.running):
            if seq.key == key:
                return seq.decoded
        return self.sched.recent.get(key)

    def kv_bytes(self) -> int:
        return self.llama.kv_bytes()

    @property
    def alive(self) -> bool:
        """Whether the engine thread runs and can take requests."""
        return self.failure is None and self._thread.is_alive() and not self._closed

    def kv_cells_used(self) -> int:
        """Cells that sequences hold in the KV cache (0 when idle: nothing leaked), as the
        engine thread last counted them."""
        return self.llama.kv_used

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # -- the engine thread -----------------------------------------------------------------

    def _loop(self) -> None:
        # Every llama call happens on this thread: its OpenMP team is the only one there is.
        try:
            self.llama.warm_up()
        except Exception as exc:
            log.exception("the engine's warm-up failed")
            self.failure = f"warm-up failed: {exc}"
            self._ready.set()
            return
        self._ready.set()
        try:
            while self._wait_for_work():
                with self._cv:  # `submit` adds to the queue from other threads
                    self._carry_out(self.sched.drop_cancelled())
                    self._admit()
                if self.sched.running:
                    self._carry_out(self.sched.step())
                self.llama.kv_used = self.llama.count_cells()
        except Exception as exc:
            # The context's state is unknown after a failed call: stop rather than guess.
            log.exception("the engine failed; ending every sequence it holds")
            self._stop_for_good(f"{type(exc).__name__}: {exc}")
        else:
            self._stop_for_good("the engine was closed")

    def _carry_out(self, plan: Step) -> None:
        """Each operation of a plan through the llama.cpp layer; what a decode sampled goes
        back into the plan."""
        try:
            op = next(plan)
            while True:
                op = plan.send(self.llama.run(op))
        except StopIteration:
            pass

    def _admit(self) -> None:
        while (seq := self.sched.next_admission()) is not None:
            if self.llama.start(seq):
                self.sched.admit(seq, time.monotonic())
            else:
                self.sched.refuse(seq)

    def _stop_for_good(self, reason: str) -> None:
        """End every sequence held with an error, without calling llama.cpp's context again."""
        with self._cv:
            self.failure = self.failure or reason
            held = self.sched.held()
        for seq in held:
            self.llama.free_sampler(seq)
            if not seq.cancelled:
                seq.sink("", 0, "error")

    def _wait_for_work(self) -> bool:
        with self._cv:
            while not self._closed and not self.sched.running and not self.sched.waiting:
                self._cv.wait()
            if not self.sched.running and self._expected > 0:
                # Idle, and others are on their way: let them join the first step while they
                # keep coming (a window from the last arrival, within a bound in all).
                window, most = self.config.gather_ms / 1000, self.config.gather_max_ms / 1000
                bound = time.monotonic() + most
                while self._expected > 0 and not self._closed:
                    left = min(self._arrived + window, bound) - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            return not self._closed

    def drop_prefix_cache(self) -> None:
        """Forget the retained prompt (on the engine thread: call between steps only)."""
        self._carry_out(self.sched.drop_prefix_cache())
