"""Head rankings near the physical limit: prefix-shared exact ablation, and attribution patching.

**Prefix-shared exact ablation.** Blocking a head at scope ``instruction`` (or ``last``) leaves every
position before the first intervened token unchanged, so per sample the prefix ``[0, p)`` (system
prompt, image, context) runs once into a KV cache, vision tower included, and every head's ablation
is a row of a batched forward over the suffix ``[p, L)`` only (`mf_harness.lmms.fast_engine.MultiSpecRunner`
does the same for generate). Heads go layer by layer: the layers below a head's layer compute the
same suffix for every row, so they run once, and so does the head's own layer up to its attention
output: the rows fork at that layer's ``o_proj`` input, where the block acts. Above it the rows'
cache holds the prefix's keys and values once (`mf_harness.core.shared_prefix`). The margins
equal one full forward per head (tested to 1e-5). It applies where the fast engine's prefix sharing
does (`mf_harness.lmms.fast_engine.prefix_sharable`: families with 3-D positions, Qwen and GLM-4V,
not hybrid decoders; a scope that starts after the last image token); elsewhere
`mf_harness.analysis.measures.ablation_effects` runs its per-head forwards.

**Attribution patching** (Nanda 2023; Kramar et al. 2024, AtP*): one forward and one backward give
each head's first-order estimate of the effect of zeroing it at the scope's positions,

    effect_h ~= sum over scope positions i of  grad_{z_h(i)} M . z_h(i)

where z_h(i) is head h's output at the ``o_proj`` input (the site a block multiplies by 0) and M the
final margin max_{E_c} - max_{E_o} at the last position (zeroing changes z by -z, so the margin drops
by about grad . z). Cheap and approximate: `discover --method atp` reports its Spearman correlation
with exact ablation where both are computed.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from tqdm import tqdm

from mf_harness.analysis.samples import Sample, encode_samples
from mf_harness.core.arch import geometry, resolve
from mf_harness.core.spec import Head
from mf_harness.lmms.fast_engine import PromptPrefix, prefix_sharable

__all__ = ["prefix_shared_ablation", "prefix_shared_knockout", "attribution_patching", "SCOPE_SETS"]

SCOPE_SETS = {"instruction": "instruction", "prompt_text": "prompt_text", "last": "last"}


def _margin(logits: torch.Tensor, s: Sample) -> torch.Tensor:
    return logits[..., s.compliant_ids].max(-1).values - logits[..., s.competing_ids].max(-1).values


def _prefix_of(lm, s: Sample, p: int, grad: bool = False):
    """`PromptPrefix` of one sample before ``p``, or None where it cannot be shared (``p`` inside the image,
    padding, a family that is not `prefix_sharable`)."""
    if not prefix_sharable(lm):
        return None
    enc = lm.codec.encode([s.rendered], [s.images])
    if p <= lm.codec.last_image_position(enc["input_ids"][0]) or not bool(enc["attention_mask"].all()):
        return None
    return PromptPrefix(lm, enc.to(lm.device), p, grad)


def _fork_blocked(heads: Sequence[int], rel: torch.Tensor, head_dim: int):
    """Forward pre-hook of one layer's ``o_proj``: the clean row's per-head outputs in, one row per head out,
    row r with head ``heads[r]`` zeroed at the suffix positions ``rel`` (what a block does at that site)."""
    def pre(module, args):
        x = args[0]
        if x.shape[0] != 1:
            raise RuntimeError(f"the fork expects the one clean row at o_proj, got {x.shape[0]} rows")
        rows = x.expand(len(heads), -1, -1).clone()
        for r, h in enumerate(heads):
            rows[r, rel, h * head_dim:(h + 1) * head_dim] *= 0
        return (rows, *args[1:])
    return pre


def prefix_shared_ablation(lm, samples: Sequence[Sample], scope: str, heads: Sequence[Head], max_rows: int = 64,
                           progress: bool = True) -> list[dict] | None:
    """Rows as `ablation_effects` returns them, or None when prefix sharing does not apply here.

    Per sample: the prefix runs once into a KV cache; the unintervened suffix runs once (the clean
    margin); then the heads go layer by layer, each head a row. Up to a head's layer every row is
    the clean run, so the suffix goes through as one row, and at that layer the attention too (the
    block acts after it): the rows fork at the layer's ``o_proj`` input, each with its head zeroed
    at the scope's positions, and carry on through the layers above, whose cache holds the prefix
    once for all rows (`mf_harness.core.shared_prefix`; repeated per row where the model's attention
    implementation does not allow that). Only the final position's logits are computed."""
    from mf_harness.core.shared_prefix import continue_prefix, shared_prefix_attention, supports_shared_prefix

    if scope not in SCOPE_SETS or not prefix_sharable(lm):
        return None
    model = lm.model
    o_projs = resolve(model)[3]
    geo = geometry(model)
    share_kv = supports_shared_prefix(model)
    by_layer: dict[int, list[Head]] = {}
    for h in heads:
        by_layer.setdefault(h.layer, []).append(h)
    rows: list[dict] = []
    bar = tqdm(total=len(samples) * len(heads), desc=f"single-head ablation at {scope} (prefix shared)",
               disable=not progress)
    for s in samples:
        scope_pos = s.token_sets[SCOPE_SETS[scope]]
        p = min(scope_pos)
        pre = _prefix_of(lm, s, p)
        if pre is None:
            return None  # the scope starts inside the image: nothing to share
        rel = torch.tensor([q - p for q in scope_pos], device=lm.device)
        with torch.inference_mode():
            def run(cache):  # one row in (the fork at o_proj makes the rows)
                return _margin(pre.forward(cache).float(), s).cpu()

            clean = run(continue_prefix(pre.cache, model.config, 1, share=False))[0]
            for layer, group in sorted(by_layer.items()):
                for start in range(0, len(group), max_rows):
                    chunk = group[start:start + max_rows]
                    R = len(chunk)
                    cache = continue_prefix(pre.cache, model.config, R, from_layer=layer + 1, share=share_kv)
                    hook = o_projs[layer].register_forward_pre_hook(_fork_blocked([h.head for h in chunk], rel,
                                                                                  geo.width(layer)))
                    try:
                        with shared_prefix_attention(model, cache) if share_kv else contextlib.nullcontext():
                            m = run(cache)
                    finally:
                        hook.remove()
                    if m.shape[0] != R:
                        raise RuntimeError(f"the fork at layer {layer} gave {m.shape[0]} rows, not {R}")
                    for h, a in zip(chunk, m):
                        rows.append(dict(sample_id=s.sample_id, follow=s.follow, layer=h.layer, head=h.head,
                                         effect=float(clean - a)))
                    bar.update(R)
    bar.close()
    return rows


def prefix_shared_knockout(lm, s: Sample, src: str, dest: str, windows: Sequence[range], max_rows: int = 64
                           ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Final-position logits of one sample with the edges ``src -> dest`` cut in each window, per chunk of
    windows: (clean [V], cut [windows in the chunk, V]), the clean row run in the same batch (a cut that
    removes nothing gives the clean logits bit for bit); or None where prefix sharing does not apply
    (``dest`` starts inside the image, or not `prefix_sharable`). Positions before ``dest``'s first token are
    unchanged by the cut: the prefix runs once into a KV cache and each window is a row over the suffix,
    with the prefix's cache repeated per row (the cut edits each row's attention mask;
    `mf_harness.analysis.measures.cut_edges`)."""
    from mf_harness.analysis.measures import cut_edges
    from mf_harness.core.shared_prefix import continue_prefix

    if not s.token_sets.get(dest):
        return None
    pre = _prefix_of(lm, s, min(s.token_sets[dest]))
    if pre is None:
        return None
    model = lm.model
    d = torch.tensor(s.token_sets[dest], dtype=torch.long)
    sp = torch.tensor(s.token_sets[src], dtype=torch.long)
    cuts = []
    with torch.inference_mode():
        def run(R, cut):
            with cut:
                return pre.forward(continue_prefix(pre.cache, model.config, R, share=False), R).float()

        for start in range(0, len(windows), max_rows - 1):
            chunk = [range(0)] + list(windows[start:start + max_rows - 1])  # row 0: clean, in the same batch
            layers = sorted({l for w in chunk for l in w})
            logits = run(len(chunk), cut_edges(model, layers, [d] * len(chunk), [sp] * len(chunk), row_layers=chunk))
            cuts.append((logits[0], logits[1:]))
    return cuts


class _Grads:
    """Inside the block: gradients flow from the token embeddings on (none into the weights), and every
    ``o_proj`` input keeps its gradient in ``z``."""

    def __init__(self, model, num_layers: int):
        self.model, self.z = model, [None] * num_layers

    def __enter__(self):
        def keep(i):
            def pre(module, args):
                args[0].retain_grad()  # the graph runs from the embeddings on: every path to the margin counts
                self.z[i] = args[0]
            return pre

        def leaf(module, args, out):
            return out.detach().requires_grad_(True)

        self.params = [(q, q.requires_grad) for q in self.model.parameters()]
        for q, _ in self.params:
            q.requires_grad_(False)
        self.handles = [self.model.get_input_embeddings().register_forward_hook(leaf)]
        self.handles += [o.register_forward_pre_hook(keep(i)) for i, o in enumerate(resolve(self.model)[3])
                         if o is not None]  # (None: a hybrid decoder's layer without heads)
        self.grad = torch.enable_grad()
        self.grad.__enter__()
        return self

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        for h in self.handles:
            h.remove()
        for q, flag in self.params:
            q.requires_grad_(flag)


def _atp_prefix_shared(lm, s: Sample, scope: str) -> torch.Tensor | None:
    """[layers, heads] AtP of one sample with the prefix before the scope run once without gradients (nothing
    before the scope lies on a path from a scope position to the margin), or None where that cannot apply."""
    if scope not in SCOPE_SETS:
        return None
    scope_pos = s.token_sets[SCOPE_SETS[scope]]
    p = min(scope_pos)
    pre = _prefix_of(lm, s, p, grad=True)
    if pre is None:
        return None
    model = lm.model
    geo = geometry(model)
    with _Grads(model, geo.num_layers) as g:
        _margin(pre.forward(pre.cache)[0].float(), s).backward()
        rel = torch.tensor([q - p for q in scope_pos])
    return torch.stack([(x.grad[0, rel] * x[0, rel]).detach().float().view(len(rel), geo.num_heads, geo.width(l))
                        .sum(dim=(0, 2)).cpu() for l, x in enumerate(g.z)])  # prefix sharing: never a hybrid decoder


def attribution_patching(lm, samples: Sequence[Sample], scope: str = "instruction", batch_size: int = 8,
                         progress: bool = True, share_prefix: bool = True) -> list[dict]:
    """First-order effect of zeroing each head at ``scope`` (see the module doc): rows as `ablation_effects`.

    Where the fast engine's prefix sharing applies, per sample the prefix before the scope runs once without
    gradients and the forward and backward cover the suffix only; elsewhere batches of whole prompts."""
    model = lm.model
    geo = geometry(model)
    key = SCOPE_SETS.get(scope)
    rows: list[dict] = []
    rest = []
    for s in tqdm(samples, desc=f"attribution patching at {scope}", disable=not progress):
        eff = _atp_prefix_shared(lm, s, scope) if share_prefix else None
        if eff is None:
            rest.append(s)
            continue
        for layer in range(geo.num_layers):
            for h in range(geo.num_heads):
                rows.append(dict(sample_id=s.sample_id, follow=s.follow, layer=layer, head=h,
                                 effect=float(eff[layer, h])))
    batches = [rest[i:i + batch_size] for i in range(0, len(rest), batch_size)]
    for batch in batches:
        enc, offsets = encode_samples(lm, batch)
        S = enc["input_ids"].shape[1]
        mask = torch.zeros(len(batch), S, dtype=torch.bool)
        for b, (s, o) in enumerate(zip(batch, offsets)):
            pos = s.token_sets[key] if key else list(range(s.length))
            mask[b, [o + q for q in pos]] = True
        device = next(model.parameters()).device
        feed = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in enc.items()}
        with _Grads(model, geo.num_layers) as g:
            logits = model(**feed, logits_to_keep=1).logits[:, -1].float()
            sum(_margin(logits[b], s) for b, s in enumerate(batch)).backward()
        z = g.z
        m = mask.to(device)[..., None].float()
        for layer in geo.head_layers:
            x = z[layer]
            # per head: sum over the scope's positions and the head's dimensions of grad * activation
            contrib = (x.grad * x).detach().float() * m  # [B, S, H * d]
            per_head = contrib.view(len(batch), S, geo.num_heads, geo.width(layer)).sum(dim=(1, 3)).cpu()
            for b, s in enumerate(batch):
                for h in range(geo.num_heads):
                    rows.append(dict(sample_id=s.sample_id, follow=s.follow, layer=layer, head=h,
                                     effect=float(per_head[b, h])))
    return rows
