"""The fast engine's answers scored by the task's own ``process_results`` and aggregations, and written in
lmms-eval's output layout (results + samples per cell and task), so both sweep engines leave the same files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from mf_harness.checks import atomic_write_text

if TYPE_CHECKING:
    from mf_harness.runs.sweep import Cell

__all__ = ["score_answers", "write_lmms_layout", "per_sample_values"]


def write_lmms_layout(out: Path, cell: Cell, task: str, task_obj, margs: str, docs, answers: dict, per_sample: dict,
                       metrics: dict, stderr: dict, stamp: str, model_name: str) -> None:
    """Results + samples files in lmms-eval's layout for one cell and one task."""
    d = out / "runs" / cell.cell_id / model_name
    d.mkdir(parents=True, exist_ok=True)
    results = {"results": {task: {"alias": task, **{f"{m},none": v for m, v in metrics.items()},
                                  **{f"{m}_stderr,none": v for m, v in stderr.items()}}},
               "configs": {task: task_obj.dump_config()},
               "n-samples": {task: {"original": len(docs), "effective": len(docs)}},
               "config": {"model": model_name, "model_args": margs, "engine": "mf_harness.lmms.fast_engine"},
               "date": stamp}
    atomic_write_text(d / f"{stamp}_results_{task}.json", json.dumps(results, indent=2, default=str))
    lines = []
    for i, doc in enumerate(docs):
        row = {"doc_id": i, "target": task_obj.doc_to_target(doc), "resps": [[answers[i]]],
               "filtered_resps": [answers[i]], "input": task_obj.doc_to_text(doc)}
        row.update(per_sample[str(i)])
        lines.append(json.dumps(row, default=str))
    atomic_write_text(d / f"{stamp}_samples_{task}.jsonl", "\n".join(lines) + "\n")


def per_sample_values(fn, values: list) -> list | None:
    """Per-sample scores of a corpus metric whose aggregation says how (``fn.per_sample(items)``, whose mean is
    the aggregate, e.g. pycocoevalcap's per-image CIDEr); None for other aggregations."""
    split = getattr(fn, "per_sample", None)
    if split is None:
        return None
    scores = [float(v) for v in split(values)]
    if len(scores) != len(values):
        raise ValueError(f"{fn.__name__}.per_sample gave {len(scores)} scores for {len(values)} items")
    return scores


def score_answers(task_obj, docs, answers: dict) -> tuple[dict, dict, dict]:
    """Per-sample metrics via the task's process_results, aggregated with its own aggregations (and split per
    sample where the aggregation can say how: `per_sample_values`)."""
    from lmms_eval.api.metrics import mean, mean_stderr

    per_sample, columns = {}, {}
    for i, doc in enumerate(docs):
        r = task_obj.process_results(doc, [answers[i]])
        per_sample[str(i)] = {k: v for k, v in r.items() if v is None or isinstance(v, (int, float, bool))}
        for k, v in r.items():
            columns.setdefault(k, []).append(v)
    aggs = task_obj.aggregation()
    metrics, stderr = {}, {}
    for m, values in columns.items():
        fn = aggs.get(m, mean)
        metrics[m] = fn(values)
        split = per_sample_values(fn, values)
        if split is not None:
            for i, v in enumerate(split):
                per_sample[str(i)][m] = v
        if fn is mean:  # one doc has no standard error
            stderr[m] = mean_stderr(values) if len(values) > 1 else None
    return per_sample, metrics, stderr
