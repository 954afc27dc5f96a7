"""The card's evaluation: MFR through lmms-eval, targeted vs random heads, the head-set spec files."""

from __future__ import annotations


import os
import time

from pathlib import Path
from typing import Any, Sequence

from mf_harness.embedded.train.batches import pixel_bounds
from mf_harness.embedded.train.config import DEFAULT
from mf_harness.embedded.train.measure import (bundled_docs, harness_lm, head_effects, ldar_by_layer, margin_mfr,
                                               ranked_heads, samples_for)
from mf_harness.runs.stats import paired_bootstrap_interval, t_interval, wilson_interval
from mf_harness.runs.sweep import random_any


def lmms_mfr(path: Path, follow: str, extra_args: str = "", env: dict | None = None) -> list[int]:
    """Per-doc 0/1 MFR on the bundled set through the real lmms-eval path (`mf_harness.lmms.run.run_mfr`)."""
    from mf_harness.lmms.run import run_mfr
    from mf_harness.tasks.mfr.mfr import process_results

    task = f"mfr_{follow}"
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    # the wrapper applies lmms-eval's Qwen pixel bounds to any checkpoint but `pretrained=embedded`;
    # pass this checkpoint's own bounds so a directory is evaluated exactly as `embedded` is
    from transformers import AutoProcessor

    lo, hi, _ = pixel_bounds(AutoProcessor.from_pretrained(path))
    margs = f"pretrained={path},min_pixels={lo},max_pixels={hi}" + (f",{extra_args}" if extra_args else "")
    try:
        res = run_mfr(margs, tasks=(task,))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    docs = bundled_docs(follow) if not env else None
    answers = res[task]["answers"]
    if docs is None:
        # the instruction differs, not the answers: score against the default docs' answer sets
        docs = bundled_docs(follow)
    out = []
    for i in range(len(docs)):
        a = answers[i]
        out.append(int(process_results(docs[i], [a[0] if isinstance(a, list) else a])["mfr"]))
    return out


def evaluate(path: str | Path, seed: int = 0, ks: Sequence[int] = (1, 2, 4, 8), n_random: int = 5,
             ranking_rows: int = 96, log=print) -> dict[str, Any]:
    """Everything the model card reports, measured on the checkpoint at ``path``."""
    import torch

    from mf_harness.embedded.train import synth
    from mf_harness.core.arch import geometry
    from mf_harness.core.spec import InterventionSpec

    path = Path(path)
    torch.set_num_threads(DEFAULT.threads)
    lm = harness_lm(path)
    geo = geometry(lm.model)
    out: dict[str, Any] = {"heads": [geo.num_layers, geo.num_heads]}
    t0 = time.time()

    # 1. held-out MFR through lmms-eval: the eval default phrasing and the two held-out ones
    phr = {"paper": {}, "focus (held out)": {"MF_HARNESS_INSTRUCTION": "focus"},
           "custom (held out)": {"MF_HARNESS_INSTRUCTION_TEXT": synth.HELDOUT_INSTRUCTIONS["text"][1],
                                 "MF_HARNESS_INSTRUCTION_VISION": synth.HELDOUT_INSTRUCTIONS["vision"][1]}}
    out["mfr"] = {}
    for name, env in phr.items():
        out["mfr"][name] = {}
        for follow in ("text", "vision"):
            hits = lmms_mfr(path, follow, env=env or None)
            p = sum(hits) / len(hits)
            out["mfr"][name][follow] = {"mfr": round(p, 4), "n": len(hits), "ci95": wilson_interval(p, len(hits))}
        log(f"  MFR {name}: {out['mfr'][name]}  ({time.time() - t0:.0f}s)")

    # 1b. general capability in the model's world (no conflict): the mf_shapes tasks through lmms-eval
    out["capability"] = lmms_capability(path)
    log(f"  capability {out['capability']}  ({time.time() - t0:.0f}s)")

    # 2. where the conflict is settled: LDAR by layer on the bundled docs (`mf-harness lens`'s measure)
    samples = {f: samples_for(lm, f) for f in ("text", "vision")}
    out["ldar"] = {f: ldar_by_layer(lm, samples[f]) for f in samples}
    log(f"  LDAR {out['ldar']}  ({time.time() - t0:.0f}s)")

    # 3. heads ranked by single-head ablation on generator rows, not the eval set (`discover --method ablation`)
    out["effects"], out["ranking"] = {}, {}
    for follow in ("text", "vision"):
        rows = samples_for(lm, follow, synth.heldout_rows(seed + 7, ranking_rows, follow=follow))
        for scope in ("instruction", "last"):
            eff = head_effects(lm, rows, scope)
            out["effects"][f"{follow}/{scope}"] = [[round(float(x), 3) for x in r] for r in eff]
            out["ranking"][f"{follow}/{scope}"] = [f"L{l}H{h}" for l, h in ranked_heads(eff)]
    log(f"  rankings done ({time.time() - t0:.0f}s)")

    # 4. fast sweep (final-logit margin) over k: targeted vs n_random random sets from any layer (the sweep's
    # ``random_any`` control)
    out["sweep"] = {}
    for follow in ("text", "vision"):
        for scope in ("instruction", "last"):
            ranked = [InterventionSpec(block=[h]).block[0] for h in out["ranking"][f"{follow}/{scope}"]]
            for k in ks:
                top = sorted(ranked[:k])
                tgt = margin_mfr(lm, samples[follow], InterventionSpec(block=top, scope=scope))
                rnd = [margin_mfr(lm, samples[follow], InterventionSpec(
                    block=random_any(top, geo.num_layers, geo.num_heads, s, salt=follow), scope=scope))
                    for s in range(n_random)]
                out["sweep"][f"{follow}/{scope}/k{k}"] = {"targeted": round(tgt, 4),
                                                         "random": [round(r, 4) for r in rnd]}
    out["clean_margin_mfr"] = {f: round(margin_mfr(lm, samples[f]), 4) for f in samples}
    log(f"  sweep done ({time.time() - t0:.0f}s)")
    out["eval_seconds"] = round(time.time() - t0, 1)
    return out


def lmms_capability(path: Path) -> dict[str, dict]:
    """The original model on the ``mf_shapes`` capability tasks through lmms-eval: {task: {metric: value, n}}."""
    from lmms_eval import evaluator

    import mf_harness.lmms.plugin as plugin
    from mf_harness.runs.score import EMBEDDED_CAPABILITY

    plugin.install()
    from lmms_eval.tasks import TaskManager

    lm = harness_lm(path)
    res = evaluator.simple_evaluate(model=lm, tasks=list(EMBEDDED_CAPABILITY), batch_size=8,
                                    task_manager=TaskManager("ERROR"), verbosity="ERROR")
    out = {}
    for t in EMBEDDED_CAPABILITY:
        r = res["results"][t]
        out[t] = {k.split(",")[0]: round(float(v), 4) for k, v in r.items() if "," in k and "_stderr" not in k}
        out[t]["n"] = res["n-samples"][t]["effective"]
    return out


def headline(path: str | Path, results: dict, follow: str, scope: str, k: int, n_random: int = 5) -> dict:
    """Targeted top-k vs ``n_random`` random k-head sets at ``scope``, through lmms-eval, with CIs."""
    from mf_harness.core.spec import InterventionSpec

    L, H = results["heads"]
    top = [InterventionSpec(block=[h]).block[0] for h in results["ranking"][f"{follow}/{scope}"][:k]]
    base = lmms_mfr(Path(path), follow)
    tgt = lmms_mfr(Path(path), follow, f"block={'+'.join(map(str, top))},scope={scope}")
    rnd_sets = [[(h.layer, h.head) for h in random_any(top, L, H, s, salt=follow)] for s in range(n_random)]
    rnd = [lmms_mfr(Path(path), follow, f"block={'+'.join(f'L{l}H{h}' for l, h in hs)},scope={scope}")
           for hs in rnd_sets]
    n = len(tgt)
    m = lambda xs: sum(xs) / len(xs)  # noqa: E731
    rnd_means = [m(r) for r in rnd]
    return {
        "follow": follow, "scope": scope, "k": k, "n": n,
        "heads": [str(h) for h in top],
        "original": {"mfr": round(m(base), 4), "ci95": wilson_interval(m(base), n)},
        "targeted": {"mfr": round(m(tgt), 4), "ci95": wilson_interval(m(tgt), n)},
        "random": {"mfr_mean": round(m(rnd_means), 4), "per_seed": [round(x, 4) for x in rnd_means],
                   "ci95_over_seeds": t_interval(rnd_means),
                   "heads": [[f"L{l}H{h}" for l, h in hs] for hs in rnd_sets]},
        "gap": round(m(rnd_means) - m(tgt), 4),
        "gap_ci95_paired_bootstrap": paired_bootstrap_interval(tgt, rnd),
    }


def choose_k(results: dict, follow: str, scope: str, bar: float = 0.3) -> int:
    """The smallest k whose first-token sweep gap (random mean - targeted) reaches ``bar``, else the largest gap."""
    rows = []
    for key, v in results["sweep"].items():
        f, sc, k = key.split("/")
        if f == follow and sc == scope:
            gap = sum(v["random"]) / len(v["random"]) - v["targeted"]
            rows.append((int(k[1:]), gap))
    rows.sort()
    for k, gap in rows:
        if gap >= bar:
            return k
    return max(rows, key=lambda x: x[1])[0]


def write_specs(results: dict, out_dir: Path, model_label: str | None) -> list[Path]:
    """One spec JSON per (follow, scope) headline: ``embedded_<follow>_<scope>_top<k>.json``."""
    from mf_harness.core.spec import InterventionSpec

    paths = []
    for h in results["headlines"]:
        name = f"embedded_{h['follow']}_{h['scope']}_top{h['k']}"
        spec = InterventionSpec(block=h["heads"], scope=h["scope"], name=name, provenance={
            "model": model_label or "embedded",
            "weights_sha256": results.get("weights_sha256", ""),
            "method": f"top-{h['k']} heads by single-head ablation at scope '{h['scope']}': mean drop of the "
                      f"compliant-minus-competing logit margin at the last prompt position, "
                      f"{results['ranking_rows']} generator rows (mf_harness.embedded.train.synth.heldout_rows, seed "
                      f"{results['ranking_seed']}), follow={h['follow']}",
            "eval": f"bundled mfr_{h['follow']} (n={h['n']}): original {h['original']['mfr']}, targeted "
                    f"{h['targeted']['mfr']}, random k={h['k']} x{len(h['random']['per_seed'])} seeds "
                    f"{h['random']['mfr_mean']} (gap {h['gap']}, 95% CI {h['gap_ci95_paired_bootstrap']})",
        })
        paths.append(spec.save(out_dir / f"{name}.json"))
    return paths
