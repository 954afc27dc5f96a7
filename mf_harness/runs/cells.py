"""Running a sweep's cells: through lmms-eval (`run_cell`, one ``simple_evaluate`` per cell) or the fast engine
(`run_fast`: every pending cell's spec as a row of one prefix-shared generate per sample, for the MFR tasks and
any single generate_until capability task), with a per-sample answer log to resume from. Both leave lmms-eval's
output layout and the same per-sample results (`mf_harness.runs.sweep` plans the cells and builds the records)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from mf_harness.runs.lmms_layout import per_sample_values, score_answers, write_lmms_layout

if TYPE_CHECKING:
    from mf_harness.runs.sweep import Cell, SweepConfig

__all__ = ["run_cell", "run_fast", "generate_task"]


def run_cell(lm, cell: Cell, cfg: SweepConfig, out: Path, task_manager, run_id: str | None = None) -> dict:
    from lmms_eval import evaluator
    from lmms_eval.loggers import EvaluationTracker

    view = lm.with_spec(cell.spec)  # same loaded weights; lmms-eval's clean() at the end leaves them loaded
    tracker = EvaluationTracker(output_path=str(out / "runs" / (run_id or cell.cell_id)))
    margs = ",".join(a for a in (cfg.model_args, cell.model_args()) if a)
    from lmms_eval.utils import get_datetime_str

    stamp = get_datetime_str()
    res = evaluator.simple_evaluate(model=view, model_args=margs, tasks=list(cell.tasks), batch_size=cfg.batch_size,
                                    limit=cfg.limit, task_manager=task_manager, log_samples=True,
                                    evaluation_tracker=tracker, verbosity="ERROR", datetime_str=stamp)
    if res is None:  # a rank other than 0 under data parallel: lmms-eval gathered its share to rank 0
        return None
    samples = res.pop("samples")
    tracker.save_results_aggregated(results=res, samples=samples, datetime_str=stamp)
    for t in res["configs"]:
        tracker.save_results_samples(task_name=t, samples=samples[t])
    tasks = {}
    for t in cell.tasks:
        r = res["results"][t]
        metrics = {k.split(",")[0]: v for k, v in r.items() if "," in k and "_stderr" not in k}
        stderrs = {k.split(",")[0].replace("_stderr", ""): v for k, v in r.items() if "_stderr," in k}
        names = [m["metric"] for m in res["configs"][t]["metric_list"]]
        per_sample = {}
        for s in samples[t]:
            per_sample[str(s["doc_id"])] = {m: s.get(m) for m in names if isinstance(s.get(m), (int, float, bool))}
        corpus = [m for m in names if any(not isinstance(s.get(m), (int, float, bool, type(None))) for s in samples[t])]
        task_aggs = task_manager.load_task_or_group([t])[t].aggregation() if corpus else {}
        for m, fn in ((m, task_aggs[m]) for m in corpus if m in task_aggs):
            split = per_sample_values(fn, [s.get(m) for s in samples[t]])
            for s, v in zip(samples[t], split or []):
                per_sample[str(s["doc_id"])][m] = v
        tasks[t] = {"metrics": metrics, "stderr": stderrs, "samples": per_sample,
                    "n": res["n-samples"][t]["effective"]}
    return {"cell_id": cell.cell_id, "meta": cell.meta(), "tasks": tasks}


def _read_logs(paths, answers: dict[str, dict[int, str]]) -> None:
    """Add the answers of per-sample logs (any rank's, any world size's) to ``answers`` {cell_id: {doc: answer}}."""
    for path in paths:
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            for cid, a in rec["answers"].items():
                if cid in answers:
                    answers[cid][rec["doc_id"]] = a


def _logs(out: Path, task: str) -> list[Path]:
    return sorted((out / "fast").glob(f"{task}.jsonl")) + sorted((out / "fast").glob(f"{task}.rank*.jsonl"))


def run_fast(lm, cells: list[Cell], cfg: SweepConfig, out: Path, progress: bool) -> dict[str, dict] | None:
    """The generate tasks of all ``cells``, every spec of a sample in one pass; returns {cell_id: {task: result}}.

    Data parallel (``lm.world_size`` > 1, under ``accelerate launch`` / ``torchrun``): rank r answers the docs
    i with i % world == r into its own log (``fast/<task>.rank<r>of<world>.jsonl``), all ranks meet, and rank 0
    merges the logs, scores and writes; other ranks return None. Every log on disk counts on a rerun, whatever
    world size wrote it, so a killed run resumes per rank (and under another world size)."""
    from lmms_eval.utils import get_datetime_str
    from tqdm import tqdm

    from mf_harness.analysis.samples import load_task_docs
    from mf_harness.errors import MfHarnessError
    from mf_harness.lmms.fast_engine import MultiSpecRunner

    rank, world = lm.rank, lm.world_size
    runner = MultiSpecRunner(lm, max_rows=max(8, cfg.batch_size * 4))
    (out / "fast").mkdir(exist_ok=True)
    loaded = {}
    for task in sorted({t for c in cells for t in c.tasks}):
        tcells = [c for c in cells if task in c.tasks]
        if task in cfg.mfr_tasks():
            task_obj, docs = load_task_docs(task, cfg.limit)
        else:  # a capability task: here when it is one generate_until task (groups, loglikelihood: simple_evaluate)
            found = generate_task(task, cfg.limit)
            if found is None:
                continue
            task_obj, docs = found
        loaded[task] = (task_obj, docs, tcells)
        log = out / "fast" / (f"{task}.jsonl" if world == 1 else f"{task}.rank{rank}of{world}.jsonl")
        answers: dict[str, dict[int, str]] = {c.cell_id: {} for c in tcells}
        _read_logs(_logs(out, task), answers)
        gen_kwargs = dict(task_obj.config.generation_kwargs or {})
        mine = [i for i in range(len(docs)) if i % world == rank]
        with log.open("a") as f:
            for i in tqdm(mine, desc=f"{task}: {len(tcells)} specs per sample" + (f" (rank {rank}/{world})" if world > 1
                          else ""), disable=not progress or rank != 0):
                todo = [c for c in tcells if i not in answers[c.cell_id]]
                if not todo:
                    continue
                doc = docs[i]
                label = f"{task} doc {i}"
                images = lm.visuals(task_obj.doc_to_visual, doc, label)
                outs = runner.generate(task_obj.doc_to_text(doc), images, doc, [c.spec for c in todo], gen_kwargs,
                                       label)
                for c, a in zip(todo, outs):
                    answers[c.cell_id][i] = a
                f.write(json.dumps({"doc_id": i, "answers": {c.cell_id: a for c, a in zip(todo, outs)}}) + "\n")
                f.flush()
    if world > 1:
        lm.accelerator.wait_for_everyone()
        if rank != 0:
            return None
    results: dict[str, dict] = {c.cell_id: {} for c in cells}
    for task, (task_obj, docs, tcells) in loaded.items():
        answers = {c.cell_id: {} for c in tcells}
        _read_logs(_logs(out, task), answers)
        for c in tcells:
            missing = [i for i in range(len(docs)) if i not in answers[c.cell_id]]
            if missing:
                raise MfHarnessError(f"{task}: no answer for {len(missing)} docs of cell {c.cell_id} (first: doc "
                                     f"{missing[0]}) in {out / 'fast'}; a rank stopped early? rerun to resume")
        stamp = get_datetime_str()
        for c in tcells:
            per_sample, metrics, stderr = score_answers(task_obj, docs, answers[c.cell_id])
            margs = ",".join(a for a in (cfg.model_args, c.model_args()) if a)
            write_lmms_layout(out, c, task, task_obj, margs, docs, answers[c.cell_id], per_sample, metrics, stderr,
                               stamp, lm.model_name)
            results[c.cell_id][task] = {"metrics": metrics, "stderr": stderr, "samples": per_sample, "n": len(docs)}
    return results


def generate_task(task: str, limit: int | None):
    """(task object, docs) of a single generate_until task, else None (groups and other output types)."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager("ERROR")
    if task not in tm.all_subtasks:  # a task, not a group or tag
        return None
    obj = get_task_dict([task], tm).get(task)
    if obj is None or getattr(obj, "OUTPUT_TYPE", None) != "generate_until":
        return None
    docs = list(obj.eval_docs)
    return obj, docs[:limit] if limit is not None else docs
