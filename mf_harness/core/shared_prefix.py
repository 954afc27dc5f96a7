"""Attention over one prefix shared by many rows, its KV stored once (cascade / Hydragen attention).

The multi-spec sweep and the prefix-shared ablation run R rows (specs, heads) that continue the same
prompt prefix (system prompt, image, context). Repeating the prefix's KV cache per row copies
``R x prefix`` keys and values on every layer and every decoding step (``torch.cat`` in the cache),
and gives the attention kernel R copies of the same keys to stream. Here the prefix is stored once
(batch 1) and each row keeps only its own suffix:

    softmax([q K_p^T, q K_s^T]) [V_p; V_s]  =  (w_p O_p + w_s O_s) / (w_p + w_s)

with O_p, O_s the attention over the prefix and over the row's suffix alone and w = exp(logsumexp of
the scores). The prefix part folds all rows (and the query heads of each KV group) into the query
length of one attention call against the single prefix copy. Exact up to float rounding (tested
against the model's own attention on the tiny models: same tokens, margins within 1e-5).

Scope: one unpadded prompt (every row sees the whole prefix, and the suffix is causal: the mask
the model built is checked to say exactly that, else an error), a model whose attention
implementation is ``sdpa`` or ``eager`` (other implementations, e.g. flash-attention-2, keep the
repeated cache), full-attention layers.
"""

from __future__ import annotations

import math
import sys
import weakref
from contextlib import contextmanager

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from mf_harness.core.arch import resolve

__all__ = ["SharedPrefixLayer", "continue_prefix", "shared_prefix_attention", "supports_shared_prefix",
           "prefix_attention"]

_SUPPORTED = ("sdpa", "eager")
_NAME = "mf_shared_prefix:{}"
_registered: set[str] = set()


class SharedPrefixLayer(DynamicLayer):
    """A cache layer holding the prefix's keys and values once (batch 1) and each row's suffix (batch R).

    ``update`` appends to the suffix and returns the suffix only; the attention installed by
    `shared_prefix_attention` reads the prefix from here. Lengths (masks, positions) count both."""

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor):
        super().__init__()
        if prefix_keys.shape[0] != 1:
            raise ValueError(f"a shared prefix has batch 1, got {prefix_keys.shape[0]}")
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        self.prefix_length = prefix_keys.shape[-2]

    def get_seq_length(self) -> int:
        return self.prefix_length + super().get_seq_length()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < -super().get_seq_length():
            raise ValueError("cannot crop into a shared prefix")
        super().crop(tokens_to_remove)


def supports_shared_prefix(model) -> bool:
    """Whether `shared_prefix_attention` applies to this model (see the module doc)."""
    attns = resolve(model)[2]
    return all(getattr(a, "config", None) is not None and a.config._attn_implementation in _SUPPORTED
               for a in attns)


def continue_prefix(prefix: DynamicCache, config, rows: int, from_layer: int = 0, share: bool = True) -> DynamicCache:
    """A cache for ``rows`` rows continuing ``prefix`` (batch 1, never modified).

    Layers from ``from_layer`` on carry the rows: with ``share``, as a `SharedPrefixLayer` (the prefix once; needs
    `shared_prefix_attention`), else the prefix repeated per row. Layers below carry one row (the rows fork
    later). Continuation layers concatenate on ``update``, so the prefix tensors are referenced, never copied
    or written."""
    cache = DynamicCache(config=config)
    layers = []
    for i, src in enumerate(prefix.layers):
        if type(src) is not DynamicLayer or not src.is_initialized:
            raise ValueError(f"layer {i}'s prefix cache is {type(src).__name__}: only full-attention layers "
                             "continue a shared prefix")
        if share and i >= from_layer:
            layers.append(SharedPrefixLayer(src.keys, src.values))
            continue
        layer = DynamicLayer()
        layer.lazy_initialization(src.keys, src.values)
        layer.keys, layer.values = src.keys, src.values
        if i >= from_layer and rows > 1:
            layer.batch_repeat_interleave(rows)
        layers.append(layer)
    cache.layers = layers
    return cache


_checked: list = [None]  # a weak reference to the last mask found good (every layer of a forward gets the same one)


def _check_mask(mask: torch.Tensor, P: int, Lq: int, Ls: int) -> None:
    """The model's mask must say what this attention assumes: every prefix key visible, the suffix causal."""
    if _checked[0] is not None and _checked[0]() is mask:
        return
    vis = mask if mask.dtype == torch.bool else mask == 0
    causal = torch.arange(Ls, device=mask.device)[None, :] <= torch.arange(Ls - Lq, Ls, device=mask.device)[:, None]
    if vis.shape[-1] != P + Ls or not bool(vis[..., :P].all()) or not bool((vis[..., P:] == causal).all()):
        raise RuntimeError("shared-prefix attention needs one unpadded prompt and a plain causal mask; this mask "
                           "hides prefix keys or is not causal (padding, or edited edges)")
    _checked[0] = weakref.ref(mask)


def _lse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                   mask: torch.Tensor | None = None, chunk: int = 4096, fused: bool = True, causal: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output [B, H, q, d] and the scores' logsumexp [B, H, q] (float32), keys shared by query heads
    of a group (``k``/``v`` have H or H/groups heads); ``mask`` [q, k] (True: visible) or ``causal`` (q = k). On
    CPU without a mask: the fused kernel, which returns the logsumexp; elsewhere plain tensor maths in float32,
    in query chunks to bound memory."""
    B, H, Lq, d = q.shape
    G = H // k.shape[1]
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if fused and q.device.type == "cpu" and mask is None and op is not None:
        kk, vv = (k, v) if G == 1 else (k.repeat_interleave(G, 1), v.repeat_interleave(G, 1))
        out, lse = op(q, kk, vv, is_causal=causal, scale=scale)
        return out, lse.float()
    if causal:
        mask = torch.ones(Lq, k.shape[-2], dtype=torch.bool, device=q.device).tril()
    qf = q.float().view(B, k.shape[1], G, Lq, d)
    kf, vf = k.float()[:, :, None], v.float()[:, :, None]
    outs, lses = [], []
    for s in range(0, Lq, chunk):
        scores = (qf[..., s:s + chunk, :] @ kf.transpose(-1, -2)) * scale  # [B, KV, G, c, Lk]
        if mask is not None:
            scores = scores.masked_fill(~mask[s:s + chunk], float("-inf"))
        lse = scores.logsumexp(-1)
        outs.append(torch.exp(scores - lse[..., None]) @ vf)
        lses.append(lse)
    out = torch.cat(outs, -2).view(B, H, Lq, d).to(q.dtype)
    return out, torch.cat(lses, -1).view(B, H, Lq)


def prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention of a layer whose cache is a `SharedPrefixLayer` (``key``/``value``: the rows' suffix)."""
    layer: SharedPrefixLayer = module._mf_shared_prefix
    R, H, Lq, d = query.shape
    scale = scaling if scaling is not None else 1.0 / math.sqrt(d)
    KV, P = layer.prefix_keys.shape[1], layer.prefix_length
    G = H // KV
    # over the prefix: every row's queries (and each KV group's query heads) in one call against the one copy
    qp = query.view(R, KV, G, Lq, d).permute(1, 2, 0, 3, 4).reshape(1, KV, G * R * Lq, d)
    out_p, lse_p = _lse_attention(qp, layer.prefix_keys, layer.prefix_values, scale)
    out_p = out_p.view(KV, G, R, Lq, d).permute(2, 0, 1, 3, 4).reshape(R, H, Lq, d)
    lse_p = lse_p.view(KV, G, R, Lq).permute(2, 0, 1, 3).reshape(R, H, Lq)
    # over each row's own suffix: causal (bottom-right aligned) as the model's mask says, checked here
    Ls = key.shape[-2]
    if attention_mask is not None:
        _check_mask(attention_mask, P, Lq, Ls)
    elif Lq > 1:
        raise RuntimeError("shared-prefix attention got no mask for a multi-token query after a prefix")
    if Lq == 1:
        out_s, lse_s = _lse_attention(query, key, value, scale)
    elif Lq == Ls:
        out_s, lse_s = _lse_attention(query, key, value, scale, causal=True)
    else:
        causal = torch.arange(Ls, device=query.device)[None, :] <= torch.arange(Ls - Lq, Ls, device=query.device)[:, None]
        out_s, lse_s = _lse_attention(query, key, value, scale, causal)
    m = torch.maximum(lse_p, lse_s)
    w_p, w_s = torch.exp(lse_p - m)[..., None], torch.exp(lse_s - m)[..., None]
    out = (out_p.float() * w_p + out_s.float() * w_s) / (w_p + w_s)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _register(original: str) -> str:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = _NAME.format(original)
    if name in _registered:
        return name

    def attention(module, *args, **kwargs):
        if getattr(module, "_mf_shared_prefix", None) is not None:
            return prefix_attention(module, *args, **kwargs)
        if original == "sdpa":
            return sdpa_attention_forward(module, *args, **kwargs)
        return sys.modules[type(module).__module__].eager_attention_forward(module, *args, **kwargs)  # the model's own

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    assert ALL_ATTENTION_FUNCTIONS.get_interface(name, None) is attention
    _registered.add(name)
    return name


@contextmanager
def shared_prefix_attention(model, cache: DynamicCache):
    """Inside the block the model's attention reads each `SharedPrefixLayer` of ``cache`` as the shared prefix
    (other layers: the model's own attention, unchanged)."""
    attns = resolve(model)[2]
    configs = {id(a.config): a.config for a in attns}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    if any(v not in _SUPPORTED for v in saved.values()):
        raise ValueError(f"shared-prefix attention supports {_SUPPORTED}, not {sorted(set(saved.values()))}")
    marked = []
    try:
        for k, c in configs.items():
            c._attn_implementation_internal = _register(saved[k])
        for i, a in enumerate(attns):
            layer = cache.layers[i] if i < len(cache.layers) else None
            if isinstance(layer, SharedPrefixLayer):
                a._mf_shared_prefix = layer
                marked.append(a)
        yield cache
    finally:
        for a in marked:
            a._mf_shared_prefix = None
        for k, c in configs.items():
            c._attn_implementation_internal = saved[k]
