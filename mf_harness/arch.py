"""Architecture knowledge, as one table: where each VLM family keeps its text decoder.

The per-head site is the input of each text decoder layer's attention output
projection (``self_attn.o_proj``): shape ``[batch, seq, heads * head_dim]``, and
head ``h`` is the slice ``h*head_dim:(h+1)*head_dim`` (the head's output z_h
before W_O mixes heads). Blocking/amplifying a head multiplies that slice.

A new family is one `ArchRow` here plus its tiny-model test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

__all__ = ["ArchRow", "ARCH", "arch_for", "resolve", "HeadGeometry", "geometry"]


@dataclass(frozen=True)
class ArchRow:
    family: str  # config.model_type
    layers: str  # dotted path from the top-level model to the text decoder's layer list
    attn: str = "self_attn"  # attention module inside a decoder layer
    o_proj: str = "o_proj"  # output projection inside the attention module
    text_config: str = "text_config"  # config attribute holding the text model's sizes ("" = top level)
    final_norm: str = "model.language_model.norm"  # for the logit lens (analysis)
    lm_head: str = "lm_head"
    image_token: str | None = "<|image_pad|>"


ARCH: dict[str, ArchRow] = {
    row.family: row
    for row in (
        ArchRow("qwen2_5_vl", layers="model.language_model.layers"),
        ArchRow("qwen2_vl", layers="model.language_model.layers"),
    )
}


def _get(obj, path: str):
    for part in path.split(".") if path else []:
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def arch_for(model_or_config) -> ArchRow:
    config = getattr(model_or_config, "config", model_or_config)
    family = getattr(config, "model_type", None)
    if family not in ARCH:
        raise ValueError(
            f"model family {family!r} is not in mf-harness's architecture table; known: {', '.join(sorted(ARCH))}"
        )
    return ARCH[family]


@dataclass(frozen=True)
class HeadGeometry:
    num_layers: int
    num_heads: int
    head_dim: int

    @property
    def total_heads(self) -> int:
        return self.num_layers * self.num_heads


def geometry(model_or_config) -> HeadGeometry:
    config = getattr(model_or_config, "config", model_or_config)
    row = arch_for(config)
    tc = _get(config, row.text_config) if row.text_config else config
    heads = tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    return HeadGeometry(tc.num_hidden_layers, heads, head_dim)


def resolve(model: nn.Module) -> tuple[ArchRow, list[nn.Module], list[nn.Module], list[nn.Linear]]:
    """Return (row, decoder layers, attention modules, o_proj modules); raise if any site is missing."""
    row = arch_for(model)
    geo = geometry(model)
    try:
        layers = list(_get(model, row.layers))
    except (AttributeError, IndexError, TypeError) as e:
        raise RuntimeError(f"{row.family}: decoder layers not found at {row.layers!r} ({e})") from e
    if len(layers) != geo.num_layers:
        raise RuntimeError(f"{row.family}: found {len(layers)} layers at {row.layers!r}, config says {geo.num_layers}")
    attns, oprojs = [], []
    for i, layer in enumerate(layers):
        attn = getattr(layer, row.attn, None)
        o_proj = getattr(attn, row.o_proj, None) if attn is not None else None
        if not isinstance(o_proj, nn.Linear):
            raise RuntimeError(f"{row.family}: layer {i} has no {row.attn}.{row.o_proj} linear layer")
        if o_proj.in_features != geo.num_heads * geo.head_dim:
            raise RuntimeError(
                f"{row.family}: layer {i} {row.o_proj} takes {o_proj.in_features} features, "
                f"expected heads*head_dim = {geo.num_heads}*{geo.head_dim}"
            )
        attns.append(attn)
        oprojs.append(o_proj)
    return row, layers, attns, oprojs
