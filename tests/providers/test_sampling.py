"""The numpy sampler against the definition of top-p and temperature, and against llama.cpp's
own chain (top_p -> temp -> dist) on the same logits, without a model."""

from __future__ import annotations

import ctypes
from collections import Counter

import llama_cpp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.providers.sampling import BLOCK, Sampler, nucleus

DRAWS = 20_000


def reference_nucleus(logits: np.ndarray, top_p: float) -> list[int]:
    """By the book: sort everything, keep until the cumulative probability reaches top_p."""
    order = np.argsort(-logits.astype(np.float64), kind="stable")
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    cumulative = np.cumsum(p[order])
    keep = int(np.searchsorted(cumulative, top_p, side="left")) + 1
    return [int(t) for t in order[:keep]]


def probabilities(logits: np.ndarray, temperature: float, top_p: float) -> dict[int, float]:
    tokens = reference_nucleus(logits, top_p) if top_p < 1 else list(range(logits.size))
    scaled = np.exp((logits[tokens].astype(np.float64) - logits.max()) / temperature)
    return dict(zip(tokens, scaled / scaled.sum(), strict=True))


def shaped(seed: int, size: int, spread: float, peak: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(size) * spread
    logits[rng.choice(size, min(20, size), replace=False)] += peak  # a few likely ones
    return logits.astype(np.float32)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([2, 50, 1000, 49_152]),
    spread=st.sampled_from([0.01, 1.0, 4.0, 12.0]),
    peak=st.sampled_from([0.0, 5.0, 25.0]),
    top_p=st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.95, 0.999]),
)
def test_the_nucleus_is_the_one_top_p_keeps(
    seed: int, size: int, spread: float, peak: float, top_p: float
) -> None:
    logits = shaped(seed, size, spread, peak)
    ours, theirs = [int(t) for t in nucleus(logits, top_p)], reference_nucleus(logits, top_p)
    if ours != theirs:
        # Only where float32 and float64 sums disagree on which token crosses top_p.
        p = np.exp(logits.astype(np.float64) - logits.max())
        p /= p.sum()
        crossing = float(np.sum(p[theirs]))
        assert ours[: len(theirs) - 1] == theirs[:-1] or theirs[: len(ours) - 1] == ours[:-1]
        assert abs(crossing - top_p) < 1e-5 or abs(crossing - p[theirs[-1]] - top_p) < 1e-5


def frequencies(draw: object, n: int = DRAWS) -> Counter[int]:
    return Counter(draw() for _ in range(n))  # type: ignore[operator]


def assert_follows(seen: Counter[int], expected: dict[int, float], n: int = DRAWS) -> None:
    """Every token's count within 5 standard deviations (plus a few, for the rare tokens whose
    counts are Poisson rather than normal); nothing outside the support."""
    assert set(seen) <= set(expected)
    for token, p in expected.items():
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(seen[token] - n * p) < 5 * sigma + 6, (token, seen[token], n * p)


@pytest.mark.parametrize(
    ("temperature", "top_p", "size", "peak"),
    [(0.2, 0.9, 49_152, 12.0), (1.0, 0.9, 49_152, 12.0), (0.7, 0.95, 5_000, 6.0),
     (1.0, 1.0, 3 * BLOCK + 37, 6.0), (2.0, 1.0, 600, 6.0), (0.5, 1.0, BLOCK, 6.0),
     # Near tokens that top-p cuts (drawn again among those it keeps), and many near tokens.
     (0.2, 0.5, 49_152, 12.0), (0.2, 0.1, 5_000, 2.0), (0.3, 0.6, 5_000, 0.0)],
)  # fmt: skip
def test_draws_follow_softmax_over_the_nucleus(
    temperature: float, top_p: float, size: int, peak: float
) -> None:
    logits = shaped(7, size, 2.0, peak)
    sampler = Sampler(temperature, top_p, seed=11)
    assert_follows(frequencies(lambda: sampler(logits)), probabilities(logits, temperature, top_p))


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    spread=st.sampled_from([0.01, 1.0, 4.0]),
    step=st.sampled_from([0.0, 0.5]),
    temperature=st.sampled_from([0.05, 0.2, 0.5]),
    top_p=st.sampled_from([0.05, 0.3, 0.9]),
)
def test_every_draw_is_in_the_nucleus(
    seed: int, spread: float, step: float, temperature: float, top_p: float
) -> None:
    logits = shaped(seed, 3_000, spread, 4.0)
    if step:  # ties: the nucleus orders them by token id
        logits = (np.round(logits / step) * step).astype(np.float32)
    sampler = Sampler(temperature, top_p, seed)
    assert {sampler(logits) for _ in range(300)} <= set(reference_nucleus(logits, top_p))


def llama_cpp_draw(logits: np.ndarray, temperature: float, top_p: float, seed: int) -> object:
    """llama.cpp's own chain applied to a candidate array built from the same logits."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for s in (
        llama_cpp.llama_sampler_init_top_p(top_p, 1),
        llama_cpp.llama_sampler_init_temp(temperature),
        llama_cpp.llama_sampler_init_dist(seed),
    ):
        llama_cpp.llama_sampler_chain_add(chain, s)
    data = (llama_cpp.llama_token_data * logits.size)()
    fresh = (llama_cpp.llama_token_data * logits.size)()
    for i, logit in enumerate(logits.tolist()):
        fresh[i].id, fresh[i].logit, fresh[i].p = i, logit, 0.0

    def draw() -> int:
        ctypes.memmove(data, fresh, ctypes.sizeof(fresh))  # the chain sorts it in place
        cur = llama_cpp.llama_token_data_array(data, logits.size, -1, False)
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
        return int(data[cur.selected].id)

    return draw


@pytest.mark.parametrize(("temperature", "top_p"), [(0.2, 0.9), (1.0, 0.9), (1.0, 1.0)])
def test_the_same_distribution_as_llama_cpps_chain(temperature: float, top_p: float) -> None:
    logits = shaped(3, 2_000, 2.0, 6.0)
    n = 10_000
    sampler = Sampler(temperature, top_p, 5)
    ours = frequencies(lambda: sampler(logits), n)
    theirs = frequencies(llama_cpp_draw(logits, temperature, top_p, 5), n)
    expected = probabilities(logits, temperature, top_p)
    assert_follows(theirs, expected, n)  # the reference is what llama.cpp does, too
    assert_follows(ours, expected, n)


def test_a_seed_repeats_its_draws_and_greedy_is_the_argmax() -> None:
    logits = shaped(1, 49_152, 3.0, 4.0)
    a, b, c = Sampler(1.0, 0.95, 42), Sampler(1.0, 0.95, 42), Sampler(1.0, 0.95, 43)
    first = [a(logits) for _ in range(200)]
    assert first == [b(logits) for _ in range(200)]
    assert first != [c(logits) for _ in range(200)]
    assert {Sampler(0.0, 0.9, None)(logits) for _ in range(5)} == {int(np.argmax(logits))}
