"""The card's measurements, taken with the harness itself (`mf_harness.analysis` through the ``intervened_qwen``
wrapper): LDAR by layer, single-head ablation effects, a fast margin-based MFR. The trainer keeps no analysis of
its own, so the card states what `mf-harness lens` / `discover` would measure on the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["harness_lm", "samples_for", "ldar_by_layer", "head_effects", "margin_mfr", "ranked_heads", "top_heads",
           "bundled_docs", "LDAR_READOUTS"]

# the card's LDAR readouts: the paper's top-3 instruction readout, the top-1 one, the instruction's last token, and
# the last position
LDAR_READOUTS = ("instruction", "instruction_top1", "instruction_final_token", "last")


def harness_lm(path: str | Path):
    """The lmms-eval model on the checkpoint at ``path``, with the checkpoint's own pixel bounds (so a directory
    is evaluated exactly as ``pretrained=embedded`` is)."""
    from transformers import AutoProcessor

    from mf_harness.embedded.train.batches import pixel_bounds
    from mf_harness.lmms.model import IntervenedHF
    from mf_harness.lmms.patches import install_processors

    install_processors()
    lo, hi, _ = pixel_bounds(AutoProcessor.from_pretrained(path))
    return IntervenedHF(pretrained=str(path), min_pixels=lo, max_pixels=hi)


def samples_for(lm, follow: str, rows: Sequence[dict] | None = None):
    """Analysis samples of the ``mfr_<follow>`` task: its bundled docs, or generator ``rows`` (the mfr schema) as
    that task's ``process_docs`` turns them into docs."""
    import datasets

    from mf_harness.analysis.samples import load_task_docs, prepare_samples
    from mf_harness.tasks.mfr.mfr import process_docs

    task_obj, docs = load_task_docs(f"mfr_{follow}")
    if rows is not None:
        keep = ("sample_id", "image_id", "task", "question", "answer_vision", "answer_text", "context",
                "answer_vision_synonyms", "answer_text_synonyms", "image")
        ds = datasets.Dataset.from_list([{k: r[k] for k in keep} for r in rows])
        docs = [dict(d, instruction=r["instruction"]) for d, r in zip(process_docs(ds, follow), rows)]
    return prepare_samples(lm, task_obj, docs)


def ldar_by_layer(lm, samples, batch_size: int = 32) -> dict[str, list[float]]:
    """LDAR per layer (`mf_harness.analysis.measures.lens_and_attribution`) for each of `LDAR_READOUTS`:
    the instruction readout with k = 3 (the paper's) and k = 1, the instruction's last token, and the last
    prompt position."""
    from mf_harness.analysis.measures import lens_and_attribution

    out = {}
    runs = {k: lens_and_attribution(lm, samples, k=k, batch_size=batch_size, progress=False)["lens"] for k in (3, 1)}
    for key, k, site in (("instruction", 3, "instruction"), ("instruction_top1", 1, "instruction"),
                         ("instruction_final_token", 1, "instruction_final"), ("last", 1, "last")):
        rows = [r for r in runs[k] if r["site"] == site]
        layers = sorted({r["layer"] for r in rows})
        out[key] = [round(sum(r["agree"] for r in rows if r["layer"] == l) / sum(r["layer"] == l for r in rows), 4)
                    for l in layers]
    return out


def head_effects(lm, samples, scope: str = "instruction", batch_size: int = 32):
    """[layers, heads]: mean drop of the final compliant-vs-competing margin when one head is blocked at ``scope``
    (`mf_harness.analysis.measures.ablation_effects`, the ranking `discover --method ablation` writes)."""
    import torch

    from mf_harness.analysis.measures import ablation_effects
    from mf_harness.core.arch import geometry

    geo = geometry(lm.model)
    total = torch.zeros(geo.num_layers, geo.num_heads)
    count = torch.zeros(geo.num_layers, geo.num_heads)
    for r in ablation_effects(lm, samples, scope=scope, batch_size=batch_size, progress=False):
        total[r["layer"], r["head"]] += r["effect"]
        count[r["layer"], r["head"]] += 1
    return total / count


def margin_mfr(lm, samples, spec=None, batch_size: int = 32) -> float:
    """Share of samples whose final logits prefer a compliant first token to every competing one (a fast proxy of
    MFR: `mf_harness.analysis.measures.final_margins` > 0)."""
    from mf_harness.analysis.measures import final_margins

    m = final_margins(lm, samples, spec, batch_size=batch_size)
    return float((m > 0).float().mean())


def ranked_heads(effects) -> list[tuple[int, int]]:
    """Every (layer, head), largest effect first (ties: lower layer, then lower head)."""
    H = effects.shape[1]
    flat = [float(x) for x in effects.flatten()]
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    return [(i // H, i % H) for i in order]


def top_heads(effects, k: int) -> list[tuple[int, int]]:
    """The k heads with the largest effect, in (layer, head) order."""
    return sorted(ranked_heads(effects)[:k])


def bundled_docs(follow: str) -> list[dict]:
    """The bundled ``mfr`` eval set as the task sees it (`mf_harness.tasks.mfr.mfr.process_docs`), PIL images decoded."""
    import datasets

    from mf_harness.tasks.mfr.mfr import process_docs
    from mf_harness.tasks.mfr.mfr_data import bundled_synthetic_path

    ds = datasets.load_dataset("parquet", data_files={"test": str(bundled_synthetic_path())}, split="test")
    return [dict(d) for d in process_docs(ds, follow)]
