"""Small compatibility shims for running real HF VLM processors without torchvision.

transformers 5.x builds every *video* processor on torchvision. Processors that own
one (Qwen2-VL, Qwen2.5-VL, ...) therefore refuse to build or load on a machine
without torchvision, even for image+text use. `install_processor_shim` makes
`ProcessorMixin.get_attributes` drop `video_processor` when torchvision is
missing, so such processors load with their PIL image processor. On machines
with torchvision nothing changes.
"""

from __future__ import annotations

import importlib.util

__all__ = ["has_torchvision", "install_processor_shim"]

_INSTALLED = False


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def install_processor_shim() -> None:
    """Idempotently let processors with a video sub-processor load without torchvision."""
    global _INSTALLED
    if _INSTALLED or has_torchvision():
        _INSTALLED = True
        return
    from transformers import processing_utils

    original = processing_utils.ProcessorMixin.get_attributes.__func__

    def get_attributes(cls):
        return [a for a in original(cls) if a != "video_processor"]

    processing_utils.ProcessorMixin.get_attributes = classmethod(get_attributes)
    _INSTALLED = True
