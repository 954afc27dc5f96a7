"""How mf-harness plugs into lmms-eval 0.7.3.

lmms-eval imports this module while it builds its model registry (entry point group
``lmms_eval.models``, declared in pyproject.toml), i.e. before any task is resolved, and
calls `manifests`, which

1. registers ``intervened_hf`` and its per-family aliases (``intervened_qwen``,
   ``intervened_internvl``, ``intervened_llava``, ...): one class,
   `mf_harness.lmms.model.IntervenedHF`;
2. installs the ``lmms`` group of `mf_harness.lmms.patches` (`install`): our task folder in
   every TaskManager (``--tasks mfr`` with no ``--include_path``; ``--include_path`` keeps
   working), a non-zero exit status with one clear line on failure, ``--use_cache`` keyed on a
   spec's content, and lmms-eval 0.7.3 on filelock 4.3.

Importing this module changes nothing.
"""

from __future__ import annotations

import os

__all__ = ["manifests", "tasks_dir", "install", "MODEL_CLASS"]

MODEL_CLASS = "mf_harness.lmms.model.IntervenedHF"


def tasks_dir() -> str:
    """The folder of mf-harness's task YAMLs (the repo's ``tasks/`` or the installed copy)."""
    import mf_harness.tasks as t

    return os.path.dirname(os.path.abspath(t.__file__))


def install() -> list[str]:
    """Install the lmms-eval patches (idempotent); returns those applied now. Call it before
    ``lmms_eval.evaluator.simple_evaluate`` when you do not go through lmms-eval's model registry."""
    from mf_harness.lmms.patches import install_lmms

    return install_lmms()


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    from mf_harness.core.arch import MODEL_NAMES

    install()
    return [ModelManifest(model_id=MODEL_NAMES[0], simple_class_path=MODEL_CLASS, aliases=MODEL_NAMES[1:])]
