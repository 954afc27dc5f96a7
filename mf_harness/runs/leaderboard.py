"""Tables, plots and the regression check, as pure functions of records (`mf_harness.runs.records`).

**Specificity table** (the paper's Table 1, per direction x intervention x scope): one row per
head set (original, targeted top-k, random k heads pooled over seeds, layer-matched and/or
from any layer, shared, layers), with
MFR on the protocol subset (``followed`` for blocking, ``failed`` for amplification) and on
the full set, the paired difference to each random control, and every capability metric with
its change from the original model. The **specificity** column is

    specificity = effect - collateral   (points)
    effect      = |MFR(head set) - MFR(original)| x 100         on the protocol subset
    collateral  = mean over capability metrics of |m(head set) - m(original)| x scale(m)
                  (scale 100 for rates and 0-1 scores, CIDEr included; 1 for perplexities)

so 60 points of MFR change with 1 point of mean capability change scores 59; the raw
columns are always printed beside it, and the value comes from the ``specificity`` records
with their paired per-sample bootstrap 95% CI (`mf_harness.runs.stats.specificity`; random
controls pooled per sample over seeds, the seeds' spread shown). Without capability tasks
the collateral is not known and the column is left empty.

**Cross-model table**: rows = head sets, columns = model x metric (protocol-subset MFR).

**Plots**: MFR vs k (targeted, random with its 95% CI band, shared) and MFR vs coefficient.

**Regression check** (`compare_records`): records are matched on (model, head set, follow, k,
seed, intervention, coefficient, scope, spec hash, task, metric, subset); a metric fails when
it moved by more than ``tolerance`` (absolute) or, with ``mode="ci"``, when the new value lies
outside the baseline's 95% CI widened by ``tolerance`` (x100 for specificity, which is in points).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from mf_harness.checks import atomic_write_text, save_figure
from mf_harness.runs.records import PROTOCOL, RANDOM_CONTROLS, SPECIFICITY, Record, record_key
from mf_harness.runs.stats import metric_scale

__all__ = ["specificity_tables", "cross_model_table", "render_markdown", "plot_mfr_vs_k", "plot_mfr_vs_coefficient",
           "compare_records", "write_leaderboard"]

CONTROL_LABEL = {"random": "random (layer-matched)", "random_any": "random (any layer)"}


def _fmt(v, pct=True, signed=False, digits=1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    x = v * 100 if pct else v
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _find(records, **kw):
    return [r for r in records if all(getattr(r, k) == v for k, v in kw.items())]


def _one(records, **kw):
    rs = _find(records, **kw)
    return rs[0] if rs else None


def _x100(metric: str) -> bool:
    """Shown x100 (rates and 0-1 scores, CIDEr included), as the specificity's collateral counts them."""
    return metric_scale(metric) == 100.0


def mfr_task(records: Sequence[Record], follow: str) -> str:
    """The MFR task the records score ``follow``-direction head sets on (``mfr_text``, ``mfr_mc2_text``, ...)."""
    for r in records:
        if r.head_set == "targeted" and r.follow == follow and r.metric == "mfr" and r.is_mfr:
            return r.task
    return f"mfr_{follow}"


def specificity_tables(records: Sequence[Record]) -> list[dict]:
    """One table per (follow, intervention, coefficient, scope): {title, columns, rows}."""
    tables = []
    combos = sorted({(r.follow, r.intervention, r.coefficient or 0.0, r.scope) for r in records
                     if r.head_set == "targeted"}, key=str)
    cap = sorted({(r.task, r.metric) for r in records if r.is_capability})
    for follow, action, coef, scope in combos:
        task = mfr_task(records, follow)
        subset = PROTOCOL[action]
        orig = _one(records, head_set="original", task=task, metric="mfr", subset=subset)
        orig_full = _one(records, head_set="original", task=task, metric="mfr", subset="full")
        orig_cap = {(t, m): _one(records, head_set="original", task=t, metric=m, subset="full") for t, m in cap}
        coef_v = None if action == "block" else coef
        head_rows = []
        sel = dict(follow=follow, intervention=action, coefficient=coef_v, scope=scope, task=task, metric="mfr")
        for r in sorted(_find(records, subset=subset, **sel),
                        key=lambda r: ({"targeted": 0, "random": 1, "random_any": 2, "shared": 3,
                                        "layers": 4}.get(r.head_set, 9), r.k or 0)):
            if r.head_set.startswith("targeted-") or (r.head_set in RANDOM_CONTROLS and r.seed is not None):
                continue
            head_rows.append(r)
        controls = [c for c in RANDOM_CONTROLS if _find(records, subset=subset, head_set=f"targeted-{c}", **sel)]
        controls = controls or ["random"]
        columns = ["head set", "k", f"MFR {subset} [95% CI]", "MFR full"]
        columns += [f"vs {CONTROL_LABEL[c]} [95% CI]" for c in controls]
        columns += [f"{t}/{m}" for t, m in cap] + ["specificity"]
        rows = [["original", "", f"{_fmt(orig and orig.value)} (n={orig and orig.n})",
                 _fmt(orig_full and orig_full.value)] + [""] * len(controls)
                + [_fmt(v.value, _x100(m)) if v else "" for (_, m), v in orig_cap.items()] + [""]]
        for r in head_rows:
            label = (f"{CONTROL_LABEL[r.head_set]} (pooled, {r.n_seeds if isinstance(r.n_seeds, int) else '?'} seeds)"
                     if r.head_set in RANDOM_CONTROLS else r.head_set)
            full = _one(records, subset="full", head_set=r.head_set, k=r.k, seed=r.seed,
                        spec_hash=r.spec_hash, **sel)
            ci = f" [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.ci_low is not None else ""
            row = [label, str(r.k or ""), f"{_fmt(r.value)}{ci} (n={r.n})", _fmt(full and full.value)]
            for c in controls:
                diff = _one(records, subset=subset, head_set=f"targeted-{c}", k=r.k, spec_hash=r.spec_hash, **sel) \
                    if r.head_set == "targeted" else None
                row.append(f"{_fmt(diff.value, signed=True)} [{_fmt(diff.ci_low, signed=True)}, "
                           f"{_fmt(diff.ci_high, signed=True)}]" if diff else "")
            deltas = []
            for (t, m), o in orig_cap.items():
                c = _one(records, head_set=r.head_set, k=r.k, seed=r.seed, spec_hash=r.spec_hash,
                         follow=follow, intervention=action, coefficient=coef_v, scope=scope, task=t, metric=m,
                         subset="full")
                if c and o and c.value is not None and o.value is not None:
                    scale = metric_scale(m)
                    deltas.append(abs(c.value - o.value) * scale)
                    row.append(f"{_fmt(c.value, scale == 100.0)} ({_fmt(c.value - o.value, scale == 100.0, True)})")
                else:
                    row.append("")
            spec = _one(records, **{**sel, "metric": SPECIFICITY}, subset=subset, head_set=r.head_set, k=r.k,
                        seed=r.seed, spec_hash=r.spec_hash)
            if spec is not None and spec.value is not None:
                ci = f" [{spec.ci_low:.1f}, {spec.ci_high:.1f}]" if spec.ci_low is not None else ""
                sd = f" (seed sd {spec.seed_sd:.1f})" if isinstance(spec.seed_sd, float) else ""
                row.append(f"{spec.value:.1f}{ci}{sd}")
            elif deltas and orig and r.value is not None:  # records written before specificity records
                effect = abs(r.value - orig.value) * 100
                row.append(f"{effect - sum(deltas) / len(deltas):.1f}")
            else:
                row.append("")
            rows.append(row)
        what = "block" if action == "block" else f"amplify x{coef:g}"
        tables.append({"title": f"{follow}-following heads, {what} at {scope} (MFR in %, protocol subset: {subset})",
                       "columns": columns, "rows": rows})
    return tables


def cross_model_table(record_sets: Sequence[Sequence[Record]]) -> dict:
    """Rows = head sets, columns = model x protocol-subset MFR."""
    cols, cells = [], {}
    for records in record_sets:
        for r in records:
            if r.metric != "mfr" or not r.is_mfr or r.head_set.startswith("targeted-"):
                continue
            if r.head_set in RANDOM_CONTROLS and r.seed is not None:
                continue
            subset = PROTOCOL.get(r.intervention, "full")
            if r.subset != subset:
                continue
            col = f"{r.model} {r.task}"
            if col not in cols:
                cols.append(col)
            what = r.intervention if r.intervention != "amplify" else f"amplify x{r.coefficient:g}"
            row = (r.head_set, r.follow or "", r.k or "", what, r.scope or "")
            ci = f" [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.ci_low is not None else ""
            cells[(row, col)] = f"{_fmt(r.value)}{ci}"
    rows = sorted({k[0] for k in cells}, key=str)
    return {"title": "MFR (%) by model: protocol subset (followed for block, failed for amplify; full for original)",
            "columns": ["head set", "follow", "k", "intervention", "scope"] + cols,
            "rows": [list(map(str, row)) + [cells.get((row, c), "") for c in cols] for row in rows]}


def render_markdown(tables: Iterable[dict]) -> str:
    out = []
    for t in tables:
        out.append(f"### {t['title']}\n")
        out.append("| " + " | ".join(t["columns"]) + " |")
        out.append("|" + "|".join("---" for _ in t["columns"]) + "|")
        for row in t["rows"]:
            out.append("| " + " | ".join(str(c) for c in row) + " |")
        out.append("")
    return "\n".join(out)


def _tables_to_csv(tables, path: Path) -> None:
    import csv

    import io

    f = io.StringIO(newline="")
    w = csv.writer(f)
    for t in tables:
        w.writerow([t["title"]])
        w.writerow(t["columns"])
        w.writerows(t["rows"])
        w.writerow([])
    atomic_write_text(path, f.getvalue())


def plot_mfr_vs_k(records: Sequence[Record], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r.follow, r.intervention, r.coefficient or 0.0, r.scope) for r in records
                     if r.head_set == "targeted"}, key=str)
    if not combos:
        return None
    fig, axes = plt.subplots(1, len(combos), figsize=(5 * len(combos), 4), squeeze=False)
    for ax, (follow, action, coef, scope) in zip(axes[0], combos):
        subset = PROTOCOL[action]
        base = dict(follow=follow, intervention=action, coefficient=None if action == "block" else coef,
                    scope=scope, task=mfr_task(records, follow), metric="mfr", subset=subset)
        for hs, style in (("targeted", "o-"), ("random", "s--"), ("random_any", "v-."), ("layers", "^:")):
            rs = sorted((r for r in _find(records, head_set=hs, **base) if r.seed is None
                         and r.value is not None), key=lambda r: r.k)
            if not rs:
                continue
            ks = [r.k for r in rs]
            ax.plot(ks, [r.value * 100 for r in rs], style, label=CONTROL_LABEL.get(hs, hs))
            if all(r.ci_low is not None for r in rs):
                ax.fill_between(ks, [r.ci_low * 100 for r in rs], [r.ci_high * 100 for r in rs], alpha=0.2)
        for r in (x for x in _find(records, head_set="shared", **base) if x.value is not None):
            ax.errorbar([r.k], [r.value * 100], fmt="D", label=f"shared ({r.k})")
        o = _one(records, head_set="original", task=mfr_task(records, follow), metric="mfr", subset=subset)
        if o and o.value is not None:
            ax.axhline(o.value * 100, color="grey", ls="--", lw=0.8, label="original")
        what = "block" if action == "block" else f"amplify x{coef:g}"
        ax.set_title(f"{follow}: {what} at {scope} ({subset})")
        ticks = sorted({r.k for r in _find(records, **base) if r.k is not None})
        if ticks:
            ax.set_xticks(ticks)
        ax.set_xlabel("k (heads)")
        ax.set_ylabel("MFR (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_mfr_vs_coefficient(records: Sequence[Record], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    amp = [r for r in records if r.intervention == "amplify" and r.metric == "mfr" and r.subset == "failed"
           and r.head_set in ("targeted", *RANDOM_CONTROLS) and r.seed is None and r.is_mfr
           and r.value is not None]
    if not amp:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(r.follow, r.head_set, r.k, r.scope) for r in amp}, key=str):
        rs = sorted((r for r in amp if (r.follow, r.head_set, r.k, r.scope) == key),
                    key=lambda r: r.coefficient)
        ax.plot([r.coefficient for r in rs], [r.value * 100 for r in rs], "o-" if key[1] == "targeted" else "s--",
                label=f"{key[0]} {key[1]} k={key[2]} @{key[3]}")
    ax.set_xlabel("amplification coefficient")
    ax.set_ylabel("MFR on failures (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_leaderboard(records: Sequence[Record], out_prefix: str | Path) -> list[Path]:
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tables = specificity_tables(records)
    written = []
    md = prefix.with_suffix(".md")
    atomic_write_text(md, f"# {prefix.name}\n\n" + render_markdown(tables) + "\n"
                      + render_markdown([cross_model_table([records])]))
    written.append(md)
    csv = prefix.with_suffix(".csv")
    _tables_to_csv(tables, csv)
    written.append(csv)
    for fn, name in ((plot_mfr_vs_k, "_mfr_vs_k.png"), (plot_mfr_vs_coefficient, "_mfr_vs_coefficient.png")):
        p = fn(records, prefix.parent / (prefix.name + name))
        if p:
            written.append(p)
    return written


def compare_records(baseline: Sequence[Record], new: Sequence[Record], tolerance: float = 0.02,
                    mode: str = "abs") -> tuple[list[dict], list[str]]:
    """Return (failures, missing keys). A failure: {key, old, new, delta, allowed}."""
    if mode not in ("abs", "ci"):
        raise ValueError(f"mode must be abs or ci, got {mode!r}")
    new_by = {record_key(r): r for r in new}
    failures, missing = [], []
    for b in baseline:
        k = record_key(b)
        n = new_by.get(k)
        if n is None:
            missing.append(" ".join(str(x) for x in k))
            continue
        old_v, new_v = b.value, n.value
        if old_v is None or new_v is None:
            if (old_v is None) != (new_v is None):
                failures.append({"key": k, "old": old_v, "new": new_v, "delta": None, "allowed": "value present"})
            continue
        delta = new_v - old_v
        # specificity records are in points (x100): the tolerance, stated for 0-1 metrics, scales with them
        tol = tolerance * 100.0 if b.metric == SPECIFICITY else tolerance
        if mode == "ci" and b.ci_low is not None:
            lo, hi = b.ci_low - tol, b.ci_high + tol
            bad = not (lo <= new_v <= hi)
            allowed = f"[{lo:.4f}, {hi:.4f}]"
        else:
            bad = abs(delta) > tol + 1e-12
            allowed = f"+-{tol:g}"
        if bad:
            failures.append({"key": k, "old": old_v, "new": new_v, "delta": delta, "allowed": allowed})
    return failures, missing
