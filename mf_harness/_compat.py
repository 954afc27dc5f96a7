"""Small compatibility shims for running real HF VLM processors without torchvision.

transformers 5.x builds every *video* processor on torchvision. Processors that own
one (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, LLaVA-OneVision, SmolVLM) therefore
refuse to build or load on a machine without torchvision, even for image+text use.
`install_processor_shim` makes `ProcessorMixin.get_attributes` drop
``video_processor`` when torchvision is missing, so such processors load with their
PIL image processor; `without_video` then gives a loaded processor a stand-in video
processor for the few code paths that read its defaults (SmolVLM's chat template
reads ``video_processor.num_frames``), and SmolVLM's constructor gets ``None`` as the
default for its required ``video_processor`` argument. SmolVLM's processor also refuses
to build without ``num2words``, which it uses only to word video prompts; the shim
supplies a stand-in that raises if a video prompt is ever built. On machines with
torchvision (and num2words) nothing changes.
"""

from __future__ import annotations

import importlib.util

__all__ = ["has_torchvision", "install_processor_shim", "without_video"]

_INSTALLED = False


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


class _NoVideoProcessor:
    """Stands in for a video processor that cannot exist without torchvision."""

    num_frames = None
    fps = None

    def __call__(self, *args, **kwargs):
        raise RuntimeError("video inputs need torchvision, which is not installed")


def _no_num2words(n, *args, **kwargs):
    raise RuntimeError("SmolVLM video prompts need the num2words package, which is not installed")


def install_processor_shim() -> None:
    """Idempotently let processors with a video sub-processor load without torchvision."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    if importlib.util.find_spec("num2words") is None:
        try:
            from transformers.models.smolvlm import processing_smolvlm
        except ImportError:  # an older transformers without SmolVLM
            pass
        else:
            if not processing_smolvlm.num2words:
                processing_smolvlm.num2words = _no_num2words
    if has_torchvision():
        return
    from transformers import processing_utils

    original = processing_utils.ProcessorMixin.get_attributes.__func__

    def get_attributes(cls):
        return [a for a in original(cls) if a != "video_processor"]

    processing_utils.ProcessorMixin.get_attributes = classmethod(get_attributes)
    try:  # SmolVLM's processor takes video_processor as a required argument: give it the default None
        from transformers import SmolVLMProcessor
    except ImportError:
        return
    init = SmolVLMProcessor.__init__
    code, defaults = init.__code__, init.__defaults__ or ()
    positional = code.co_varnames[: code.co_argcount]
    first_default = code.co_argcount - len(defaults)
    if "video_processor" in positional and positional.index("video_processor") == first_default - 1:
        init.__defaults__ = (None, *defaults)


def without_video(processor):
    """Give ``processor`` a stand-in video processor if the shim left it without one; return it."""
    if not has_torchvision() and getattr(processor, "video_processor", None) is None:
        processor.video_processor = _NoVideoProcessor()
    return processor
