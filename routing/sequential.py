"""Confidence sequences for bounded means: intervals that stay valid when re-checked after every sample.

The promotion policy looks at a version's evidence after every shadow sample and acts the moment
it is convincing. A fixed-n interval (Wilson, t, Hoeffding) checked that way is wrong far more
often than its nominal level, because each look is another chance to cross the line by luck.
A confidence sequence (CS) covers the true mean at *every* sample size at once:

    P(for some n, mean ∉ CS_n) <= alpha

so a decision taken the first time a CS clears a bar has error rate at most alpha, however
often it is checked.

Construction: betting ("hedged capital", Waudby-Smith & Ramdas, "Estimating means of bounded
random variables by betting", JRSS-B 2023, Theorem 3 with predictable plug-in bets). For a
candidate mean m and observations x_i in [0, 1], two gamblers bet that the mean is above or
below m:

    K+_n(m) = prod_i (1 + l_i (x_i - m)),   0 <= l_i <= c / m
    K-_n(m) = prod_i (1 - l_i (x_i - m)),   0 <= l_i <= c / (1 - m)

with bets l_i chosen from x_1 .. x_{i-1} only. If the mean really is m, their average
K_n(m) = (K+_n + K-_n) / 2 is a non-negative martingale with K_0 = 1, so by Ville's inequality
P(sup_n K_n(m) >= 1/alpha) <= alpha. The CS at n is every m whose wealth has never reached
1/alpha (the running intersection). It is computed on a grid of candidate means, so the
bounds are rounded outwards by one grid step.

The observations must share a mean (i.i.d., or a martingale difference around m): the same
version answering a random sample of the site's traffic. A sliding window restarts that
guarantee at the window's start; `routing.policy` says where it uses one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

GRID_POINTS = 2000  # candidate means; bounds are exact to 1 / GRID_POINTS
BET_CAP = 0.75  # c above: at most 3/4 of the wealth at stake on one sample (one of the paper's choices)


class ConfidenceSequence:
    """A running CS for the mean of observations in [low, high]; `add` one at a time, O(grid) each."""

    def __init__(self, alpha: float = 0.05, low: float = 0.0, high: float = 1.0):
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if high <= low:
            raise ValueError("need low < high")
        self.alpha, self.low, self.span = alpha, low, high - low
        self._m = (np.arange(GRID_POINTS) + 0.5) / GRID_POINTS  # candidate means, open (0, 1)
        self._log_up = np.zeros(GRID_POINTS)
        self._log_down = np.zeros(GRID_POINTS)
        self._rejected = np.zeros(GRID_POINTS, dtype=bool)  # ever reached 1/alpha: the running intersection
        self._threshold = math.log(1 / alpha)
        self.n = 0
        self._sum = 0.0
        self._sum_sq = 0.0

    def add(self, value: float) -> None:
        self.extend([value])

    def extend(self, values: Sequence[float]) -> ConfidenceSequence:
        if len(values) == 0:
            return self
        x = np.clip((np.asarray(values, dtype=float) - self.low) / self.span, 0.0, 1.0)
        bets = self._bets(x)[:, None]
        m = self._m[None, :]
        centred = x[:, None] - m
        log_up = self._log_up + np.cumsum(np.log1p(np.minimum(bets, BET_CAP / m) * centred), axis=0)
        log_down = self._log_down + np.cumsum(np.log1p(-np.minimum(bets, BET_CAP / (1 - m)) * centred), axis=0)
        log_wealth = np.logaddexp(log_up, log_down) - math.log(2)
        self._rejected |= (log_wealth >= self._threshold).any(axis=0)
        self._log_up, self._log_down = log_up[-1], log_down[-1]
        self.n += len(x)
        self._sum += float(x.sum())
        self._sum_sq += float((x * x).sum())
        return self

    def _bets(self, x: np.ndarray) -> np.ndarray:
        """Predictable plug-in bets: l_i from the running mean and variance of the samples before it."""
        i = self.n + np.arange(1, len(x) + 1, dtype=float)
        previous_sum = self._sum + np.concatenate([[0.0], np.cumsum(x)[:-1]])
        previous_sq = self._sum_sq + np.concatenate([[0.0], np.cumsum(x * x)[:-1]])
        # mean and variance of x_1 .. x_{i-1} with the paper's priors (1/2 and 1/4) as one more sample
        mean = (0.5 + previous_sum) / i
        variance = (0.25 + previous_sq - 2 * mean * previous_sum + (i - 1) * mean * mean) / i
        variance = np.maximum(variance, 1e-6)
        return np.sqrt(2 * math.log(2 / self.alpha) / (variance * i * np.log1p(i)))

    @property
    def mean(self) -> float | None:
        return self.low + self.span * self._sum / self.n if self.n else None

    @property
    def bounds(self) -> tuple[float, float]:
        """(lower, upper), rounded outwards by one grid step; the whole range before any sample."""
        if self.n == 0:
            return self.low, self.low + self.span
        kept = self._m[~self._rejected]
        if kept.size == 0:  # every candidate rejected at some point: a fluke; say only the mean
            centre = self._sum / self.n
            lo = hi = centre
        else:
            step = 1.0 / GRID_POINTS
            lo, hi = max(0.0, float(kept.min()) - step), min(1.0, float(kept.max()) + step)
        return self.low + lo * self.span, self.low + hi * self.span


def confidence_sequence(
    xs: Sequence[float], alpha: float = 0.05, low: float = 0.0, high: float = 1.0
) -> tuple[float, float]:
    """The CS for the mean of `xs` (each in [low, high]) after all of them, at level alpha."""
    return ConfidenceSequence(alpha, low, high).extend(list(xs)).bounds
