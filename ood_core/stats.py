"""Paired comparisons with confidence intervals: how a claim is judged.

A claim compares a method with its baseline on the same (split, seed) pairs: the same known
classes, the same data order and initialisation seed. Each pair gives one difference
d_i = a_i - b_i; the claim's part holds only when the 95 % interval of the mean difference
excludes zero in the claimed direction. Two intervals are offered:

* ``"t"``: mean(d) ± t_{n-1, 1-alpha/2} · sd(d)/sqrt(n) (Student's t, the default);
* ``"bootstrap"``: the percentile interval of the mean over ``n_boot`` resamples of the
  pairs (seeded, so the same data give the same interval).

With fewer than 2 pairs no interval exists and no verdict is given.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class PairedCI:
    """Mean of the paired differences a - b with its confidence interval [low, high]."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float
    method: str

    def holds(self, direction: str) -> bool | None:
        """True when the interval excludes zero in ``direction`` ("greater": a > b, "less": a < b);
        None when there are too few pairs for an interval."""
        if self.n < 2 or not (math.isfinite(self.low) and math.isfinite(self.high)):
            return None
        if direction == "greater":
            return self.low > 0
        if direction == "less":
            return self.high < 0
        raise ValueError(f"direction is 'greater' or 'less', got {direction!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_difference_ci(a, b, confidence: float = 0.95, method: str = "t", n_boot: int = 10_000,
                         seed: int = 0) -> PairedCI:
    """Confidence interval of mean(a - b) over pairs (a_i, b_i); see the module docstring."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same length, got {a.size} and {b.size}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is in (0, 1), got {confidence}")
    d = a - b
    n = d.size
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return PairedCI(mean, float("nan"), float("nan"), n, confidence, method)
    alpha = 1.0 - confidence
    if method == "t":
        from scipy.stats import t

        half = float(t.ppf(1 - alpha / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
        return PairedCI(mean, mean - half, mean + half, n, confidence, method)
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
        return PairedCI(mean, float(low), float(high), n, confidence, method)
    raise ValueError(f"method is 't' or 'bootstrap', got {method!r}")
