"""Score head sets for specificity: `mf-harness score SPEC [SPEC...]`.

Each head set (a spec file, inline head names, a ranking's top k, or a layer/head list: whatever
`mf_harness.core.spec_import.import_spec` reads) is run as one sweep of its own
(`mf_harness.runs.sweep`, same engines, cache and resume), on one loaded model:

* the head set itself in the paper's protocol (block: scored on the samples the original
  model follows; amplify: on its failures), on the MFR task of each direction asked for;
* random controls matched to *that* set, ``seeds`` each: ``random`` (the same number of heads
  in each layer) and ``random_any`` (the same number of heads from any layer);
* the capability tasks (default: the embedded world's ``mf_shapes_*`` tasks on
  ``pretrained=embedded``, the bundled capability fixtures elsewhere) under every one of them;
* the specificity score of each (`mf_harness.runs.stats.specificity`: effect on MFR minus the
  mean change of the capability metrics, in points, with a paired per-sample bootstrap CI;
  random controls pooled per sample over seeds, their spread shown).

Outputs under the output directory: ``sets/<name>/`` (the set's sweep: records, cells,
lmms-eval layout, and ``card.md``), ``score.md`` / ``score.csv`` (one row per head set and
direction), ``records.jsonl`` (every set's records, the original model's once: `leaderboard`
reads it; `compare` re-scores a set from ``sets/<name>/records.jsonl``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Sequence

from mf_harness.checks import atomic_write_text, safe_name
from mf_harness.core.spec import InterventionSpec
from mf_harness.errors import MfHarnessError
from mf_harness.runs.records import PROTOCOL, SPECIFICITY, Record, record_key, write_records

__all__ = ["EMBEDDED_CAPABILITY", "FIXTURE_CAPABILITY", "default_capability_tasks", "run_score", "score_rows",
           "render_score", "set_card"]

EMBEDDED_CAPABILITY = ("mf_shapes_image", "mf_shapes_text", "mf_shapes_agree", "mf_shapes_caption")
FIXTURE_CAPABILITY = ("mf_textvqa_val_fixture", "mf_mmlu_fixture")


def default_capability_tasks(model_args: str) -> list[str]:
    """The embedded world's tasks on ``pretrained=embedded`` (the bare command runs offline); elsewhere a cheap
    offline smoke subset of the real benchmarks' fixtures (name real tasks with ``--tasks`` for a measurement)."""
    from lmms_eval.utils import simple_parse_args_string

    pretrained = str(simple_parse_args_string(model_args or "").get("pretrained", "embedded"))
    return list(EMBEDDED_CAPABILITY if pretrained == "embedded" else FIXTURE_CAPABILITY)


def _set_name(spec: InterventionSpec, i: int, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() or c in "._-" else "_" for c in (spec.name or f"set{i + 1}"))[:60] or f"set{i + 1}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return safe_name(name, "head set name")


def run_score(specs: Sequence[InterventionSpec], out: str | Path, *, model_args: str = "pretrained=embedded",
              follows: Sequence[str] = ("text", "vision"), capability_tasks: Sequence[str] | None = None,
              seeds: int = 5, controls: Sequence[str] = ("random", "random_any"), limit: int | None = None,
              batch_size: int = 8, engine: str = "fast", mfr_task: str = "mfr", progress: bool = True) -> dict:
    """Score every spec (see the module doc); returns {sets: [{name, spec, out, records}], records, rows, wall_s}."""
    from lmms_eval.utils import simple_parse_args_string

    import mf_harness.lmms.plugin as plugin
    from mf_harness.lmms.model import IntervenedHF
    from mf_harness.runs.sweep import SweepConfig, run_sweep

    if not specs:
        raise MfHarnessError("give at least one head set to score")
    plugin.install()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MfHarnessError(f"output dir {out} is a file; give a directory (it is created if missing)")
    tasks = list(capability_tasks) if capability_tasks is not None else default_capability_tasks(model_args)
    taken: set[str] = set()
    configs = []
    for i, spec in enumerate(specs):  # every config is checked before the model loads or anything is written
        name = _set_name(spec, i, taken)
        configs.append((name, spec, SweepConfig(
            model_args=model_args, head_set=spec.to_dict(), seeds=seeds, follows=list(follows),
            controls=list(controls), capability_tasks=tasks, limit=limit, batch_size=batch_size, name=name,
            engine=engine, mfr_task=mfr_task)))
    try:
        margs = simple_parse_args_string(model_args)
    except ValueError:
        raise MfHarnessError(f"model_args must be key=value pairs separated by commas; got {model_args!r}") from None
    lm = IntervenedHF(batch_size=batch_size, **{k: v for k, v in margs.items() if k != "batch_size"})
    for _, spec, _ in configs:
        spec.validate_for(lm.geometry.num_layers, lm.geometry.num_heads, lm.model_name, lm.geometry.attn_layers)
    t0 = time.time()
    sets = []
    for name, spec, cfg in configs:
        r = run_sweep(cfg, out / "sets" / name, progress=progress, lm=lm)
        if r.get("rank", 0) != 0:  # data parallel: rank 0 writes cards, tables and records
            continue
        atomic_write_text(out / "sets" / name / "card.md", set_card(name, spec, r["records"], model_args))
        sets.append({"name": name, "spec": spec, "out": out / "sets" / name, "records": r["records"]})
    if lm.rank != 0:
        return {"sets": [], "records": [], "rows": [], "wall_s": time.time() - t0, "out": out, "rank": lm.rank}
    combined, seen = [], set()
    for s in sets:
        for rec in s["records"]:
            key = record_key(rec)
            if rec.head_set == "original" and key in seen:
                continue  # the original model, measured once per set: identical, kept once
            seen.add(key)
            combined.append(rec)
    header = {"score": {"sets": [s["name"] for s in sets], "model_args": model_args, "follows": list(follows),
                        "capability_tasks": tasks, "seeds": seeds, "controls": list(controls)}}
    write_records(combined, out / "records.jsonl", header=header)
    rows = score_rows(sets)
    md, table_csv = render_score(rows, model_args, tasks)
    atomic_write_text(out / "score.md", md)
    atomic_write_text(out / "score.csv", table_csv)
    return {"sets": sets, "records": combined, "rows": rows, "wall_s": time.time() - t0, "out": out}


def _one(records: Sequence[Record], **kw) -> Record | None:
    for r in records:
        if all(getattr(r, k) == v for k, v in kw.items()):
            return r
    return None


def _pct(v, signed=False) -> str:
    if v is None:
        return ""
    return f"{v * 100:+.1f}" if signed else f"{v * 100:.1f}"


def _ci(r: Record | None, scale: float = 100.0, signed: bool = False) -> str:
    if r is None or r.value is None:
        return ""
    f = (lambda x: f"{x * scale:+.1f}") if signed else (lambda x: f"{x * scale:.1f}")
    ci = f" [{f(r.ci_low)}, {f(r.ci_high)}]" if r.ci_low is not None and r.ci_high is not None else ""
    return f"{f(r.value)}{ci}"


def score_rows(sets: Sequence[dict]) -> list[dict]:
    """One row per (head set, direction): MFR, paired differences to the controls, capability, specificity."""
    rows = []
    for s in sets:
        recs = s["records"]
        for tgt in [r for r in recs if r.head_set == "targeted" and r.metric == "mfr" and r.subset ==
                    PROTOCOL[r.intervention]]:
            sel = dict(follow=tgt.follow, intervention=tgt.intervention, coefficient=tgt.coefficient,
                       scope=tgt.scope, task=tgt.task, subset=tgt.subset)
            orig = _one(recs, head_set="original", task=tgt.task, metric="mfr", subset=tgt.subset)
            row = {"head set": s["name"], "follow": tgt.follow, "action": tgt.intervention if tgt.intervention ==
                   "block" else f"amplify x{tgt.coefficient:g}", "scope": tgt.scope, "k": tgt.k,
                   "heads": " ".join(tgt.heads or []), "n": tgt.n, "subset": tgt.subset,
                   "mfr original": orig and orig.value, "mfr": tgt, "specificity": _one(
                       recs, head_set="targeted", metric=SPECIFICITY, spec_hash=tgt.spec_hash, **sel)}
            for c in ("random", "random_any"):
                row[f"vs {c}"] = _one(recs, head_set=f"targeted-{c}", metric="mfr", spec_hash=tgt.spec_hash, **sel)
                row[f"mfr {c}"] = next((r for r in recs if r.head_set == c and r.seed is None and r.metric == "mfr"
                                        and all(getattr(r, k) == v for k, v in sel.items())), None)
                row[f"specificity {c}"] = next((r for r in recs if r.head_set == c and r.seed is None and
                                                r.metric == SPECIFICITY and
                                                all(getattr(r, k) == v for k, v in sel.items())), None)
            caps = {}
            for r in recs:
                if r.is_capability and r.head_set == "targeted" and r.spec_hash == tgt.spec_hash:
                    o = _one(recs, head_set="original", task=r.task, metric=r.metric, subset="full")
                    caps[f"{r.task}/{r.metric}"] = (o and o.value, r.value)
            row["capability"] = caps
            rows.append(row)
    return rows


def render_score(rows: Sequence[dict], model_args: str, tasks: Sequence[str]) -> tuple[str, str]:
    """(Markdown, CSV) of the score table."""
    cap_names = sorted({c for r in rows for c in r["capability"]})
    head = ["head set", "follow", "action @ scope", "k", "MFR original", "MFR head set [95% CI]",
            "vs random layer-matched [95% CI]", "vs random any layer [95% CI]"]
    head += [f"{c} (change)" for c in cap_names]
    head += ["specificity [95% CI]", "specificity random layer-matched", "specificity random any layer"]
    body = []
    for r in rows:
        line = [r["head set"], r["follow"], f"{r['action']} @ {r['scope']}", str(r["k"]),
                f"{_pct(r['mfr original'])} (n={r['n']}, {r['subset']})", _ci(r["mfr"]),
                _ci(r["vs random"], signed=True), _ci(r["vs random_any"], signed=True)]
        for c in cap_names:
            o, v = r["capability"].get(c, (None, None))
            line.append(f"{_pct(v)} ({_pct(v - o, True)})" if o is not None and v is not None else "")
        for key in ("specificity", "specificity random", "specificity random_any"):
            sp = r[key]
            sd = f" (seed sd {sp.seed_sd:.1f})" if sp is not None and isinstance(sp.seed_sd, float) else ""
            line.append(_ci(sp, scale=1.0) + sd if sp is not None else "")
        body.append(line)
    md = [f"# Specificity of {len({r['head set'] for r in rows})} head set(s)", "",
          f"Model: `{model_args}`. Capability tasks: {', '.join(f'`{t}`' for t in tasks) or 'none'}.", "",
          "MFR in %, on the protocol subset (block: samples the original model follows; amplify: its failures). "
          "`vs random ...`: head set minus its random controls (pooled over seeds), paired per sample. Capability "
          "metrics x100 with their change from the original model. Specificity = |MFR change| - mean |capability "
          "change|, in points, paired per-sample bootstrap 95% CI.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(x.replace("|", "/") for x in line) + " |" for line in body]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    w.writerows(body)
    return "\n".join(md) + "\n", buf.getvalue()


def set_card(name: str, spec: InterventionSpec, records: Sequence[Record], model_args: str) -> str:
    """One head set's card: the spec, where it came from, and its specificity tables."""
    from mf_harness.runs.leaderboard import render_markdown, specificity_tables

    heads = spec.block or spec.amplify
    action = "block" if spec.block else f"amplify x{spec.coefficient:g}"
    lines = [f"# Head set `{name}`", "", f"- action: {action} at scope `{spec.scope}`",
             f"- {len(heads)} heads: {' '.join(str(h) for h in heads)}", f"- spec hash: `{spec.spec_hash}`",
             f"- model: `{model_args}`"]
    if spec.provenance:
        lines.append("- provenance: " + json.dumps(dict(spec.provenance), sort_keys=True))
    lines += ["", render_markdown(specificity_tables(records))]
    return "\n".join(lines) + "\n"
