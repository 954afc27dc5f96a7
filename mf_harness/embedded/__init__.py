"""The embedded default checkpoint behind ``pretrained=embedded`` and ``make demo``.

A tiny Qwen2.5-VL (real `transformers` classes, 4 layers x 8 heads, ~1.1M parameters)
shipped inside the package so the demo and the tests need no hub. It is trained by
`mf_harness.embedded.train` to follow modality instructions on synthetic colour / counting /
shape conflicts; its ``MODEL_CARD.md`` states the data, the training, the held-out
scores, where it settles the conflict (LDAR by layer) and which heads carry it.
`mf-harness embedded-path` prints its directory.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EMBEDDED_NAME", "embedded_dir", "embedded_path"]

EMBEDDED_NAME = "qwen2_5_vl_tiny"


def embedded_dir() -> Path:
    """The folder that holds the embedded checkpoint(s)."""
    return Path(__file__).resolve().parent


def embedded_path() -> Path:
    p = embedded_dir() / EMBEDDED_NAME
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded checkpoint is missing at {p}; rebuild it with `python -m mf_harness.embedded.train`"
        )
    return p
