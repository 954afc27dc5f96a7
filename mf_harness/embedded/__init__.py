"""The embedded default checkpoint behind ``pretrained=embedded`` and ``make demo``.

A tiny Qwen2.5-VL (real `transformers` classes) shipped inside the package so the
demo and the tests need no hub. `embedded-path` prints its directory.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EMBEDDED_NAME", "embedded_path"]

EMBEDDED_NAME = "qwen2_5_vl_tiny"


def embedded_path() -> Path:
    p = Path(__file__).resolve().parent / EMBEDDED_NAME
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded checkpoint is missing at {p}; rebuild it with `python -m mf_harness.embedded.build`"
        )
    return p
