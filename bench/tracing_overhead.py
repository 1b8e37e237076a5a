"""What tracing costs a generation: the gateway's own work per generation (scripted provider,
no delay, 16 tokens), with tracing off, and on with the SDK's batch processor into an exporter
that drops the spans (the OTLP exporter's network work is on its own thread).

    .venv/bin/python bench/tracing_overhead.py [generations]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from sluicegate import telemetry
from sluicegate.config import Route, Settings
from sluicegate.events import ChatRequest, Message
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider

REQUEST = ChatRequest("scripted", (Message("user", "hello"),), max_tokens=16)


class Dropped(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def per_generation(n: int) -> float:
    settings = Settings(routes=[Route(match="*", provider="scripted")])
    gateway = Gateway(settings, {"scripted": ScriptedProvider(delay=0, length=16)})
    for _ in range(50):  # warm up
        await (await gateway.start(REQUEST, route="bench")).wait()
    started = time.perf_counter()
    for _ in range(n):
        await (await gateway.start(REQUEST, route="bench")).wait()
    return (time.perf_counter() - started) / n


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
    telemetry.use(None)
    provider.shutdown()
    off, on = min(rounds["off"]), min(rounds["on"])
    print(f"per generation ({n}, 16 tokens, scripted): tracing off {off * 1e6:.0f} us, "
          f"on {on * 1e6:.0f} us (+{(on - off) * 1e6:.0f} us)")  # fmt: skip


if __name__ == "__main__":
    main()
