"""Compare head sets themselves, not only their scores: ``mf-harness heads compare A B``.

A source is a ranking or a set:

* ``heads.csv`` (or any CSV with ``layer``, ``head`` and a score), optionally ``:COLUMN`` to rank by
  that column (``heads.csv:dla_mean``; default ``rank`` ascending, else ``score``); with a ``follow``
  column, each direction is compared separately;
* a spec file (its blocked and amplified heads, a set without an order).

For each direction the comparison gives

* **overlap**: Jaccard |A_k n B_k| / |A_k u B_k| of the top k of each ranking, for every k asked for
  (a set is taken whole);
* **rank agreement**: Spearman's rho over the heads both rankings score (average ranks for ties);
* **layer profile by relative depth**: the share of the top k heads in each tenth of the network,
  depth = layer / number of layers, so sets from models of different depth sit side by side
  (the number of layers is ``--layers-a`` / ``--layers-b``, or the highest layer listed + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mf_harness.core.spec import Head, InterventionSpec
from mf_harness.errors import MfHarnessError

__all__ = ["HeadRanking", "load_rankings", "jaccard", "spearman", "layer_profile", "compare_heads", "plot_comparison"]


@dataclass(frozen=True)
class HeadRanking:
    name: str
    heads: tuple[Head, ...]  # best first (a set: in no particular order)
    scores: dict | None  # head -> score (None for a set)
    num_layers: int

    @property
    def is_set(self) -> bool:
        return self.scores is None

    def top(self, k: int) -> set[Head]:
        return set(self.heads if self.is_set else self.heads[:k])


def load_rankings(source: str, num_layers: int | None = None) -> dict[str, HeadRanking]:
    """{direction (or "all"): ranking} from ``path[:column]`` (see the module doc)."""
    import pandas as pd

    path, _, column = source.partition(":") if not Path(source).exists() else (source, "", "")
    p = Path(path)
    if not p.is_file():
        raise MfHarnessError(f"head source not found: {path!r} (a heads CSV, optionally :COLUMN, or a spec file)")
    if p.suffix.lower() == ".json":
        spec = InterventionSpec.load(p)
        heads = tuple(sorted(set(spec.block) | set(spec.amplify)))
        if not heads:
            raise MfHarnessError(f"{p} names no heads")
        return {"all": HeadRanking(p.stem, heads, None, num_layers or max(h.layer for h in heads) + 1)}
    try:
        df = pd.read_csv(p)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise MfHarnessError(f"{p} is not a CSV file ({type(e).__name__})") from None
    by = column or ("rank" if "rank" in df.columns else "score")
    for c in ("layer", "head", by):
        if c not in df.columns:
            raise MfHarnessError(f"{p}: no column {c!r}; columns are {list(df.columns)}")
    groups = df.groupby("follow") if "follow" in df.columns else [("all", df)]
    out = {}
    for follow, g in groups:
        g = g.sort_values(by, ascending=(by == "rank"), kind="stable")
        heads = tuple(Head(int(r.layer), int(r.head)) for r in g.itertuples())
        scores = {h: float(v) for h, v in zip(heads, g[by])}
        if by == "rank":
            scores = {h: -v for h, v in scores.items()}  # higher is better everywhere
        n = num_layers or max(h.layer for h in heads) + 1
        out[str(follow)] = HeadRanking(f"{p.name}:{by}", heads, scores, n)
    return out


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else math.nan


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: HeadRanking, b: HeadRanking) -> tuple[float, int]:
    """(Spearman's rho, number of heads) over the heads both rankings score; nan for a set."""
    if a.is_set or b.is_set:
        return math.nan, 0
    common = sorted(set(a.scores) & set(b.scores))
    if len(common) < 3:
        return math.nan, len(common)
    ra, rb = _ranks([a.scores[h] for h in common]), _ranks([b.scores[h] for h in common])
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return (cov / math.sqrt(va * vb) if va and vb else math.nan), len(common)


def layer_profile(r: HeadRanking, k: int, bins: int = 10) -> list[float]:
    """Share of the top-k heads in each of ``bins`` equal slices of relative depth layer / num_layers."""
    heads = r.top(k)
    counts = [0] * bins
    for h in heads:
        counts[min(bins - 1, int(bins * h.layer / r.num_layers))] += 1
    return [c / len(heads) if heads else 0.0 for c in counts]


def compare_heads(a: dict[str, HeadRanking], b: dict[str, HeadRanking], ks: Sequence[int], bins: int = 10) -> list[dict]:
    """One comparison per direction that both sources have (a set pairs with every direction)."""
    pairs = []
    for follow in sorted(set(a) | set(b)):
        ra, rb = a.get(follow) or a.get("all"), b.get(follow) or b.get("all")
        if ra is None or rb is None:
            continue
        rho, n = spearman(ra, rb)
        kmax = max(ks)
        pairs.append({
            "follow": follow, "a": ra.name, "b": rb.name, "layers_a": ra.num_layers, "layers_b": rb.num_layers,
            "jaccard": {k: jaccard(ra.top(k), rb.top(k)) for k in ks},
            "spearman": rho, "spearman_n": n,
            "profile_k": kmax, "profile_a": layer_profile(ra, kmax, bins), "profile_b": layer_profile(rb, kmax, bins),
        })
    if not pairs:
        raise MfHarnessError(f"the two sources share no direction: {sorted(a)} vs {sorted(b)}")
    return pairs


def plot_comparison(pairs: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mf_harness.checks import save_figure

    fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 3.2 * len(pairs)), squeeze=False)
    for (ax1, ax2), c in zip(axes, pairs):
        ks = sorted(c["jaccard"])
        ax1.plot(ks, [c["jaccard"][k] for k in ks], "o-")
        ax1.set(title=f"{c['follow']}: overlap of the top k (Spearman {c['spearman']:.2f})", xlabel="k",
                ylabel="Jaccard", ylim=(0, 1.05))
        bins = len(c["profile_a"])
        x = [(i + 0.5) / bins for i in range(bins)]
        w = 0.4 / bins
        ax2.bar([v - w / 2 for v in x], c["profile_a"], width=w, label=c["a"])
        ax2.bar([v + w / 2 for v in x], c["profile_b"], width=w, label=c["b"])
        ax2.set(title=f"{c['follow']}: top-{c['profile_k']} heads by relative depth", xlabel="layer / layers",
                ylabel="share of heads", xlim=(0, 1))
        ax2.legend(fontsize=7)
    fig.tight_layout()
    p = save_figure(fig, path)
    plt.close(fig)
    return p
