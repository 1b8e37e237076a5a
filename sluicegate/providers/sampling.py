"""Sampling from a sequence's logits without sorting the vocabulary.

llama.cpp's chain top-p -> temperature -> dist sorts every candidate for each token (its `dist`
sampler sorts the whole array), which over SmolLM2's 49,152-token vocabulary costs about half a
millisecond per token: more than a 135M model's decode step per sequence. The same distribution
comes out of a threshold instead: the nucleus is the smallest set of most likely tokens whose
probability reaches top_p, and only tokens within a few logits of the best can be in it, so
only those are sorted. Then the nucleus is sampled at the temperature, by one uniform draw.
Exact: the nucleus is the one top-p keeps (the token that crosses top_p included, as llama.cpp
keeps it), and the draw follows softmax(logits / temperature) over it.

At a low temperature (the model's default is 0.2) even that is more than is needed: a token
REACH temperature-scaled logits below the best has a weight under e^-40, which no float64
draw can land on, so the draw is made among the few tokens within reach of the best, and kept
if top-p keeps it (it is, unless top-p is tight enough to cut tokens that likely); a draw
top-p would cut is drawn again among the near tokens top-p keeps. Accept-or-redraw gives the
distribution conditioned on the nucleus, the one asked for.

Used where the chain has no top_k and no grammar (those stay with llama.cpp's samplers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Logits = npt.NDArray[np.float32]
BLOCK = 256  # tokens per block when drawing from the whole vocabulary
FIRST_WIDTH = 8.0  # logits below the best, to look for the nucleus in first (e^-8 = 0.03%)
REACH = 40.0  # temperature-scaled logits below the best that a draw can reach (e^-40 < 2^-53)
NEAR_MOST = 8192  # near tokens a draw among them is worth it for (else: the paths above)


def nucleus(logits: Logits, top_p: float, work: Logits | None = None) -> npt.NDArray[np.intp]:
    """The tokens top-p keeps, most likely first: the fewest whose probability reaches top_p.
    `work`, as large as `logits`, saves an allocation (a fresh one is paged in every time)."""
    best = logits.max()
    weights = np.subtract(logits, best, out=work)
    np.exp(weights, out=weights)
    need = top_p * float(weights.sum())
    width = FIRST_WIDTH
    while True:
        found = np.flatnonzero(logits >= best - width)
        if found.size == logits.size or float(weights[found].sum(dtype=np.float64)) >= need:
            break
        width *= 2  # a flat distribution: look further down
    found = found[np.argsort(-logits[found], kind="stable")]
    cumulative = np.cumsum(weights[found], dtype=np.float64)
    keep = int(np.searchsorted(cumulative, need, side="left")) + 1
    return found[: min(keep, found.size)]


class Sampler:
    """top_p then temperature then one draw, for one sequence (its own random stream)."""

    __slots__ = ("rng", "temperature", "top_p", "work")

    def __init__(self, temperature: float, top_p: float, seed: int | None) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.rng = np.random.default_rng(seed)
        self.work: Logits | None = None

    def __call__(self, logits: Logits) -> int:
        if self.temperature <= 0:
            return int(logits.argmax())
        if self.work is None or self.work.size != logits.size:
            self.work = np.empty_like(logits)
        best = logits.max()
        reached = logits >= best - np.float32(REACH * self.temperature)
        if np.count_nonzero(reached) <= NEAR_MOST:
            return self._near(logits, np.flatnonzero(reached), best, self.work)
        if self.top_p < 1.0:
            tokens = nucleus(logits, self.top_p, self.work)
            scaled = np.exp((logits[tokens] - logits[tokens[0]]) / self.temperature)
            cumulative = np.cumsum(scaled)
            at = np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right")
            return int(tokens[min(int(at), tokens.size - 1)])
        return self._whole(logits, self.work)

    def _near(self, logits: Logits, near: npt.NDArray[np.intp], best: Any, work: Logits) -> int:
        """One draw among the tokens within reach of the best, softmax at the temperature;
        kept if top-p keeps it, else drawn again among the near tokens it keeps."""
        values = logits[near]
        scaled = np.exp((values - best).astype(np.float64) / self.temperature)
        at = self._draw(scaled)
        token, value = int(near[at]), values[at]
        if self.top_p >= 1.0:
            return token
        # Kept iff what comes before it, most likely first (ties by token id, as the nucleus
        # orders them), weighs less than top_p of the whole. All of that is near.
        weights = np.exp(values - best)
        before = float(weights[(values > value) | ((values == value) & (near < token))].sum())
        if before == 0.0 or before < self.top_p * float(weights.sum(dtype=np.float64)):
            return token  # the most likely token, or kept even against the near tokens alone
        np.subtract(logits, best, out=work)
        need = self.top_p * float(np.exp(work, out=work).sum())  # as `nucleus` weighs it
        if before < need:
            return token
        order = np.lexsort((near, -values))
        cumulative = np.cumsum(weights[order], dtype=np.float64)
        kept = order[: int(np.searchsorted(cumulative, need, side="left")) + 1]
        return int(near[kept[self._draw(scaled[kept])]])

    def _draw(self, weights: npt.NDArray[np.float64]) -> int:
        """An index drawn in proportion to `weights`."""
        cumulative = np.cumsum(weights)
        at = np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right")
        return min(int(at), weights.size - 1)

    def _whole(self, logits: Logits, work: Logits) -> int:
        """softmax(logits / temperature) over every token: one draw, found block by block
        (a cumulative sum over the whole vocabulary costs more than the rest together)."""
        np.subtract(logits, logits.max(), out=work)
        np.multiply(work, np.float32(1.0 / self.temperature), out=work)
        np.exp(work, out=work)
        size = BLOCK * (work.size // BLOCK)
        blocks = np.append(work[:size].reshape(-1, BLOCK).sum(axis=1), work[size:].sum())
        totals = np.cumsum(blocks, dtype=np.float64)
        u = self.rng.random() * totals[-1]
        block = min(int(np.searchsorted(totals, u, side="right")), blocks.size - 1)
        start = block * BLOCK
        inside = np.cumsum(work[start : start + BLOCK], dtype=np.float64)
        at = np.searchsorted(inside, u - (totals[block - 1] if block else 0.0), side="right")
        return start + min(int(at), inside.size - 1)
