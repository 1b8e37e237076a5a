"""The Gateway: model ids to providers, and the registry of generations with their metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, Callable
from typing import Any

from sluicegate import accesslog, errors, telemetry
from sluicegate.bus import bus_for
from sluicegate.config import ProviderName, Settings
from sluicegate.events import ChatRequest, Event
from sluicegate.generation import Generation, Meter, StreamFn
from sluicegate.metrics import GatewayMetrics
from sluicegate.providers.base import Provider

KEEP_ENDED = 1000
# Stop sequences are matched at every token: more than this in all is refused before it starts.
MAX_STOP_CHARS = 64 * 1024


class Gateway:
    """Starts every Generation, whatever door the request came in by."""

    def __init__(self, settings: Settings, providers: dict[ProviderName, Provider]) -> None:
        self.settings = settings
        self.providers = providers
        self.metrics = GatewayMetrics()
        self.generations: OrderedDict[str, Generation] = OrderedDict()
        self.ended: OrderedDict[str, Generation] = OrderedDict()  # those kept, in end order
        self._ended_bytes = 0
        # Live (queued or running) generations by caller address, held to a cap so that one
        # client cannot take every slot and queue place of a provider.
        self.live_by_caller: Counter[str] = Counter()
        self.bus = bus_for(settings, self.generations)
        self.draining = False
        self.tracing = telemetry.tracing(settings)  # None while tracing is off
        self.metrics.add_gauges("sluicegate_ended", self.ended_figures)
        local = providers.get("local")
        engine = getattr(local, "engine", None)
        if engine is not None:
            self.metrics.add_gauges("sluicegate_engine", lambda: engine_figures(engine))

    def provider(self, model_id: str) -> Provider:
        name = self.settings.provider_for(model_id)
        if name is None or name not in self.providers:
            raise errors.NotFound(f"No provider serves model id {model_id!r}: check the routes.")
        return self.providers[name]

    async def start(
        self, request: ChatRequest, *, route: str, owner: str = "", caller: str = ""
    ) -> Generation:
        """Create and start a generation; raises SluicegateError if it is refused.

        `caller` is the client's address (after a trusted proxy's X-Forwarded-For): what the
        per-caller cap counts, since an owner is only what the client claims without a key."""
        if self.draining:
            raise errors.ServiceUnavailable(
                "This server is shutting down and starts no new generations: retry (on "
                "another replica, if there is one)."
            )
        cap = self.settings.max_generations_per_caller
        if cap and self.live_by_caller[caller] >= cap:
            raise errors.Throttled(
                f"This client has {cap} generations queued or running, its limit "
                "(max_generations_per_caller): wait for one to end."
            )
        stop_chars = sum(len(s) for s in request.stop_sequences)
        if stop_chars > MAX_STOP_CHARS:
            raise errors.ValidationError(
                f"stop_sequences: {len(request.stop_sequences)} sequences of {stop_chars} "
                f"characters in all, over sluicegate's limit of {MAX_STOP_CHARS} characters."
            )
        provider = self.provider(request.model)
        m = self.metrics
        gen = Generation(
            request,
            self._stream_fn(provider),
            route=route,
            provider=provider.name,
            owner=owner,
            on_token_gap=m.gap,
            on_end=self._ended,
        )
        # Not a closure over gen: gen -> meter -> it -> gen would be a cycle, which leaves every
        # generation's log to the full garbage collection (pauses of tens of ms) to free.
        route, name = gen.route, gen.provider
        gen.meter.on_late_usage = lambda tokens: m.late_output(route, name, tokens)
        gen.caller = caller
        self.live_by_caller[caller] += 1
        # Registered while it waits for the provider too: a drain must see queued ones.
        self.generations[gen.id] = gen  # ended ones are forgotten as each one ends (_ended)
        tracing = self.tracing
        span = tracing.begin(gen, self._upstream(request).model) if tracing else None
        try:
            await gen.start()
        except BaseException as exc:
            if tracing:
                tracing.refused(gen, exc)
            self._release(gen)
            self.generations.pop(gen.id, None)
            raise
        finally:
            if tracing:
                tracing.detach(span)
        m.started(gen)
        self.bus.announce(gen)
        accesslog.started(gen)
        return gen

    async def drain(self, seconds: float, give_up: Callable[[], bool] = lambda: False) -> int:
        """Start nothing new; let live generations end for up to `seconds` (or until
        `give_up`), then interrupt the rest with ServiceUnavailable. Returns how many were."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        # Polled: `give_up` (a second Ctrl-C) is a flag, not something to await.
        while self._live() and loop.time() < deadline and not give_up():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        cut = self._live()
        for gen in cut:
            gen.interrupt(
                errors.ServiceUnavailable(
                    f"The server shut down before this generation finished (it waited "
                    f"{seconds:g} s for it): {gen.usage.output_tokens} tokens were sent."
                )
            )
        for gen in cut:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gen.wait(), 2.0)
        return len(cut)

    def _live(self) -> list[Generation]:
        return [g for g in self.generations.values() if not g.done]

    def unready(self) -> dict[str, str]:
        """Each provider that cannot serve now, and why (empty: ready)."""
        found = {name: p.unready() for name, p in self.providers.items()}
        return {name: why for name, why in found.items() if why is not None}

    async def count_tokens(self, request: ChatRequest) -> int:
        provider = self.provider(request.model)
        return await provider.count_tokens(self._upstream(request))

    def _upstream(self, request: ChatRequest) -> ChatRequest:
        """The request as its provider gets it: with the route's upstream model id, if any."""
        route = self.settings.route_for(request.model)
        if route is None or route.model is None:
            return request
        return dataclasses.replace(request, model=route.model)

    def _stream_fn(self, provider: Provider) -> StreamFn:
        def stream(request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
            return provider.stream(self._upstream(request), meter)

        return stream

    def _ended(self, gen: Generation) -> None:
        self._release(gen)
        self.metrics.finished(gen)
        accesslog.ended(gen)
        if self.tracing:
            self.tracing.ended(gen)
        self._forget_old(gen)

    def _release(self, gen: Generation) -> None:
        if gen.caller is not None:
            left = self.live_by_caller[gen.caller] - 1
            if left > 0:
                self.live_by_caller[gen.caller] = left
            else:
                del self.live_by_caller[gen.caller]
            gen.caller = None

    def _forget_old(self, gen: Generation) -> None:
        """Ended generations stay for resume and introspection, the latest ended first, within
        a count, a byte budget and an age (settings.ended_*); the rest are forgotten, oldest
        first: a few steps per end, however many are kept."""
        s = self.settings
        self.ended[gen.id] = gen
        self._ended_bytes += gen.log_bytes
        now = time.monotonic()
        while self.ended:
            key, oldest = next(iter(self.ended.items()))
            old = now - (oldest.timings.ended or now) >= s.ended_seconds
            if not old and len(self.ended) <= KEEP_ENDED and self._ended_bytes <= s.ended_bytes:
                break
            del self.ended[key]
            self._ended_bytes -= oldest.log_bytes
            self.generations.pop(key, None)

    def ended_figures(self) -> dict[str, float]:
        return {"generations": len(self.ended), "log_bytes": self._ended_bytes}

    def describe(self, gen: Generation) -> dict[str, Any]:
        """A generation's state, for the introspection route and tests."""
        engine = getattr(self.providers.get("local"), "engine", None)
        decoded = engine.decoded(gen.id) if engine is not None else None
        scripted = getattr(self.providers.get("scripted"), "produced", {})
        return {
            "id": gen.id,
            "route": gen.route,
            "provider": gen.provider,
            "model": gen.request.model,
            "turns": list(gen.roles),
            "done": gen.done,
            "stop_reason": gen.stop_reason,
            "usage": dataclasses.asdict(gen.usage),
            "metrics": dataclasses.asdict(gen.metrics),
            "produced_tokens": decoded if decoded is not None else scripted.get(gen.id),
            "events": len(gen.log),
        }

    async def close_upstreams(self) -> None:
        """The upstream providers' connection pools, as the server stops."""
        for p in self.providers.values():
            aclose = getattr(p, "aclose", None)
            if aclose is not None:
                await aclose()

    def close(self) -> None:
        for p in self.providers.values():
            close = getattr(p, "close", None)
            if close is not None:
                close()


def engine_figures(engine: Any) -> dict[str, float]:
    running, queued = engine.active()
    s = engine.stats
    return {
        "alive": 1 if engine.alive else 0,
        "running_sequences": running,
        "queued_sequences": queued,
        "kv_cells_used": engine.kv_cells_used(),
        "steps_total": s.steps,
        "decoded_tokens_total": s.tokens_decoded,
        "prompt_tokens_total": s.prompt_tokens,
        "prefix_tokens_reused_total": s.prefix_tokens_reused,
        "cancelled_sequences_total": s.cancelled,
        "preempted_sequences_total": s.preempted,
        # Prompt lookup (a lone stream): draft tokens computed, and those the model kept.
        "draft_tokens_total": s.drafted,
        "draft_tokens_kept_total": s.draft_kept,
        # The decode width now (one while other processes keep the cores busy), and how
        # often it changed: what a slow engine on a shared host is first checked for.
        "decode_threads": engine.llama.threads.n,
        "thread_width_changes_total": engine.llama.threads.switches,
    }
