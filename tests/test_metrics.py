"""The hand-counted inter-token histogram says what prometheus_client's own Histogram says."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from sluicegate.metrics import GAP_BUCKETS, GatewayMetrics

NAME = "sluicegate_inter_token_latency_seconds"
gaps = st.lists(
    st.tuples(
        st.sampled_from([("ws", "local"), ("openai", "gpu")]),
        st.one_of(st.sampled_from(GAP_BUCKETS), st.floats(0, 10, allow_nan=False)),
    ),
    min_size=1,
    max_size=60,
)


def lines(text: bytes) -> list[str]:
    """The series' sample lines (bucket, count, sum), without _created."""
    said = text.decode().splitlines()
    return sorted(x for x in said if x.startswith(NAME) and "_created" not in x)


@given(gaps)
def test_the_same_exposition_as_prometheus_clients_histogram(
    observed: list[tuple[tuple[str, str], float]],
) -> None:
    ours = GatewayMetrics()
    registry = CollectorRegistry()
    theirs = Histogram(NAME, "Gap", ("route", "provider"), buckets=GAP_BUCKETS, registry=registry)
    for key, seconds in observed:
        ours.itl.observe(key, seconds)
        theirs.labels(*key).observe(seconds)
    assert lines(generate_latest(ours.registry)) == lines(generate_latest(registry))
    assert any(x.startswith(NAME) for x in generate_latest(ours.registry).decode().splitlines())
