"""Prometheus metrics, one registry per gateway (so several apps can live in one process)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sluicegate.generation import Generation

LABELS = ("route", "provider")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 5)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320, 900)


class GatewayMetrics:
    """Time to first token, inter-token gaps, durations, stop reasons and tokens, by route."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            "sluicegate_time_to_first_token_seconds",
            "Request accepted to first text delta",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = _Gaps()
        r.register(self.itl)
        self.duration = Histogram(
            "sluicegate_generation_duration_seconds",
            "Request accepted to the last event",
            LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "sluicegate_queue_seconds",
            "Request accepted to the model starting on it",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "sluicegate_gateway_overhead_seconds",
            "Request accepted to the last event, minus the time spent waiting on the upstream",
            LABELS,
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.active = Gauge(
            "sluicegate_active_generations", "Generations running", LABELS, registry=r
        )
        self.ended = Counter(
            "sluicegate_generations",
            "Generations ended, by stop reason",
            (*LABELS, "stop_reason"),
            registry=r,
        )
        self.tokens = Counter(
            "sluicegate_tokens",
            "Tokens in and out (from the model's tokenizer)",
            (*LABELS, "direction"),
            registry=r,
        )

    def started(self, gen: Generation) -> None:
        self.active.labels(gen.route, gen.provider).inc()

    def gap(self, gen: Generation, seconds: float) -> None:
        self.itl.observe((gen.route, gen.provider), seconds)

    def finished(self, gen: Generation) -> None:
        labels = (gen.route, gen.provider)
        self.active.labels(*labels).dec()
        self.ended.labels(*labels, gen.stop_reason or "error").inc()
        self.tokens.labels(*labels, "input").inc(gen.usage.input_tokens)
        self.tokens.labels(*labels, "output").inc(gen.usage.output_tokens)
        m = gen.metrics
        self.duration.labels(*labels).observe(m.total_ms / 1000)
        self.queue.labels(*labels).observe(m.queue_ms / 1000)
        if m.first_token_ms is not None:
            self.ttft.labels(*labels).observe(m.first_token_ms / 1000)
        waited = gen.meter.upstream_seconds
        if waited > 0 and gen.timings.ended is not None:
            total = gen.timings.ended - gen.timings.created
            self.overhead.labels(*labels).observe(max(0.0, total - waited))

    def late_output(self, route: str, provider: str, tokens: int) -> None:
        """Output tokens counted after the generation ended (a drained upstream)."""
        self.tokens.labels(route, provider, "output").inc(tokens)

    def add_gauges(self, name: str, read: Callable[[], dict[str, float]]) -> None:
        """Expose figures read at scrape time, e.g. the engine's counters."""
        self.registry.register(_Gauges(name, read))


class _Gauges(Collector):
    def __init__(self, prefix: str, read: Callable[[], dict[str, float]]) -> None:
        self.prefix = prefix
        self.read = read

    def collect(self) -> Iterable[Metric]:
        for key, value in self.read().items():
            yield GaugeMetricFamily(f"{self.prefix}_{key}", f"{self.prefix} {key}", value=value)


class _Gaps(Collector):
    """The inter-token histogram, observed once per token: a bisect and two additions (a
    Histogram's labels and observe take three locks and walk the buckets), on the event
    loop's thread only."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], list[float]] = {}  # per bucket (+Inf last), then sum

    def observe(self, key: tuple[str, str], seconds: float) -> None:
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0.0] * (len(GAP_BUCKETS) + 2)
        counts[bisect.bisect_left(GAP_BUCKETS, seconds)] += 1  # le: at most the bound
        counts[-1] += seconds

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(
            "sluicegate_inter_token_latency_seconds",
            "Gap between consecutive text deltas",
            labels=LABELS,
        )
        bounds = [*map(floatToGoString, GAP_BUCKETS), "+Inf"]
        for key, counts in list(self.series.items()):
            cumulative = list(itertools.accumulate(counts[:-1]))
            family.add_metric(list(key), list(zip(bounds, cumulative, strict=True)), counts[-1])
        yield family
