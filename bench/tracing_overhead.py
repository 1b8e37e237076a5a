"""What tracing costs a generation: the gateway's own work per generation (scripted provider,
no delay, 16 tokens), with tracing off, and on with the SDK's batch processor into an exporter
that drops the spans (the OTLP exporter's network work is on its own thread). CPU time of the
process (its threads included), not wall time: on a shared machine, wall time mostly measures
the neighbours.

    .venv/bin/python bench/tracing_overhead.py [generations]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncGenerator, Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from sluicegate import telemetry
from sluicegate.config import Route, Settings
from sluicegate.events import ChatRequest, Event, Message
from sluicegate.gateway import Gateway
from sluicegate.generation import Generation, Meter
from sluicegate.providers.scripted import ScriptedProvider

REQUEST = ChatRequest("scripted", (Message("user", "hello"),), max_tokens=16)


class Dropped(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def per_generation(n: int) -> float:
    # Ended generations forgotten at once: keeping 1000 for resume costs each end a scan of
    # them (Gateway._forget_old), which would swamp what is measured here.
    settings = Settings(routes=[Route(match="*", provider="scripted")], ended_seconds=0)
    gateway = Gateway(settings, {"scripted": ScriptedProvider(delay=0, length=16)})
    for _ in range(50):  # warm up
        await (await gateway.start(REQUEST, route="bench")).wait()
    started = time.process_time()
    for _ in range(n):
        await (await gateway.start(REQUEST, route="bench")).wait()
    return (time.process_time() - started) / n


async def span_alone(n: int, provider: TracerProvider) -> float:
    """CPU for a generation's span alone: open, detach, fill in and end it."""
    telemetry.use(provider)
    tracing = telemetry.tracing(Settings(routes=[Route(match="*", provider="scripted")]))
    assert tracing is not None
    ended = []
    for _ in range(n):
        gen = Generation(REQUEST, _nothing, route="bench", provider="scripted")
        gen.timings.first_token = gen.timings.created + 0.001
        gen.timings.ended, gen.stop_reason = gen.timings.created + 0.002, "end_turn"
        ended.append(gen)
    started = time.process_time()
    for gen in ended:
        tracing.detach(tracing.begin(gen, "scripted"))
        tracing.ended(gen)
    return (time.process_time() - started) / n


async def _nothing(request: ChatRequest, meter: Meter) -> AsyncGenerator[Event, None]:
    return
    yield


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds: dict[str, list[float]] = {"off": [], "on": []}
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    for _ in range(3):  # interleaved, the best of three each
        telemetry.use(None)
        rounds["off"].append(asyncio.run(per_generation(n)))
        telemetry.use(provider)
        rounds["on"].append(asyncio.run(per_generation(n)))
    alone = asyncio.run(span_alone(n, provider))
    telemetry.use(None)
    provider.shutdown()
    off, on = min(rounds["off"]), min(rounds["on"])
    print(f"CPU per generation ({n}, 16 tokens, scripted): tracing off {off * 1e6:.0f} us, "
          f"on {on * 1e6:.0f} us (+{(on - off) * 1e6:.0f} us); "
          f"the span alone {alone * 1e6:.0f} us")  # fmt: skip


if __name__ == "__main__":
    main()
