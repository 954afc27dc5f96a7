"""Rebuild the embedded checkpoint: ``python -m mf_harness.embedded.build``.

Random weights from a fixed seed (a trained model replaces this later); the
tokenizer is trained on the generic corpus plus the MFR prompt vocabulary.
"""

from __future__ import annotations

import shutil

from mf_harness.embedded import EMBEDDED_NAME
from mf_harness.tiny import TinyConfig, build_tiny_vlm

CONFIG = TinyConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=128, vision_depth=1, vision_hidden_size=32, vocab_target=500, seed=1234,
                    attn_implementation="sdpa")


def main() -> None:
    from pathlib import Path

    out = Path(__file__).resolve().parent / EMBEDDED_NAME
    if out.exists():
        shutil.rmtree(out)
    build_tiny_vlm(out, CONFIG)
    print(out)


if __name__ == "__main__":
    main()
