"""Sweeps of head sets with controls, in the paper's protocol, as resumable lmms-eval runs.

A sweep crosses head sets x k x intervention (block, amplify at each coefficient) x scope,
and evaluates each cell on the MFR task of the head set's direction (``mfr_text`` for
text-following heads; ``mfr_task="mfr_mc2"`` gives ``mfr_mc2_text``) plus any capability tasks. Head sets per direction:

* ``targeted``: the top-k heads of a ranking (``heads.csv`` from ``mf-harness discover``);
* ``random``: k random heads **matched layer by layer** to the targeted set (same number of
  heads in each layer, drawn from that layer's non-targeted heads), one set per seed
  (``seeds``, default 5; the set is a pure function of (direction, k, seed));
* ``random_any``: k random heads drawn from every non-targeted head of the model, **not**
  matched by layer (the plain "k random heads" control; one set per seed). Where the
  targeted heads fill most of their layer (small models), the layer-matched control is
  nearly the targeted set itself and only this one tests head specificity;
* ``shared``: the heads in both the text and the vision top-K (K = the largest k);
* ``layers``: every head of the layers the targeted set touches (a coarse control).

Protocol (the paper's): blocking is scored on the samples the original model follows
(``followed``: its MFR is 1 by construction), amplification on its failures (``failed``:
MFR 0); both are also scored on the full set (``full``). Every cell runs on the full set
once, and the subsets are views of the same per-sample outcomes.

Engines. ``lmms``: each cell is one lmms-eval run (``simple_evaluate``). ``fast`` (default):
the MFR tasks of all pending cells are evaluated together, one sample at a time, with every
cell's spec as a row of one batched, prefix-shared generate (`mf_harness.lmms.fast_engine`): the
vision tower and the shared prompt prefix run once per sample instead of once per cell, and
the answers are scored by the lmms-eval task's own ``process_results`` and aggregations.
Capability tasks always go through ``simple_evaluate``. Both engines give identical records.

Outputs. Every cell gets a results directory in lmms-eval's layout under
``<out>/runs/<cell>/`` (results JSON and per-task samples JSONL), plus
``<out>/cells/<cell>.json`` with its per-sample outcomes, written atomically when the cell
completes. A rerun of the same command skips completed cells, and the fast engine also keeps
a per-sample answer log (``<out>/fast/<task>.jsonl``) so a sweep killed mid-task resumes at the
next sample: nothing completed is recomputed, nothing is lost, and the final records are
identical to an uninterrupted run's (dates come from the sweep manifest, bootstrap seeds are
fixed).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from mf_harness.checks import atomic_write_text, finite_nonnegative, positive_int, safe_name
from mf_harness.errors import MfHarnessError
from mf_harness.provenance import git_hash, package_versions
from mf_harness.core.spec import Head, InterventionSpec

__all__ = ["SweepConfig", "Cell", "plan_cells", "run_sweep", "random_matched", "random_any", "load_rankings",
           "CONTROLS"]

CONTROLS = ("random", "random_any", "shared", "layers")


@dataclass
class SweepConfig:
    model_args: str = "pretrained=embedded"
    rankings: str = ""  # heads.csv from `mf-harness discover` (or its directory)
    ks: list[int] = field(default_factory=lambda: [10, 20, 30, 40])
    seeds: int = 5
    block: bool = True
    coefficients: list[float] = field(default_factory=list)  # amplify at each
    scopes: list[str] = field(default_factory=lambda: ["instruction"])
    follows: list[str] = field(default_factory=lambda: ["text", "vision"])
    controls: list[str] = field(default_factory=lambda: ["random", "shared", "layers"])
    capability_tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    batch_size: int = 8
    name: str = "sweep"
    engine: str = "fast"  # fast: all specs of a sample in one prefix-shared batch; lmms: one lmms-eval run per cell
    mfr_task: str = "mfr"  # MFR task family: <mfr_task>_text / <mfr_task>_vision (mfr, mfr_mc2, mfr_dev, your own)
    # one explicit head set (an InterventionSpec's dict, one action) instead of rankings: `mf-harness score`
    head_set: dict | None = None

    def __post_init__(self) -> None:
        """Every value checked before anything runs or is written (one clear line per problem)."""
        from mf_harness.core.spec import SCOPES

        safe_name(self.name, "sweep name")
        if not isinstance(self.ks, (list, tuple)) or not self.ks:
            raise MfHarnessError(f"ks must be a non-empty list of head counts; got {self.ks!r}")
        self.ks = [positive_int(k, "k (heads per set)") for k in self.ks]
        randoms = [c for c in self.controls if c in ("random", "random_any")]
        self.seeds = positive_int(self.seeds, "seeds", minimum=1 if randoms else 0)
        if self.limit is not None:
            self.limit = positive_int(self.limit, "limit (docs per task; leave it out for all)")
        self.batch_size = positive_int(self.batch_size, "batch_size")
        self.coefficients = [finite_nonnegative(c, "coefficient") for c in self.coefficients]
        if not self.block and not self.coefficients:
            raise MfHarnessError("the sweep has nothing to run: blocking is off and no amplification coefficient given")
        bad = [s for s in self.scopes if s not in SCOPES]
        if bad or not self.scopes:
            raise MfHarnessError(f"scopes must be among {', '.join(SCOPES)}; got {self.scopes!r}")
        bad = [f for f in self.follows if f not in ("text", "vision")]
        if bad or not self.follows:
            raise MfHarnessError(f"follows must be among text, vision; got {self.follows!r}")
        if self.engine not in ("fast", "lmms"):
            raise MfHarnessError(f"engine must be fast or lmms, got {self.engine!r}")
        if self.head_set is not None:
            spec = self.spec_of_head_set()
            self.ks = [len(spec.block or spec.amplify)]
            self.block, self.coefficients = bool(spec.block), ([float(spec.coefficient)] if spec.amplify else [])
            self.scopes = [spec.scope]
            if set(self.controls) - {"random", "random_any"}:
                raise MfHarnessError(f"one head set is scored against random controls only (random, random_any); "
                                     f"got controls {self.controls!r}")
        if not isinstance(self.model_args, str):
            raise MfHarnessError(f"model_args must be text (lmms-eval's key=value,...); got {self.model_args!r}")

    def spec_of_head_set(self) -> InterventionSpec:
        """The explicit head set as a spec: one action (block, or amplify at one coefficient), no decode."""
        from mf_harness.core.spec import SpecError

        try:
            spec = InterventionSpec.from_dict(self.head_set or {})
        except (SpecError, TypeError, AttributeError) as e:
            raise MfHarnessError(f"head_set is not a valid spec: {e}") from None
        if bool(spec.block) == bool(spec.amplify):
            raise MfHarnessError(f"head set {spec.name or '(unnamed)'}: give one action (block or amplify heads), "
                                 f"not {'both' if spec.block else 'neither'}")
        if spec.decode:
            raise MfHarnessError(f"head set {spec.name or '(unnamed)'} acts on decode steps too (decode=true); the "
                                 f"paper's protocol scores prompt-position interventions: drop decode")
        return spec

    def mfr_task_for(self, follow: str) -> str:
        return f"{self.mfr_task}_{follow}"

    def mfr_tasks(self) -> set[str]:
        """The MFR tasks this sweep scores (everything else it runs is a capability task)."""
        return {self.mfr_task_for(f) for f in self.follows}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SweepConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise MfHarnessError(f"unknown sweep config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class Cell:
    head_set: str  # original | targeted | random | random_any | shared | layers
    follow: str | None
    k: int | None
    seed: int | None
    intervention: str  # none | block | amplify
    coefficient: float | None
    scope: str | None
    heads: tuple[Head, ...]
    tasks: tuple[str, ...]

    @property
    def spec(self) -> InterventionSpec:
        if self.intervention == "none":
            return InterventionSpec(name="original")
        kw = {"block": self.heads} if self.intervention == "block" else {"amplify": self.heads,
                                                                         "coefficient": self.coefficient}
        return InterventionSpec(scope=self.scope, name=self.label, **kw)

    @property
    def label(self) -> str:
        if self.intervention == "none":
            return "original"
        parts = [self.follow or "", self.head_set]
        if self.k is not None:
            parts.append(f"k{self.k}")
        if self.seed is not None:
            parts.append(f"s{self.seed}")
        parts.append(self.intervention if self.intervention == "block" else f"amp{self.coefficient:g}")
        parts.append(self.scope or "")
        return "-".join(p for p in parts if p)

    @property
    def cell_id(self) -> str:
        h = hashlib.sha256(json.dumps([self.spec.spec_hash, list(self.tasks)]).encode()).hexdigest()[:10]
        return f"{self.label}-{h}"

    def meta(self) -> dict:
        return {"head_set": self.head_set, "follow": self.follow, "k": self.k, "seed": self.seed,
                "intervention": self.intervention, "coefficient": self.coefficient, "scope": self.scope,
                "spec_name": self.label, "spec_hash": self.spec.spec_hash, "heads": [str(h) for h in self.heads]}

    def model_args(self) -> str:
        """Inline spec keys (content, not a path), so lmms-eval's response cache keys on what the spec does."""
        if self.intervention == "none":
            return ""
        key = "block" if self.intervention == "block" else "amplify"
        s = f"{key}={'+'.join(str(h) for h in self.heads)},scope={self.scope},spec_name={self.label}"
        if self.intervention == "amplify":
            s += f",coefficient={self.coefficient:g}"
        return s


def load_rankings(path: str | Path) -> dict[str, list[Head]]:
    """Ranked heads per direction from ``heads.csv`` (columns follow, layer, head, rank)."""
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        p = p / "heads.csv"
    if not p.is_file():
        raise MfHarnessError(f"rankings not found: {str(path)!r} (expected heads.csv from `mf-harness discover`)")
    try:
        df = pd.read_csv(p)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise MfHarnessError(f"rankings {p} is not a CSV file ({type(e).__name__})") from None
    missing = {"follow", "layer", "head", "rank"} - set(df.columns)
    if missing:
        raise MfHarnessError(f"{p}: missing columns {sorted(missing)}")
    try:
        return {f: [Head(int(r.layer), int(r.head)) for r in g.sort_values("rank").itertuples()]
                for f, g in df.groupby("follow")}
    except (ValueError, TypeError) as e:
        raise MfHarnessError(f"rankings {p}: layer and head must be non-negative integers ({e})") from None


def random_matched(targeted: Sequence[Head], num_heads: int, seed: int, salt: str = "") -> tuple[Head, ...]:
    """Random heads with the same count per layer as ``targeted``, avoiding targeted heads where possible."""
    rng = random.Random(f"{salt}|{seed}|{','.join(map(str, sorted(targeted)))}")
    chosen: list[Head] = []
    by_layer: dict[int, int] = {}
    for h in targeted:
        by_layer[h.layer] = by_layer.get(h.layer, 0) + 1
    taken = set(targeted)
    for layer in sorted(by_layer):
        pool = [Head(layer, i) for i in range(num_heads) if Head(layer, i) not in taken]
        need = by_layer[layer]
        if len(pool) < need:  # the layer is (almost) fully targeted: fall back to the whole layer
            pool = [Head(layer, i) for i in range(num_heads)]
        chosen += rng.sample(pool, need)
    return tuple(sorted(chosen))


def random_any(targeted: Sequence[Head], num_layers: int | Sequence[int], num_heads: int, seed: int,
               salt: str = "") -> tuple[Head, ...]:
    """``len(targeted)`` random heads from all the model's non-targeted heads (any layer with heads: ``num_layers``
    is a count, or the layers that have heads in a hybrid decoder)."""
    rng = random.Random(f"any|{salt}|{seed}|{','.join(map(str, sorted(targeted)))}")
    taken = set(targeted)
    layers = range(num_layers) if isinstance(num_layers, int) else num_layers
    pool = [Head(l, h) for l in layers for h in range(num_heads) if Head(l, h) not in taken]
    if len(pool) < len(targeted):
        pool = [Head(l, h) for l in layers for h in range(num_heads)]
    return tuple(sorted(rng.sample(pool, len(targeted))))


def plan_cells(cfg: SweepConfig, rankings: dict[str, list[Head]], num_layers: int | Sequence[int],
               num_heads: int) -> list[Cell]:
    total = (num_layers if isinstance(num_layers, int) else len(num_layers)) * num_heads
    unknown = set(cfg.controls) - set(CONTROLS)
    if unknown:
        raise MfHarnessError(f"unknown control(s) {sorted(unknown)}; known: {', '.join(CONTROLS)}")
    follows = [f for f in cfg.follows if f in rankings]
    missing = set(cfg.follows) - set(rankings)
    if missing:
        raise MfHarnessError(f"no ranking for direction(s) {sorted(missing)} in {cfg.rankings}")
    ks = sorted({min(k, total) for k in cfg.ks})
    if not cfg.mfr_task.startswith("mfr"):
        raise MfHarnessError(f"mfr_task must name an MFR task family starting with 'mfr' (mfr, mfr_mc2, mfr_dev, "
                             f"mfr_<yours> with tasks mfr_<yours>_text / _vision); got {cfg.mfr_task!r}")
    all_tasks = tuple(cfg.mfr_task_for(f) for f in cfg.follows) + tuple(cfg.capability_tasks)
    cells = [Cell("original", None, None, None, "none", None, None, (), all_tasks)]
    actions = ([("block", None)] if cfg.block else []) + [("amplify", float(c)) for c in cfg.coefficients]
    for scope in cfg.scopes:
        for action, coef in actions:
            for f in follows:
                tasks = (cfg.mfr_task_for(f),) + tuple(cfg.capability_tasks)
                for k in ks:
                    top = tuple(sorted(rankings[f][:k]))
                    cells.append(Cell("targeted", f, k, None, action, coef, scope, top, tasks))
                    if "random" in cfg.controls:
                        for s in range(cfg.seeds):
                            rnd = random_matched(top, num_heads, s, salt=f)
                            cells.append(Cell("random", f, k, s, action, coef, scope, rnd, tasks))
                    if "random_any" in cfg.controls:
                        for s in range(cfg.seeds):
                            rnd = random_any(top, num_layers, num_heads, s, salt=f)
                            cells.append(Cell("random_any", f, k, s, action, coef, scope, rnd, tasks))
                    if "layers" in cfg.controls:
                        layers = sorted({h.layer for h in top})
                        heads = tuple(Head(l, h) for l in layers for h in range(num_heads))
                        cells.append(Cell("layers", f, k, None, action, coef, scope, heads, tasks))
                if "shared" in cfg.controls and len(rankings) >= 2 and {"text", "vision"} <= set(rankings):
                    K = max(ks)
                    shared = tuple(sorted(set(rankings["text"][:K]) & set(rankings["vision"][:K])))
                    if shared:
                        cells.append(Cell("shared", f, len(shared), None, action, coef, scope, shared, tasks))
    return cells


def _generate_tasks(cfg: SweepConfig, tasks) -> set[str]:
    """The tasks the fast engine answers (MFR, and single generate_until capability tasks)."""
    from mf_harness.runs.cells import generate_task

    return {t for t in tasks if t in cfg.mfr_tasks() or generate_task(t, 1) is not None}


def run_sweep(cfg: SweepConfig, out: str | Path, progress: bool = True, lm=None) -> dict:
    """Run (or resume) ``cfg`` into ``out``; returns {records, cells_run, cells_skipped, forwards, wall_s}.

    ``lm``: an `IntervenedHF` already loaded from ``cfg.model_args`` (several sweeps on one model)."""
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import simple_parse_args_string
    from tqdm import tqdm

    import mf_harness.lmms.plugin as plugin
    from mf_harness.lmms.model import IntervenedHF
    from mf_harness.runs.cells import run_cell, run_fast
    from mf_harness.runs.records import build_records, write_records

    plugin.install()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MfHarnessError(f"output dir {out} is a file; give a directory (it is created if missing)")
    manifest_path = out / "sweep.json"
    manifest = None
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
            same = manifest["config"] == cfg.to_dict()
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise MfHarnessError(f"{manifest_path} is not a sweep manifest ({type(e).__name__}); use another "
                                 f"--output-dir") from None
        if not same:
            raise MfHarnessError(f"{out} holds a different sweep (config differs); use another --output-dir")
    # everything that can be wrong with the config fails here, before anything is written
    try:
        args = simple_parse_args_string(cfg.model_args)
    except ValueError:
        raise MfHarnessError(f"model_args must be key=value pairs separated by commas; got {cfg.model_args!r}") \
            from None
    if lm is None:
        lm = IntervenedHF(batch_size=cfg.batch_size, **{k: v for k, v in args.items() if k != "batch_size"})
    if not lm.spec.is_empty:
        raise MfHarnessError("the sweep's model_args must not carry a spec (the sweep sets one per cell)")
    if cfg.head_set is not None:
        spec = cfg.spec_of_head_set()
        spec.validate_for(lm.geometry.num_layers, lm.geometry.num_heads, lm.model_name, lm.geometry.attn_layers)
        rankings = {f: sorted(spec.block or spec.amplify) for f in cfg.follows}
    else:
        rankings = load_rankings(cfg.rankings)
    cells = plan_cells(cfg, rankings, lm.geometry.head_layers, lm.geometry.num_heads)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    rank, world = lm.rank, lm.world_size  # data parallel: see `mf_harness.runs.cells.run_fast`
    if manifest is None and rank == 0:
        manifest = {"config": cfg.to_dict(),
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "git": git_hash(), "versions": package_versions()}
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    # every rank sees the same cells on disk: rank 0 writes cells only after all ranks have met (run_fast)
    pending = [c for c in cells if not (out / "cells" / f"{c.cell_id}.json").exists()]
    if world > 1:
        if cfg.engine != "fast":
            raise MfHarnessError("data parallel sweeps use the fast engine (--engine fast); under --engine lmms run "
                                 "lmms-eval itself under accelerate")
        lm.accelerator.wait_for_everyone()  # every rank has listed the cells on disk, and rank 0 wrote the manifest
    counter = {"forwards": 0}
    handle = lm.model.register_forward_pre_hook(lambda m, a: counter.__setitem__("forwards", counter["forwards"] + 1))
    tm = TaskManager("ERROR")
    t0 = time.time()
    ran = skipped = 0
    try:
        skipped = len(cells) - len(pending)
        fast = run_fast(lm, pending, cfg, out, progress) if cfg.engine == "fast" and pending else {}
        # what the fast engine answered; ranks other than 0 know it without its results
        fast_names = _generate_tasks(cfg, {t for c in pending for t in c.tasks}) if world > 1 else None
        for cell in tqdm(pending, desc=f"sweep {cfg.name}", disable=not progress or cfg.engine == "fast"):
            # every rank takes part in each lmms-eval run (it shards and gathers); rank 0 writes the cell
            done = (fast or {}).get(cell.cell_id, {})
            rest = [t for t in cell.tasks if cfg.engine == "lmms" or t not in (done if fast_names is None else
                                                                                 fast_names)]
            tasks = dict(done)
            if rest:
                part = run_cell(lm, Cell(**{**cell.__dict__, "tasks": tuple(rest)}), cfg, out, tm, cell.cell_id)
                if part is not None:
                    tasks.update(part["tasks"])
            if rank != 0:
                continue
            result = {"cell_id": cell.cell_id, "meta": cell.meta(), "tasks": {t: tasks[t] for t in cell.tasks}}
            atomic_write_text(out / "cells" / f"{cell.cell_id}.json", json.dumps(result, sort_keys=True))
            ran += 1
    finally:
        handle.remove()
    if rank != 0:
        return {"records": [], "cells": len(cells), "cells_run": 0, "cells_skipped": skipped, "forwards": 0,
                "wall_s": time.time() - t0, "out": out, "rank": rank}
    results = [json.loads((out / "cells" / f"{c.cell_id}.json").read_text()) for c in cells]
    records = build_records(results, manifest, lm)
    write_records(records, out / "records.jsonl", header=manifest)
    stats = {"cells": len(cells), "cells_run": ran, "cells_skipped": skipped, "forwards": counter["forwards"],
             "wall_s": time.time() - t0}
    atomic_write_text(out / "sweep_stats.json", json.dumps(stats, indent=2))
    return {"records": records, **stats, "out": out}
