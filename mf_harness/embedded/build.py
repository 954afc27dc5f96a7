"""Rebuild the embedded checkpoint: ``python -m mf_harness.embedded.build``.

Retrains it from scratch (`mf_harness.train`, CPU, deterministic: same seed and thread
count give bit-identical weights on the same machine), re-measures it, and rewrites its
``MODEL_CARD.md``, ``mf_harness_train.json`` and the head-set specs under ``interventions/``.
Extra arguments go to ``python -m mf_harness.train`` (``--eval-only`` re-measures the
shipped weights without retraining).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from mf_harness.train import main as train_main

    return train_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
