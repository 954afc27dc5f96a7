"""Per-head interventions as hooks that live only inside a context manager.

For a batch, a `HeadPlan` says, per row, which positions are in scope and which
multiplier each head gets there:

    z[b, p, h] <- coef[l][b, h] * z[b, p, h]   if p is in scope for row b
    z[b, p, h] <- z[b, p, h]                   otherwise

where z is the input of layer l's ``o_proj`` split per head. Rows may carry
different specs (a sweep can batch several specs of the same prompt), and scopes
are per row, so left-padded batches are exact. Prompt positions in scope come from
`mask`; positions at or past the padded prompt length (generated tokens) are in
scope where `decode[b]` is true.

`intervene` registers, for each layer that has a non-identity coefficient, a
pre-hook on the attention module (it records how many tokens the KV cache
already holds, i.e. the absolute position of this chunk) and a pre-hook on
``o_proj`` (it applies the multipliers). Every site is resolved before anything is
registered; on exit (normal, exception or KeyboardInterrupt) exactly these
handles are removed. An empty plan registers nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from mf_harness.arch import geometry, resolve
from mf_harness.spec import InterventionSpec

__all__ = ["HeadPlan", "intervene", "active_handles"]


@dataclass
class HeadPlan:
    """Per-row multipliers and scope for one batch of padded prompts."""

    coef: dict[int, torch.Tensor]  # layer -> [batch, heads] float multipliers (1 = untouched)
    mask: torch.Tensor  # [batch, prompt_len] bool: prompt positions in scope
    decode: torch.Tensor  # [batch] bool: act on positions >= prompt_len (generated tokens)

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def prompt_len(self) -> int:
        return self.mask.shape[1]

    @property
    def is_empty(self) -> bool:
        return not self.coef

    @classmethod
    def build(
        cls,
        specs: Sequence[InterventionSpec],
        masks: torch.Tensor,
        num_layers: int,
        num_heads: int,
    ) -> "HeadPlan":
        """One spec per row; ``masks`` is ``[batch, prompt_len]`` bool (the spec's scope per row)."""
        if len(specs) != masks.shape[0]:
            raise ValueError(f"{len(specs)} specs for a batch of {masks.shape[0]} rows")
        coef: dict[int, torch.Tensor] = {}
        for b, spec in enumerate(specs):
            spec.validate_for(num_layers, num_heads)
            for head, c in spec.head_coefficients().items():
                if head.layer not in coef:
                    coef[head.layer] = torch.ones(len(specs), num_heads)
                coef[head.layer][b, head.head] = c
        decode = torch.tensor([s.acts_on_decode for s in specs], dtype=torch.bool)
        return cls(coef=coef, mask=masks.bool(), decode=decode)


# Handles currently registered by `intervene`, for tests and leak checks.
_ACTIVE: set[int] = set()


def active_handles() -> int:
    """How many hook handles registered by `intervene` are alive right now."""
    return len(_ACTIVE)


def _cached_len(kwargs: dict, layer_idx: int) -> int:
    cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
    if cache is not None:
        try:
            return int(cache.get_seq_length(layer_idx))
        except (TypeError, AttributeError):
            return int(cache.get_seq_length())
    pos = kwargs.get("cache_position")
    if pos is not None:
        return int(pos[0])
    return 0


class _LayerState:
    __slots__ = ("offset", "prefill_factor", "decode_factor")

    def __init__(self) -> None:
        self.offset = 0
        self.prefill_factor: torch.Tensor | None = None
        self.decode_factor: torch.Tensor | None = None


def _factor(plan: HeadPlan, coef: torch.Tensor, start: int, length: int, like: torch.Tensor) -> torch.Tensor:
    """[batch, length, heads] multipliers for absolute positions start..start+length-1."""
    B, S = plan.mask.shape
    end = start + length
    parts = []
    if start < S:
        parts.append(plan.mask[:, start : min(end, S)])
    if end > S:
        parts.append(plan.decode[:, None].expand(B, end - max(start, S)))
    in_scope = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    c = coef.to(device=like.device, dtype=like.dtype)
    ones = torch.ones((), device=like.device, dtype=like.dtype)
    return torch.where(in_scope.to(like.device)[:, :, None], c[:, None, :], ones)


@contextmanager
def intervene(model: nn.Module, plan: HeadPlan | None) -> Iterator[list]:
    """Apply ``plan`` to every forward of ``model`` inside the block; remove all own hooks after."""
    handles: list = []
    if plan is None or plan.is_empty:
        yield handles
        return
    geo = geometry(model)
    _, _, attns, oprojs = resolve(model)  # raises before anything is registered
    for layer, c in plan.coef.items():
        if not 0 <= layer < geo.num_layers:
            raise ValueError(f"plan names layer {layer}; the model has layers 0..{geo.num_layers - 1}")
        if c.shape != (plan.batch_size, geo.num_heads):
            raise ValueError(f"layer {layer} coefficients have shape {tuple(c.shape)}, "
                             f"expected ({plan.batch_size}, {geo.num_heads})")
    head_dim = geo.head_dim
    try:
        for layer, coef in sorted(plan.coef.items()):
            state = _LayerState()

            def attn_pre(module, args, kwargs, _state=state, _layer=layer):
                _state.offset = _cached_len(kwargs, _layer)

            def oproj_pre(module, args, _state=state, _coef=coef):
                (x,) = args[:1]
                B, T, D = x.shape
                if B != plan.batch_size:
                    raise RuntimeError(f"intervention plan is for {plan.batch_size} rows, forward got {B}")
                start = _state.offset
                if start == 0 and T == plan.prompt_len:
                    if _state.prefill_factor is None or _state.prefill_factor.device != x.device:
                        _state.prefill_factor = _factor(plan, _coef, 0, T, x)
                    f = _state.prefill_factor
                elif start >= plan.prompt_len and T == 1:
                    if _state.decode_factor is None or _state.decode_factor.device != x.device:
                        _state.decode_factor = _factor(plan, _coef, plan.prompt_len, 1, x)
                    f = _state.decode_factor
                else:
                    f = _factor(plan, _coef, start, T, x)
                y = (x.view(B, T, -1, head_dim) * f[..., None]).view(B, T, D)
                return (y, *args[1:])

            for h in (
                attns[layer].register_forward_pre_hook(attn_pre, with_kwargs=True),
                oprojs[layer].register_forward_pre_hook(oproj_pre),
            ):
                handles.append(h)
                _ACTIVE.add(h.id)
        yield handles
    finally:
        for h in handles:
            h.remove()
            _ACTIVE.discard(h.id)
        handles.clear()
