"""Statistics for per-sample outcomes: mean, standard error, bootstrap CIs, paired differences.

All functions take per-sample values (0/1 outcomes or reals) and are deterministic given
``seed``.

* `summarize`: mean, standard error sqrt(var / n) (var with ddof=1), and a percentile
  bootstrap 95% CI over samples (``n_boot`` resamples).
* `paired_difference`: for two conditions measured on the same samples (e.g. targeted heads
  vs random heads), the per-sample difference d_i = a_i - b_i, summarised the same way;
  pairing removes the between-sample variance that an unpaired comparison would carry.
* Random controls over several seeds: average each sample's outcome over the seeds first
  (b_i = mean_s b_{i,s}), then pair with the targeted outcome; `seed_spread` reports the
  across-seed standard deviation of the seed means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Summary", "summarize", "paired_difference", "seed_spread", "bootstrap_ci"]


@dataclass(frozen=True)
class Summary:
    value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict:
        return {"value": self.value, "stderr": self.stderr, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "n": self.n}


def bootstrap_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    if len(x) == 0:
        return (math.nan, math.nan)
    if len(x) == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def summarize(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> Summary:
    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    lo, hi = bootstrap_ci(x, n_boot, seed)
    return Summary(mean, se, lo, hi, n)


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0) -> Summary:
    a_, b_ = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if a_.shape != b_.shape:
        raise ValueError(f"paired samples must have the same length, got {len(a_)} and {len(b_)}")
    return summarize(a_ - b_, n_boot, seed)


def seed_spread(per_seed_means: Sequence[float]) -> float:
    x = np.asarray(list(per_seed_means), dtype=float)
    return float(x.std(ddof=1)) if len(x) > 1 else math.nan
