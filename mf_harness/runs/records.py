"""Versioned result records: the one format behind leaderboards, tables, plots and regression checks.

A records file is JSON lines: a header line ``{"type": "sweep", ...}`` (the sweep config,
its creation date, versions, git hash), then one record per (cell, task, metric, subset):

    schema_version, sweep, created, model, revision, model_type,
    head_set (original|targeted|random|random_any|shared|layers|targeted-random|
    targeted-random_any), follow, k, seed,
    intervention (none|block|amplify), coefficient, scope, spec_name, spec_hash, heads,
    task, metric, subset (full|followed|failed), value, stderr, ci_low, ci_high, n,
    seed_sd (random controls pooled over seeds), versions, git

MFR metrics are summarised from per-sample outcomes (mean, standard error, bootstrap 95% CI).
``followed`` / ``failed`` are the samples the original model follows / fails (the paper's
protocol subsets). Capability metrics keep lmms-eval's aggregate and stderr (corpus metrics
such as CIDEr are not means of per-sample values); their CI is bootstrapped only for metrics
that are per-sample means. ``random`` / ``random_any`` records with ``seed = null`` pool
the seeds (MFR: each sample's outcome averaged over seeds; capability metrics: the mean of the
seeds' aggregates, with ``seed_sd``); ``targeted-random`` /
``targeted-random_any`` records hold the paired difference targeted - control on the same
samples. When the cells ran capability tasks, every intervened head set (each seed, and each
pooled random control) also gets a ``specificity`` record (task = its MFR task, subset = the
protocol subset, value in points, paired bootstrap CI; `mf_harness.runs.stats.specificity`).
Tables and plots are pure functions of records.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from mf_harness.checks import atomic_write_text
from mf_harness.errors import MfHarnessError

from mf_harness.runs.stats import Paired, metric_scale, paired_difference, seed_spread, specificity, summarize

__all__ = ["RECORD_SCHEMA", "Record", "build_records", "write_records", "read_records", "record_key",
           "RecordsError", "MFR_METRICS", "RANDOM_CONTROLS", "SPECIFICITY", "PROTOCOL"]

RECORD_SCHEMA = 1
MFR_METRICS = ("mfr", "competing", "neither")
RANDOM_CONTROLS = ("random", "random_any")  # pooled over seeds, and paired with the targeted set
SPECIFICITY = "specificity"  # metric of the specificity records (points; `mf_harness.runs.stats.specificity`)
PROTOCOL = {"block": "followed", "amplify": "failed"}  # the paper's subset per intervention
KEY_FIELDS = ("head_set", "follow", "k", "seed", "intervention", "coefficient", "scope", "spec_hash", "task",
              "metric", "subset")
class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()  # "no such key" in optional fields (distinct from a null value)


class RecordsError(MfHarnessError, ValueError):
    """A records file that cannot be read (missing, not JSON lines, or an unknown schema)."""


@dataclass(frozen=True)
class Record:
    """One measured value: a (cell, task, metric, subset) of a sweep; schema ``RECORD_SCHEMA``.

    Its JSON form (one line of a records file) has exactly these keys; ``n_seeds`` and ``seed_sd``
    only on records pooled over random seeds."""

    head_set: str
    task: str
    metric: str
    subset: str
    value: float | None = None
    stderr: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    follow: str | None = None
    k: int | None = None
    seed: int | None = None
    intervention: str = "none"
    coefficient: float | None = None
    scope: str | None = None
    spec_name: str | None = None
    spec_hash: str | None = None
    heads: list | None = None
    model: str | None = None
    revision: str | None = None
    model_type: str | None = None
    sweep: str | None = None
    created: str | None = None
    versions: dict | None = None
    git: str | None = None
    n_seeds: Any = _ABSENT
    seed_sd: Any = _ABSENT
    schema_version: int = RECORD_SCHEMA

    @property
    def is_mfr(self) -> bool:
        """An MFR measure (``mfr`` / ``competing`` / ``neither`` of an MFR task), not a capability metric."""
        return self.metric in MFR_METRICS

    @property
    def is_capability(self) -> bool:
        """A capability metric (not an MFR measure, not a specificity score)."""
        return not self.is_mfr and self.metric != SPECIFICITY

    @property
    def pooled(self) -> bool:
        """A random control pooled over its seeds."""
        return self.head_set in RANDOM_CONTROLS and self.seed is None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in d.items() if v is not _ABSENT}

    @classmethod
    def from_dict(cls, d: dict, where: str = "record") -> "Record":
        version = d.get("schema_version")
        if version != RECORD_SCHEMA:
            raise RecordsError(f"{where}: record schema_version {version!r} is not {RECORD_SCHEMA} "
                               f"(written by another mf-harness version?)")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise RecordsError(f"{where}: unknown record fields {unknown}")
        missing = [k for k in ("head_set", "task", "metric", "subset") if k not in d]
        if missing:
            raise RecordsError(f"{where}: record lacks {missing}")
        return cls(**d)


def record_key(r: Record) -> tuple:
    return (r.model,) + tuple(getattr(r, k) for k in KEY_FIELDS)


def _clean(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


def _subsets(baseline: dict, task: str) -> dict[str, list[str]]:
    samples = baseline["tasks"][task]["samples"]
    ids = sorted(samples, key=lambda x: int(x) if x.isdigit() else x)
    return {"full": ids, "followed": [i for i in ids if samples[i].get("mfr") == 1],
            "failed": [i for i in ids if samples[i].get("mfr") == 0]}


def build_records(results: list[dict], manifest: dict, lm=None) -> list[Record]:
    cfg = manifest["config"]
    mfr_tasks = {f"{cfg.get('mfr_task', 'mfr')}_{f}" for f in cfg.get("follows", ("text", "vision"))}
    from lmms_eval.utils import simple_parse_args_string

    margs = simple_parse_args_string(cfg["model_args"])
    base = {
        "schema_version": RECORD_SCHEMA,
        "sweep": cfg.get("name"),
        "created": manifest.get("created"),
        "model": str(margs.get("pretrained", "embedded")),
        "revision": margs.get("revision"),
        "model_type": getattr(getattr(lm, "model", None), "config", None) and lm.model.config.model_type,
        "versions": manifest.get("versions"),
        "git": manifest.get("git"),
    }
    baseline = next((r for r in results if r["meta"]["head_set"] == "original"), None)
    if baseline is None:
        raise ValueError("a sweep's results need the original (no intervention) cell")
    records: list[dict] = []

    def emit(meta, task, metric, subset, summary, **extra):
        d = dict(base, **{k: meta.get(k) for k in ("head_set", "follow", "k", "seed", "intervention", "coefficient",
                                                    "scope", "spec_name", "spec_hash", "heads")})
        d.update(task=task, metric=metric, subset=subset, **{k: _clean(v) for k, v in summary.items()}, **extra)
        records.append(d)

    per_sample: dict = {}
    for r in results:
        meta = r["meta"]
        for task, t in r["tasks"].items():
            if task in mfr_tasks:
                subsets = _subsets(baseline, task)
                for metric in MFR_METRICS:
                    for subset, ids in subsets.items():
                        vals = [float(t["samples"][i][metric]) for i in ids if i in t["samples"]]
                        emit(meta, task, metric, subset, summarize(vals).as_dict())
                per_sample[(meta["spec_hash"], task)] = {i: float(v["mfr"]) for i, v in t["samples"].items()}
            else:
                for metric, value in sorted(t["metrics"].items()):
                    vals = [float(v[metric]) for v in t["samples"].values() if v.get(metric) is not None]
                    s = summarize(vals).as_dict() if vals else {"ci_low": None, "ci_high": None}
                    is_mean = vals and value is not None and abs(s.get("value", math.nan) - float(value)) < 1e-9
                    emit(meta, task, metric, "full",
                         {"value": value, "stderr": t["stderr"].get(metric),
                          "ci_low": s["ci_low"] if is_mean else None, "ci_high": s["ci_high"] if is_mean else None,
                          "n": t["n"]})
    # random controls pooled over seeds, and targeted - random paired differences (one per random control)
    groups = defaultdict(list)
    for r in results:
        m = r["meta"]
        if m["head_set"] in RANDOM_CONTROLS:
            groups[(m["head_set"], m["follow"], m["k"], m["intervention"], m["coefficient"], m["scope"])].append(r)
    for r in results:
        m = r["meta"]
        if m["head_set"] != "targeted":
            continue
        for control in RANDOM_CONTROLS:
            rand = groups.get((control, m["follow"], m["k"], m["intervention"], m["coefficient"], m["scope"]), [])
            if not rand:
                continue
            task = next(t for t in r["tasks"] if t in mfr_tasks)  # the cell's own MFR task
            subsets = _subsets(baseline, task)
            tgt = per_sample[(m["spec_hash"], task)]
            seeds = [per_sample[(x["meta"]["spec_hash"], task)] for x in rand]
            pooled_meta = dict(rand[0]["meta"], seed=None, spec_name=f"{m['follow']}-{control}-k{m['k']}-pooled",
                               spec_hash=_pooled_hash(rand), heads=None)
            diff_meta = dict(m, head_set=f"targeted-{control}", spec_name=f"{m['spec_name']} - {control}")
            # capability metrics of the control: the mean over seeds of each seed's aggregate (corpus
            # metrics such as CIDEr are not per-sample means, so seeds are pooled at the aggregate)
            for ctask in sorted({t for x in rand for t in x["tasks"] if t not in mfr_tasks}):
                for metric in sorted({mm for x in rand for mm in x["tasks"].get(ctask, {}).get("metrics", {})}):
                    vals = [x["tasks"][ctask]["metrics"].get(metric) for x in rand if ctask in x["tasks"]]
                    vals = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
                    if vals:
                        emit(pooled_meta, ctask, metric, "full",
                             {"value": sum(vals) / len(vals), "stderr": None, "ci_low": None, "ci_high": None,
                              "n": rand[0]["tasks"][ctask].get("n")},
                             n_seeds=len(vals), seed_sd=_clean(seed_spread(vals)))
            for subset, ids in subsets.items():
                pooled = [sum(s[i] for s in seeds) / len(seeds) for i in ids]
                seed_means = [sum(s[i] for i in ids) / len(ids) if ids else math.nan for s in seeds]
                emit(pooled_meta, task, "mfr", subset, summarize(pooled).as_dict(), n_seeds=len(seeds),
                     seed_sd=_clean(seed_spread(seed_means)))
                emit(diff_meta, task, "mfr", subset, paired_difference([tgt[i] for i in ids], pooled).as_dict(),
                     n_seeds=len(seeds))
    _specificity_records(results, baseline, mfr_tasks, groups, emit)
    return [Record(**d) for d in records]


def _pooled_hash(cells: list[dict]) -> str:
    """Identity of a pooled random control: its seeds' spec hashes (so two head sets' controls never collide)."""
    import hashlib

    return "pooled-" + hashlib.sha256(",".join(sorted(c["meta"]["spec_hash"] for c in cells)).encode()).hexdigest()[:12]


def _capability_values(result: dict, task: str, ids: list[str]) -> dict[str, list[float]]:
    """{metric: per-sample values on ``ids``} of a capability task (metrics with a value on every sample)."""
    samples = result["tasks"][task]["samples"]
    out = {}
    for metric in result["tasks"][task]["metrics"]:
        vals = [samples.get(i, {}).get(metric) for i in ids]
        if vals and all(isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) for v in vals):
            out[metric] = [float(v) for v in vals]
    return out


def _specificity_of(cells: list[dict], baseline: dict, task: str, subset: str, ctasks: list[str]):
    """(Summary, per-seed points) of one head set (several cells: a random control's seeds, pooled per sample)."""
    ids = _subsets(baseline, task)[subset]
    if not ids or not ctasks:
        return None, []

    def pooled(values: list[list[float]]) -> list[float]:
        return [sum(v[i] for v in values) / len(values) for i in range(len(values[0]))]

    def measures(group: list[dict]):
        effect = Paired(task, [float(baseline["tasks"][task]["samples"][i]["mfr"]) for i in ids],
                        pooled([[float(c["tasks"][task]["samples"][i]["mfr"]) for i in ids] for c in group]))
        coll = []
        for ct in ctasks:
            cids = sorted(baseline["tasks"][ct]["samples"], key=lambda x: int(x) if x.isdigit() else x)
            orig = _capability_values(baseline, ct, cids)
            per_cell = [_capability_values(c, ct, cids) for c in group]
            for metric in sorted(orig):
                if all(metric in pc for pc in per_cell):
                    coll.append(Paired(ct, orig[metric], pooled([pc[metric] for pc in per_cell]), metric_scale(metric)))
                else:  # no per-sample values (a corpus metric that cannot be split): the aggregates, not resampled
                    a = baseline["tasks"][ct]["metrics"].get(metric)
                    bs = [c["tasks"][ct]["metrics"].get(metric) for c in group]
                    if isinstance(a, (int, float)) and all(isinstance(b, (int, float)) for b in bs):
                        coll.append(Paired(f"{ct}/{metric}", [float(a)], [sum(bs) / len(bs)], metric_scale(metric)))
        return effect, coll

    effect, coll = measures(cells)
    if not coll:
        return None, []
    per_seed = [specificity(*measures([c]), n_boot=2).value for c in cells] if len(cells) > 1 else []
    return specificity(effect, coll), per_seed


def _specificity_records(results: list[dict], baseline: dict, mfr_tasks: set, groups: dict, emit) -> None:
    ctasks = [t for t in baseline["tasks"] if t not in mfr_tasks]
    for r in results:
        m = r["meta"]
        if m["intervention"] == "none":
            continue
        task = next((t for t in r["tasks"] if t in mfr_tasks), None)
        mine = [t for t in ctasks if t in r["tasks"]]
        if task is None or not mine:
            continue
        summary, _ = _specificity_of([r], baseline, task, PROTOCOL[m["intervention"]], mine)
        if summary is not None:
            emit(m, task, SPECIFICITY, PROTOCOL[m["intervention"]], summary.as_dict())
    for (control, follow, k, action, coef, scope), rand in sorted(groups.items(), key=str):
        task = next((t for t in rand[0]["tasks"] if t in mfr_tasks), None)
        mine = [t for t in ctasks if all(t in x["tasks"] for x in rand)]
        if task is None or not mine:
            continue
        summary, per_seed = _specificity_of(rand, baseline, task, PROTOCOL[action], mine)
        if summary is not None:
            meta = dict(rand[0]["meta"], seed=None, spec_name=f"{follow}-{control}-k{k}-pooled",
                        spec_hash=_pooled_hash(rand), heads=None)
            emit(meta, task, SPECIFICITY, PROTOCOL[action], summary.as_dict(), n_seeds=len(rand),
                 seed_sd=_clean(seed_spread(per_seed)))


def write_records(records: Iterable[Record], path: str | Path, header: dict | None = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    if header is not None:
        lines.append(json.dumps({"type": "sweep", **header}, sort_keys=True))
    lines += [json.dumps(r.to_dict(), sort_keys=True) for r in records]
    return atomic_write_text(p, "\n".join(lines) + "\n")


def read_records(path: str | Path) -> tuple[dict | None, list[Record]]:
    """(header, records) of a records file; `RecordsError` (one clear line) for a missing or corrupt file
    or an unknown schema."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise RecordsError(f"records file {p} does not exist") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise RecordsError(f"records file {p} cannot be read: {e}") from None
    header, records = None, []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordsError(f"{p}:{n}: not a JSON record ({e.msg})") from None
        if not isinstance(d, dict):
            raise RecordsError(f"{p}:{n}: not a JSON record (a {type(d).__name__})")
        if d.get("type") == "sweep":
            header = d
        else:
            records.append(Record.from_dict(d, f"{p}:{n}"))
    return header, records
