"""Statistics for per-sample outcomes: mean, standard error, bootstrap CIs, paired differences.

All functions take per-sample values (0/1 outcomes or reals) and are deterministic given
``seed``.

* `summarize`: mean, standard error sqrt(var / n) (var with ddof=1), and a percentile
  bootstrap 95% CI over samples (``n_boot`` resamples).
* `paired_difference`: for two conditions measured on the same samples (e.g. targeted heads
  vs random heads), the per-sample difference d_i = a_i - b_i, summarised the same way;
  pairing removes the between-sample variance that an unpaired comparison would carry.
* `wilson_interval` (a proportion), `t_interval` (the mean of a few seeds) and
  `paired_bootstrap_interval` (mean over seeds of a control minus a targeted 0/1 outcome, docs
  resampled with Python's ``random``): the intervals of the embedded model's card.
* `specificity`: effect on modality following minus collateral on capability, in points,
  with a paired per-sample bootstrap CI (formula in its docstring and the README).
* Random controls over several seeds: average each sample's outcome over the seeds first
  (b_i = mean_s b_{i,s}), then pair with the targeted outcome; `seed_spread` reports the
  across-seed standard deviation of the seed means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Summary", "summarize", "paired_difference", "seed_spread", "bootstrap_ci", "wilson_interval", "t_interval",
           "paired_bootstrap_interval", "Paired", "specificity", "metric_scale"]


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


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion ``p`` over ``n`` trials (rounded to 4 places)."""
    if n == 0:
        return (math.nan, math.nan)
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    w = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(max(0.0, c - w), 4), round(min(1.0, c + w), 4))


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Student-t 95% interval of the mean of a few values (e.g. seeds), rounded to 4 places."""
    # two-sided 95% Student t quantiles for n-1 degrees of freedom (n = 2..10)
    t = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return (m, m)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    h = t.get(n - 1, 1.96) * sd / math.sqrt(n)
    return (round(m - h, 4), round(m + h, 4))


def paired_bootstrap_interval(targeted: Sequence[int], randoms: Sequence[Sequence[int]], reps: int = 2000,
                              seed: int = 0) -> tuple[float, float]:
    """95% CI of mean_seeds(random MFR) - targeted MFR, resampling docs (paired across conditions)."""
    import random

    n = len(targeted)
    per_doc = [sum(r[i] for r in randoms) / len(randoms) - targeted[i] for i in range(n)]
    rng = random.Random(seed)
    stats = sorted(sum(per_doc[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return (round(stats[int(0.025 * reps)], 4), round(stats[int(0.975 * reps) - 1], 4))


@dataclass(frozen=True)
class Paired:
    """One measure on shared samples: per-sample values of the original model and of the head set.

    ``group`` names the sample set (the task): measures of one group are resampled together.
    ``scale`` turns the measure into points (100 for a rate or a 0-1 score)."""

    group: str
    original: Sequence[float]
    intervened: Sequence[float]
    scale: float = 100.0


def metric_scale(metric: str) -> float:
    """Points per unit of a metric: 100 for rates and 0-1 scores (MFR, accuracy, BLEU, CIDEr as papers
    print it x100), 1 for perplexities (already in their own unit)."""
    return 1.0 if "ppl" in metric.lower() or "perplexity" in metric.lower() else 100.0


def _deltas(p: Paired, idx: np.ndarray) -> np.ndarray:
    """|mean(intervened) - mean(original)| x scale for each row of resampled indices ``idx`` [B, n]."""
    a, b = np.asarray(p.original, dtype=float), np.asarray(p.intervened, dtype=float)
    return np.abs(b[idx].mean(axis=1) - a[idx].mean(axis=1)) * p.scale


def specificity(effect: Paired, collateral: Sequence[Paired], n_boot: int = 2000, seed: int = 0) -> Summary:
    """Specificity of a head set, in points:

        specificity = effect - collateral
        effect      = |MFR(head set) - MFR(original)| x 100       on the protocol subset
        collateral  = mean over capability metrics m of |m(head set) - m(original)| x scale(m)

    95% CI: percentile bootstrap over samples, paired (the original and the head set are
    resampled on the same samples), each sample set (``group``: the MFR subset, each
    capability task) resampled independently; the metrics of one task share its resample.
    ``stderr`` is the bootstrap standard deviation. Without capability measures the
    collateral is unknown and the value is NaN."""
    for p in (effect, *collateral):
        if len(p.original) != len(p.intervened) or len(p.original) == 0:
            raise ValueError(f"{p.group}: paired samples must be non-empty and of one length, got "
                             f"{len(p.original)} and {len(p.intervened)}")
    if not collateral:
        return Summary(math.nan, math.nan, math.nan, math.nan, len(effect.original))

    def value(idx: dict) -> np.ndarray:
        coll = np.mean([_deltas(p, idx[p.group]) for p in collateral], axis=0)
        return _deltas(effect, idx[effect.group]) - coll

    sizes = {p.group: len(p.original) for p in (effect, *collateral)}
    point = float(value({g: np.arange(n)[None] for g, n in sizes.items()})[0])
    rng = np.random.default_rng(seed)
    boots = value({g: rng.integers(0, n, size=(n_boot, n)) for g, n in sorted(sizes.items())})
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return Summary(point, float(boots.std(ddof=1)), float(lo), float(hi), len(effect.original))
