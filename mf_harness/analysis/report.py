"""Drivers behind ``mf-harness discover | lens | knockout``: tables, plots and head-set specs.

Every driver loads the model exactly as ``--model_args`` would for lmms-eval
(`IntervenedHF`), loads the docs through lmms-eval's own task (`load_task_docs`), runs
one measure and writes into ``--output-dir``:

* ``discover``: ``heads.csv`` (per head: mean DLA contribution at the instruction and at the
  last position, single-head ablation effect if computed, ranks), ``layers.csv`` (attention vs
  MLP contribution to M_l), ``rank_correlation.csv``, head-set specs
  ``heads_<follow>_top<k>.json`` and ``heads_shared_top<K>.json`` (provenance included),
  plots ``heads_<follow>.png`` (layer x head heat map) and ``layers.png``.
* ``lens``: ``ldar.csv`` and ``ldar.png`` (LDAR by layer at the instruction tokens and the
  last position, split by success/failure).
* ``knockout``: ``knockout.csv`` (per sample), ``nssd.csv`` (mean, std, n, decision-level MFR
  before/after per layer) and ``nssd.png``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Sequence

from mf_harness.checks import atomic_write_text, save_figure
from mf_harness.provenance import git_hash

__all__ = ["discover", "lens", "knockout", "load_lm_and_samples"]


def _docs_hash(samples) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(s.rendered.encode())
        h.update(json.dumps([s.compliant_ids, s.competing_ids]).encode())
    return h.hexdigest()[:16]


def load_lm_and_samples(model_args: str, tasks: Sequence[str], limit: int | None, extra_forms=None):
    from lmms_eval.utils import simple_parse_args_string

    from mf_harness.analysis.samples import load_task_docs, prepare_samples
    from mf_harness.lmms.model import IntervenedHF

    args = simple_parse_args_string(model_args or "")
    lm = IntervenedHF(**args)
    if not lm.spec.is_empty:
        from mf_harness.errors import MfHarnessError

        raise MfHarnessError("analysis runs on the unmodified model: remove the spec keys from --model-args")
    samples = []
    for t in tasks:
        obj, docs = load_task_docs(t, limit)
        samples += prepare_samples(lm, obj, docs, extra_forms)
    return lm, samples, args


def _provenance(lm, args, samples, tasks, method, params) -> dict:
    import mf_harness

    return {
        "model": str(args.get("pretrained", "embedded")),
        "revision": args.get("revision"),
        "model_type": lm.model.config.model_type,
        "tasks": list(tasks),
        "n_samples": len(samples),
        "dataset_hash": _docs_hash(samples),
        "method": method,
        "params": params,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mf_harness": mf_harness.__version__,
        "git": git_hash(),
    }


def _plot_heatmap(df, value: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    L, H = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    grid = np.full((L, H), np.nan)
    for r in df.itertuples():
        grid[int(r.layer), int(r._asdict()["head"])] = getattr(r, value)
    lim = np.nanmax(np.abs(grid)) or 1.0
    fig, ax = plt.subplots(figsize=(max(4, H * 0.35 + 2), max(3, L * 0.25 + 1.5)))
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=value)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _plot_lines(df, x: str, series: dict, ylabel: str, title: str, path: Path, band: dict | None = None,
                hline: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, sub in series.items():
        sub = sub.sort_values(x)
        ax.plot(sub[x], sub[ylabel if ylabel in sub else "value"], marker="o", label=label)
        if band and label in band:
            lo, hi = band[label]
            ax.fill_between(sub[x], sub[lo], sub[hi], alpha=0.2)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _spearman(a, b) -> float:
    import pandas as pd

    return float(pd.Series(list(a)).rank().corr(pd.Series(list(b)).rank()))


def discover(model_args: str, out: Path, tasks=("mfr_text", "mfr_vision"), limit=None, k_list=(10, 20, 30, 40),
             topk_tokens: int = 3, method: str = "dla", site: str = "instruction", ablation_scope: str = "instruction",
             batch_size: int = 8, readout_layer: int = -1, extra_forms=None, progress=True) -> dict:
    """Rank heads by their contribution to the arbitration margin and write head-set specs.

    ``method``: ``dla`` (direct logit attribution, the paper's Eq. 9), ``ablation`` (total
    effect of blocking each head alone at ``ablation_scope``), ``both`` (ranks by DLA, and
    reports the rank correlation with ablation) or ``atp`` (attribution patching: a first-order
    estimate of the ablation from one forward and one backward per batch; ranks by it and reports
    its rank correlation with exact ablation, also computed, on the same samples).
    """
    import pandas as pd

    from mf_harness.analysis.measures import ablation_effects, lens_and_attribution
    from mf_harness.core.spec import Head, InterventionSpec

    if method not in ("dla", "ablation", "both", "atp"):
        from mf_harness.errors import MfHarnessError

        raise MfHarnessError(f"method must be dla, ablation, both or atp; got {method!r}")
    out.mkdir(parents=True, exist_ok=True)
    lm, samples, args = load_lm_and_samples(model_args, tasks, limit, extra_forms)

    def measure(ss) -> dict[str, list[dict]]:
        from mf_harness.analysis.attribution import attribution_patching

        r = lens_and_attribution(lm, ss, k=topk_tokens, batch_size=batch_size, readout_layer=readout_layer,
                                 progress=progress)
        rows = {"heads": r["heads"], "layers": r["layers"]}
        if method == "atp":
            rows["atp"] = attribution_patching(lm, ss, scope=ablation_scope, batch_size=batch_size,
                                               progress=progress)
        if method in ("ablation", "both", "atp"):
            rows["ablation"] = ablation_effects(lm, ss, scope=ablation_scope, batch_size=batch_size,
                                                progress=progress)
        return rows

    from mf_harness.analysis.shards import sharded

    r = sharded(lm, samples, out, measure, dict(tasks=list(tasks), limit=limit, topk_tokens=topk_tokens,
                                                 method=method, ablation_scope=ablation_scope,
                                                 readout_layer=readout_layer, batch_size=batch_size))
    if r is None:  # data parallel: a rank other than 0 measured its share; rank 0 writes
        return {"rank": lm.rank, "out": out}
    heads = pd.DataFrame(r["heads"])
    agg = (heads.groupby(["follow", "site", "layer", "head"]).contribution.agg(["mean", "std", "count"])
           .reset_index().rename(columns={"mean": "dla_mean", "std": "dla_std", "count": "n"}))
    table = agg[agg.site == site].drop(columns="site").copy()
    if method == "atp":
        at = pd.DataFrame(r["atp"])
        atg = (at.groupby(["follow", "layer", "head"]).effect.agg(["mean", "std"]).reset_index()
               .rename(columns={"mean": "atp_mean", "std": "atp_std"}))
        table = table.merge(atg, on=["follow", "layer", "head"], how="left")
    if method in ("ablation", "both", "atp"):
        ab = pd.DataFrame(r["ablation"])
        abg = (ab.groupby(["follow", "layer", "head"]).effect.agg(["mean", "std"]).reset_index()
               .rename(columns={"mean": "ablation_mean", "std": "ablation_std"}))
        table = table.merge(abg, on=["follow", "layer", "head"], how="left")
    key = {"ablation": "ablation_mean", "atp": "atp_mean"}.get(method, "dla_mean")
    table["rank"] = table.groupby("follow")[key].rank(ascending=False, method="first").astype(int)
    table = table.sort_values(["follow", "rank"])
    atomic_write_text(out / "heads.csv", table.to_csv(index=False))
    atomic_write_text(out / "heads_by_site.csv", agg.to_csv(index=False))
    layers = pd.DataFrame(r["layers"]).groupby(["follow", "layer"])[["margin", "attn", "mlp"]].mean().reset_index()
    atomic_write_text(out / "layers.csv", layers.to_csv(index=False))
    corr_rows = []
    if method in ("ablation", "both", "atp"):
        for follow, g in table.groupby("follow"):
            row = dict(follow=follow, spearman_dla_vs_ablation=_spearman(g.dla_mean, g.ablation_mean), n_heads=len(g))
            if method == "atp":
                row["spearman_atp_vs_ablation"] = _spearman(g.atp_mean, g.ablation_mean)
            corr_rows.append(row)
        atomic_write_text(out / "rank_correlation.csv", pd.DataFrame(corr_rows).to_csv(index=False))
    total = lm.geometry.total_heads
    params = dict(topk_tokens=topk_tokens, site=site, readout_layer=readout_layer, ranking=key,
                  ablation_scope=ablation_scope if method != "dla" else None, limit=limit)
    prov = _provenance(lm, args, samples, tasks, method, params)
    written = []
    ranked = {f: [Head(int(r.layer), int(r.head)) for r in g.itertuples()] for f, g in table.groupby("follow")}
    ks = sorted({min(k, total) for k in k_list})
    for follow, order in ranked.items():
        for k in ks:
            spec = InterventionSpec(block=order[:k], scope=ablation_scope if method in ("ablation", "atp") else site,
                                    name=f"{follow}_top{k}", provenance=dict(prov, follow=follow, k=k))
            written.append(spec.save(out / f"heads_{follow}_top{k}.json"))
        _plot_heatmap(table[table.follow == follow], key, f"{follow}-following: {key} per head",
                      out / f"heads_{follow}.png")
    if len(ranked) == 2:
        K = max(ks)
        a, b = (set(v[:K]) for v in ranked.values())
        shared = sorted(a & b)
        spec = InterventionSpec(block=shared, scope=ablation_scope if method in ("ablation", "atp") else site,
                                name=f"shared_top{K}",
                                provenance=dict(prov, follow="both", k=K, note="heads in both top-K lists"))
        written.append(spec.save(out / f"heads_shared_top{K}.json"))
    series = {}
    for follow, g in layers.groupby("follow"):
        for comp in ("attn", "mlp"):
            series[f"{follow} {comp}"] = g.rename(columns={comp: "value"})[["layer", "value"]]
    _plot_lines(layers, "layer", series, "value", "contribution to the instruction margin M_l",
                out / "layers.png", hline=0)
    return {"heads": table, "layers": layers, "specs": written, "correlation": corr_rows, "out": out}


def lens(model_args: str, out: Path, tasks=("mfr_text", "mfr_vision"), limit=None, topk_tokens: int = 3,
         batch_size: int = 8, extra_forms=None, progress=True) -> dict:
    import pandas as pd

    from mf_harness.analysis.measures import ldar_table, lens_and_attribution

    out.mkdir(parents=True, exist_ok=True)
    lm, samples, args = load_lm_and_samples(model_args, tasks, limit, extra_forms)
    r = lens_and_attribution(lm, samples, k=topk_tokens, batch_size=batch_size, progress=progress)
    atomic_write_text(out / "lens_samples.csv", pd.DataFrame(r["lens"]).to_csv(index=False))
    table = ldar_table(r["lens"])
    atomic_write_text(out / "ldar.csv", table.to_csv(index=False))
    series = {}
    for (follow, site), g in table[table.subset == "all"].groupby(["follow", "site"]):
        series[f"{follow} @ {site}"] = g.rename(columns={"ldar": "value"})[["layer", "value"]]
    _plot_lines(table, "layer", series, "value", "LDAR by layer (instruction tokens vs last position)",
                out / "ldar.png", hline=0.5)
    return {"ldar": table, "out": out, "n": len(samples)}


def knockout(model_args: str, out: Path, pairs: Sequence[tuple[str, str]], tasks=("mfr_text", "mfr_vision"),
             limit=None, window: int = 9, batch_size: int = 8, extra_forms=None, progress=True) -> dict:
    import pandas as pd

    from mf_harness.analysis.measures import knockout_nssd

    out.mkdir(parents=True, exist_ok=True)
    lm, samples, args = load_lm_and_samples(model_args, tasks, limit, extra_forms)
    rows = []
    for src, dest in pairs:
        rows += knockout_nssd(lm, samples, src, dest, window=window, batch_size=batch_size, progress=progress)
    df = pd.DataFrame(rows)
    atomic_write_text(out / "knockout.csv", df.to_csv(index=False))
    agg = (df.groupby(["follow", "src", "dest", "layer", "window"])
           .agg(nssd_mean=("nssd", "mean"), nssd_std=("nssd", lambda x: float(x.std(ddof=0))), n=("nssd", "size"),
                mfr_before=("compliant_before", "mean"), mfr_after=("compliant_after", "mean")).reset_index())
    agg["mfr_change"] = agg.mfr_after - agg.mfr_before
    atomic_write_text(out / "nssd.csv", agg.to_csv(index=False))
    series, band = {}, {}
    for (follow, src, dest), g in agg.groupby(["follow", "src", "dest"]):
        g = g.assign(value=g.nssd_mean, lo=g.nssd_mean - g.nssd_std, hi=g.nssd_mean + g.nssd_std)
        label = f"{follow}: {src}->{dest}"
        series[label] = g
        band[label] = ("lo", "hi")
    _plot_lines(agg, "layer", series, "value", f"NSSD by layer (window {window}; band: +-1 sd)",
                out / "nssd.png", band=band, hline=0)
    return {"nssd": agg, "out": out, "n": len(samples)}
