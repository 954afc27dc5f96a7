"""mf-harness: modality following of multimodal LLMs under attention-head interventions.

The public API is re-exported here lazily (importing the package stays cheap: lmms-eval
imports our plugin module on every run).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "InterventionSpec": "mf_harness.core.spec",
    "Head": "mf_harness.core.spec",
    "SpecError": "mf_harness.core.spec",
    "HeadPlan": "mf_harness.core.hooks",
    "intervene": "mf_harness.core.hooks",
    "IntervenedHF": "mf_harness.lmms.model",
    "load_model": "mf_harness.lmms.model",
    "ARCH": "mf_harness.core.arch",
    "geometry": "mf_harness.core.arch",
    "MfHarnessError": "mf_harness.errors",
    "DataError": "mf_harness.errors",
    "embedded_path": "mf_harness.embedded",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mf_harness' has no attribute {name!r}")


def __dir__():
    return __all__
