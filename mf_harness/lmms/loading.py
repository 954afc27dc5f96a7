"""Loading a checkpoint the way users do: a hub id, a local directory, or ``embedded``."""

from __future__ import annotations

from typing import Any

import torch

from mf_harness.core.arch import arch_for
from mf_harness.errors import MfHarnessError

__all__ = ["load_model", "load_config", "resolve_pretrained", "torch_dtype"]


def resolve_pretrained(pretrained: str) -> str:
    if pretrained == "embedded":
        from mf_harness.embedded import embedded_path

        return str(embedded_path())
    return pretrained


def torch_dtype(name: str | None, device: str) -> torch.dtype:
    if name in (None, "", "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float32": torch.float32, "fp32": torch.float32}
    if name not in table:
        raise MfHarnessError(f"dtype must be one of {', '.join(table)}; got {name!r}")
    return table[name]


def load_config(pretrained: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoConfig

    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kw["revision"] = revision
    try:
        return AutoConfig.from_pretrained(resolve_pretrained(pretrained), **kw)
    except (OSError, ValueError) as e:
        raise MfHarnessError(f"cannot load checkpoint {pretrained!r}: {e}") from None


def load_model(pretrained: str, *, device: str = "cpu", device_map: str | None = None, dtype: str | None = None,
               attn_implementation: str | None = None, revision: str | None = None,
               min_pixels: int | None = None, max_pixels: int | None = None, trust_remote_code: bool = False):
    """Load (model, processor) the way users do: a hub id or a local directory, or ``embedded``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mf_harness.lmms.patches import install_processors, without_video

    install_processors()
    path = resolve_pretrained(pretrained)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype, device), "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        valid = (None, "flash_attention_2", "sdpa", "eager")
        if attn_implementation not in valid:
            raise MfHarnessError(f"attn_implementation must be one of {valid}, got {attn_implementation!r}")
        kwargs["attn_implementation"] = attn_implementation
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except OSError as e:
        raise MfHarnessError(f"cannot load checkpoint {pretrained!r}: {e}") from None
    if not device_map:
        model = model.to(device)
    model.eval()
    arch_for(model)  # fail early for families not in the table
    pkw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        pkw["revision"] = revision
    processor = without_video(AutoProcessor.from_pretrained(path, **pkw))
    ip = processor.image_processor
    if min_pixels is not None or max_pixels is not None:
        size = dict(getattr(ip, "size", None) or {})
        size["shortest_edge"] = int(min_pixels) if min_pixels is not None else size.get("shortest_edge")
        size["longest_edge"] = int(max_pixels) if max_pixels is not None else size.get("longest_edge")
        ip.size = size
        for attr, value in (("min_pixels", size["shortest_edge"]), ("max_pixels", size["longest_edge"])):
            if hasattr(ip, attr):
                setattr(ip, attr, value)
    return model, processor
