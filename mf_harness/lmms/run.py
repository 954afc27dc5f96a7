"""Run lmms-eval on the model as its CLI would, from Python: ``simple_evaluate`` with our patches installed."""

from __future__ import annotations

__all__ = ["run_mfr"]


def run_mfr(model_args: str, tasks=("mfr_text", "mfr_vision"), limit: int | None = None, batch_size: int = 8):
    """Evaluate ``intervened_qwen`` on ``tasks``; return {task: {metric: value, n, answers}}."""
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    from mf_harness.lmms.plugin import install

    install()
    res = evaluator.simple_evaluate(
        model="intervened_qwen", model_args=model_args, tasks=list(tasks), batch_size=batch_size, limit=limit,
        task_manager=TaskManager("ERROR"), verbosity="ERROR", log_samples=True,
    )
    out = {}
    for t in tasks:
        r = res["results"][t]
        out[t] = {k.split(",")[0]: v for k, v in r.items() if "," in k and "stderr" not in k}
        out[t]["n"] = res["n-samples"][t]["effective"]
        out[t]["answers"] = {s["doc_id"]: s["filtered_resps"] for s in res["samples"][t]}
    return out
