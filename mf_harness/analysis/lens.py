"""Capture and logit-lens readout: the primitives every measure is built from.

**Capture** (`capture`): one forward pass records, for every text decoder layer l,

* ``resid[l]``  the residual stream after layer l (``resid[-1]``... see `Trace`),
* ``attn[l]``   the attention output a_l (the ``o_proj`` output, added to the residual),
* ``mlp[l]``    the MLP output m_l,
* ``z[l]``      the per-head outputs (the ``o_proj`` input, ``[..., heads, head_dim]``),

plus the embeddings, all at chosen positions only. The residual decomposes exactly:
h_l = embed + sum_{k<=l} (a_k + m_k).

**Logit lens** at layer l, position i: W_U . FinalNorm(h_l(i)), with the model's own final
norm and unembedding. The **subspace readout** of an entity dictionary E is

    s_l(i, E) = max_{t in E} (W_U . FinalNorm(h_l(i)))_t

and the **instruction readout** R_l(E) is the mean of s_l(i, E) over the ``k`` instruction
tokens with the highest s_l(i, E) (``k`` is a parameter: the paper reports stability across
k and does not give its value). The **arbitration margin** is M_l = R_l(E_c) - R_l(E_o).

**Frozen-scale readout** of a component c (direct logit attribution): RMSNorm is
g * h / rms(h); freezing rms at the residual being read makes the readout linear, so
readout(h_l) = sum over components of W_U . (g * c / rms(h_l)) exactly. A component is
credited on the positions and tokens that the full readout selected (the top-k positions and
the argmax token of each), so component contributions add up to the margin.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mf_harness.core.arch import arch_for, module_at, resolve

__all__ = ["Trace", "capture", "Readout", "readout_weights", "lens_logits", "component_logits", "rms_scale",
           "token_columns"]


@dataclass
class Trace:
    """Captured activations at ``positions`` ([B, P] absolute indices; ``valid`` masks padding)."""

    positions: torch.Tensor  # [B, P]
    valid: torch.Tensor  # [B, P] bool
    embed: torch.Tensor  # [B, P, D]
    resid: list[torch.Tensor]  # per layer, [B, P, D]  (after the layer)
    attn: list[torch.Tensor]  # per layer, [B, P, D]
    mlp: list[torch.Tensor]  # per layer, [B, P, D]
    z: list[torch.Tensor | None]  # per layer, [B, P, H, d_layer] (None: a layer without heads: linear or KV-shared)
    logits: torch.Tensor | None = None  # [B, P, V] final logits at the positions (if asked)


def _out(o):
    return o[0] if isinstance(o, tuple) else o


@contextmanager
def _recording(model, index: torch.Tensor, store: dict):
    """Hooks that gather [B, P, ...] slices at ``index`` from each site."""
    row = arch_for(model)
    _, layers, attns, oprojs = resolve(model)
    handles = []

    def gather(x):
        idx = index.to(x.device)
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1])).detach()

    def emb_hook(m, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        store["embed"] = gather(h)

    handles.append(layers[0].register_forward_pre_hook(emb_hook, with_kwargs=True))
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(lambda m, a, o, i=i: store["resid"].__setitem__(i, gather(_out(o)))))
        if oprojs[i] is None:  # no heads: a hybrid decoder's linear-attention layer or a KV-shared layer (Gemma 4)
            attn = getattr(layer, row.attn, None)  # the token mixer's output, no per-head outputs
            mixer = getattr(attn, row.o_proj, None) if attn is not None else getattr(layer, "linear_attn", None)
            if mixer is None:
                raise RuntimeError(f"{row.family}: layer {i} has neither {row.attn}.{row.o_proj} nor linear_attn")
            handles.append(mixer.register_forward_hook(lambda m, a, o, i=i: store["attn"].__setitem__(i, gather(_out(o)))))
        else:
            handles.append(oprojs[i].register_forward_hook(lambda m, a, o, i=i: store["attn"].__setitem__(i, gather(o))))
            handles.append(oprojs[i].register_forward_pre_hook(lambda m, a, i=i: store["z"].__setitem__(i, gather(a[0]))))
        mlp = getattr(layer, "mlp", None)
        if mlp is None:
            raise RuntimeError(f"{row.family}: layer {i} has no mlp module")
        handles.append(mlp.register_forward_hook(lambda m, a, o, i=i: store["mlp"].__setitem__(i, gather(_out(o)))))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def capture(model, inputs, positions: list[torch.Tensor], with_logits: bool = False) -> Trace:
    """Run ``model(**inputs)`` once and capture every site at the given positions per row."""
    from mf_harness.core.arch import geometry

    geo = geometry(model)
    B = len(positions)
    P = max(1, max(len(p) for p in positions))
    index = torch.zeros(B, P, dtype=torch.long)
    valid = torch.zeros(B, P, dtype=torch.bool)
    for b, p in enumerate(positions):
        index[b, : len(p)] = p
        index[b, len(p):] = p[-1] if len(p) else 0
        valid[b, : len(p)] = True
    store = {"resid": [None] * geo.num_layers, "attn": [None] * geo.num_layers, "mlp": [None] * geo.num_layers,
             "z": [None] * geo.num_layers}
    device = next(model.parameters()).device
    feed = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in dict(inputs).items()}
    with torch.inference_mode(), _recording(model, index, store):
        out = model(**feed)
    logits = None
    if with_logits:
        idx = index.to(out.logits.device)
        logits = torch.gather(out.logits, 1, idx[..., None].expand(-1, -1, out.logits.shape[-1])).float()
    z = [t.view(B, P, geo.num_heads, geo.width(l)) if t is not None else None for l, t in enumerate(store["z"])]
    return Trace(positions=index, valid=valid, embed=store["embed"], resid=store["resid"], attn=store["attn"],
                 mlp=store["mlp"], z=z, logits=logits)


@dataclass
class Readout:
    """The final norm and unembedding, restricted to the tokens of interest."""

    norm: torch.nn.Module
    gain: torch.Tensor  # [D] final-norm weight g
    eps: float
    W_U: torch.Tensor  # [T, D] rows of the unembedding for ``tokens``
    tokens: torch.Tensor  # [T]


def readout_weights(model, tokens: list[int]) -> Readout:
    row = arch_for(model)
    norm = module_at(model, row.final_norm)
    head = module_at(model, row.lm_head)
    t = torch.tensor(sorted(set(tokens)), dtype=torch.long)
    W = head.weight[t.to(head.weight.device)].detach().float()
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    # Gemma-style norms scale by (1 + weight): the row says so
    return Readout(norm=norm, gain=norm.weight.detach().float() + row.norm_offset, eps=eps, W_U=W, tokens=t)


def lens_logits(ro: Readout, h: torch.Tensor) -> torch.Tensor:
    """W_U . FinalNorm(h) over the readout tokens, using the model's own norm module: [..., T]."""
    with torch.inference_mode():
        normed = ro.norm(h.to(ro.norm.weight.dtype)).float()
    return normed @ ro.W_U.T.to(normed.device)


def rms_scale(ro: Readout, h: torch.Tensor) -> torch.Tensor:
    """1 / rms(h) as RMSNorm computes it (float32): [..., 1]."""
    hf = h.float()
    return torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + ro.eps)


def component_logits(ro: Readout, c: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Frozen-scale readout of an additive component ``c`` ([..., D]) over the readout tokens."""
    return (c.float() * scale * ro.gain.to(c.device)) @ ro.W_U.T.to(c.device)


def token_columns(ro: Readout, ids: list[int]) -> torch.Tensor:
    lookup = {int(t): i for i, t in enumerate(ro.tokens.tolist())}
    return torch.tensor([lookup[t] for t in ids], dtype=torch.long)
