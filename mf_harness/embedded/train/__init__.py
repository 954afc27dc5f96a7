"""The embedded checkpoint's trainer (``python -m mf_harness.embedded.train``, ``mf-harness train-embedded``).

Not part of the runtime: nothing outside this package imports it except the CLI's
``train-embedded`` entry, lazily. Split by concern:

| module | what |
|---|---|
| ``config`` | `TrainConfig`, the tokenizer, the seeded initial checkpoint |
| ``synth`` | the synthetic conflict rows (training and held-out) |
| ``batches`` | prompts and images exactly as the wrapper feeds them; routing masks |
| ``loop`` | losses, the training loop, the held-out probe |
| ``measure`` | the card's LDAR, head effects and fast MFR, taken with `mf_harness.analysis` |
| ``evaluate`` | MFR through lmms-eval, targeted vs random heads, the spec files |
| ``card`` | ``MODEL_CARD.md`` |
| ``trainer`` | the command (``main``) |
"""

import importlib

_EXPORTS = {
    "TrainConfig": "config", "DEFAULT": "config", "RECORD": "config", "build_initial": "config",
    "render": "batches", "pixel_bounds": "batches", "Batch": "batches", "encode_batch": "batches",
    "route_masks": "batches", "attention_masks": "batches",
    "train": "loop", "load_checkpoint": "loop", "weights_hash": "loop", "probe_accuracy": "loop",
    "margin_mfr": "measure", "ldar_by_layer": "measure", "head_effects": "measure", "top_heads": "measure",
    "ranked_heads": "measure", "bundled_docs": "measure", "harness_lm": "measure", "samples_for": "measure",
    "evaluate": "evaluate", "model_card": "card",
}
__all__ = sorted(_EXPORTS) + ["main"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mf_harness.embedded.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mf_harness.embedded.train' has no attribute {name!r}")


def main(argv=None) -> int:
    from mf_harness.embedded.train.trainer import main as _main

    return _main(argv)
