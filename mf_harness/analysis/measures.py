"""The paper's measures, composed from capture + readout (see `lens`), knockout and the hooks.

* **LDAR** (latent decision alignment rate) at layer l: the share of samples whose readout
  already prefers the side of the model's final decision,
  mean_n 1[(R_l(E_c) > R_l(E_o)) == final_n]. The final decision is read from the final
  logits at the last prompt position: compliant when max_{E_c} logit > max_{E_o} logit
  (the next-token decision; samples are split into successes and failures by it).
  Reported at the instruction tokens (top-k readout) and at the last prompt position.
* **Margin attribution** (direct logit attribution, the paper's Eq. 9): head h of layer l
  contributes the frozen-scale readout of W_O[:, h] z_h to the margin of the readout layer
  (default: the last layer), on the positions and tokens the full readout selected.
  Per layer, the attention output a_l and MLP output m_l are credited against M_l.
* **Single-head ablation** (total effect): block one head at a scope and measure the drop
  of the final margin max_{E_c} - max_{E_o} at the last position. DLA measures the direct
  path only; heads that write the answer into the instruction tokens for later layers to
  read show up in ablation, not in DLA, so both rankings are offered.
* **Attention knockout** (Geva et al. 2023): cut the attention edges from a source token set
  to a destination set, for every head, in a window of layers centred on l (window is a
  parameter; Geva et al. used 9). **NSSD**: with p, p' the next-token distributions at the
  last position before and after the cut, restricted to E_c u E_o and renormalised,
  NSSD = sign(p'(E_c) - p(E_c)) * KL(p || p'). Negative: the cut pathway carried the
  instruction-compliant answer. Zero when nothing changes.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
from tqdm import tqdm

from mf_harness.analysis.lens import (
    capture,
    component_logits,
    lens_logits,
    readout_weights,
    rms_scale,
    token_columns,
)
from mf_harness.analysis.samples import Sample, encode_samples
from mf_harness.core.arch import geometry, resolve
from mf_harness.core.hooks import HeadPlan, find_cache, intervene
from mf_harness.core.spec import Head, InterventionSpec
from mf_harness.errors import MfHarnessError

__all__ = ["lens_and_attribution", "ldar_table", "ablation_effects", "cut_edges", "knockout_nssd", "nssd",
           "final_margins"]


def _batches(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i: i + n]


def _positions(samples, offsets):
    """Instruction positions followed by the last position, per row (absolute)."""
    out = []
    for s, o in zip(samples, offsets):
        out.append(torch.tensor([o + p for p in s.token_sets["instruction"]] + [o + s.length - 1]))
    return out


def lens_and_attribution(lm, samples: Sequence[Sample], k: int = 3, batch_size: int = 8,
                         readout_layer: int = -1, progress: bool = True) -> dict:
    """One captured forward per batch; returns tidy rows for LDAR, layer attribution and head attribution.

    ``rows_lens``: sample_id, follow, layer, site (instruction: the top-k readout; instruction_final: the
    instruction's last token alone; last), R_c, R_o, margin, agree, success.
    ``rows_layers``: sample_id, follow, layer, margin, attn, mlp (contributions to M_l at the instruction).
    ``rows_heads``: sample_id, follow, site, layer, head, contribution (to the readout layer's margin, at
    the instruction tokens and at the last position).
    """
    model = lm.model
    geo = geometry(model)
    L = geo.num_layers
    rl = readout_layer % L
    HL = geo.head_layers  # layers with heads (not a hybrid decoder's linear-attention layers nor KV-shared ones)
    W_O = [resolve(model)[3][l].weight.detach().float() for l in HL]
    rows_lens, rows_layers, rows_heads = [], [], []
    for batch in tqdm(list(_batches(samples, batch_size)), desc="lens+attribution", disable=not progress):
        enc, offsets = encode_samples(lm, batch)
        pos = _positions(batch, offsets)
        tokens = sorted({t for s in batch for t in s.compliant_ids + s.competing_ids})
        ro = readout_weights(model, tokens)
        tr = capture(model, enc, pos, with_logits=True)
        dev = tr.resid[0].device
        U = ro.W_U.to(dev) * ro.gain.to(dev)  # [T, D]
        # per layer [T, H, d_l]: head widths may differ per layer (Gemma 4)
        UW = [(U @ w.to(dev)).view(-1, geo.num_heads, geo.width(l)) for l, w in zip(HL, W_O)]
        layers_idx = torch.arange(L, device=dev)[:, None]
        for b, s in enumerate(batch):
            n_ins = len(s.token_sets["instruction"])
            ec, eo = token_columns(ro, s.compliant_ids).to(dev), token_columns(ro, s.competing_ids).to(dev)
            final = tr.logits[b, n_ins, ro.tokens.to(tr.logits.device)].float()
            final_comp = bool(final[ec.to(final.device)].max() > final[eo.to(final.device)].max())
            resid = torch.stack([t[b] for t in tr.resid])  # [L, P, D]
            full = lens_logits(ro, resid)  # [L, P, T]: the logit lens of every layer at once
            scale = rms_scale(ro, resid)  # [L, P, 1]
            comps = {name: component_logits(ro, torch.stack([t[b] for t in site_list]), scale)
                     for name, site_list in (("attn", tr.attn), ("mlp", tr.mlp))}
            heads = torch.stack([torch.einsum("phd,thd->pht", tr.z[l][b].float(), uw) for l, uw in zip(HL, UW)]) \
                * scale[rl][None, :, :, None]  # [L_h, P, H, T] at layer rl
            for site, rows, kk in (("instruction", range(n_ins), k), ("instruction_final", range(n_ins - 1, n_ins), 1),
                                   ("last", range(n_ins, n_ins + 1), 1)):
                valid = torch.zeros(full.shape[1], dtype=torch.bool, device=dev)
                valid[list(rows)] = True
                kk = min(kk, len(rows))
                sel = {}
                for side, cols in (("c", ec), ("o", eo)):
                    sv, arg = full[:, :, cols].max(-1)  # s_l(i, E) and its argmax column: [L, P]
                    sv = sv.masked_fill(~valid, float("-inf"))
                    top = torch.topk(sv, kk, dim=-1).indices  # [L, kk] top-k positions per layer
                    sel[side] = (sv.gather(1, top).mean(-1), top, cols[arg.gather(1, top)])  # R_l, positions, tokens
                margin = sel["c"][0] - sel["o"][0]  # [L]
                for l in range(L):
                    m = float(margin[l])
                    rows_lens.append(dict(sample_id=s.sample_id, follow=s.follow, layer=l, site=site,
                                          R_c=float(sel["c"][0][l]), R_o=float(sel["o"][0][l]), margin=m,
                                          agree=(m > 0) == final_comp, success=final_comp))
                if site == "instruction_final":  # a readout only (LDAR at the instruction's last token)
                    continue
                if site == "instruction":
                    contrib = {name: (cl[layers_idx, sel["c"][1], sel["c"][2]].mean(-1)
                                      - cl[layers_idx, sel["o"][1], sel["o"][2]].mean(-1)).tolist()
                               for name, cl in comps.items()}
                    for l in range(L):
                        rows_layers.append(dict(sample_id=s.sample_id, follow=s.follow, layer=l, margin=float(margin[l]),
                                                attn=contrib["attn"][l], mlp=contrib["mlp"][l]))
                # per-head DLA to the readout layer's margin, on the positions/tokens that readout selected
                (_, pc, tc), (_, po, to) = (sel["c"][0], sel["c"][1][rl], sel["c"][2][rl]), \
                    (sel["o"][0], sel["o"][1][rl], sel["o"][2][rl])
                hc = (heads[:, pc, :, tc].mean(0) - heads[:, po, :, to].mean(0)).tolist()  # [L_h, H]
                for j, l in enumerate(HL):
                    for hh in range(geo.num_heads):
                        rows_heads.append(dict(sample_id=s.sample_id, follow=s.follow, site=site, layer=l, head=hh,
                                               contribution=hc[j][hh]))
    return {"lens": rows_lens, "layers": rows_layers, "heads": rows_heads}


def ldar_table(rows_lens):
    """LDAR by (follow, site, layer), over all samples and split by success / failure."""
    import pandas as pd

    df = pd.DataFrame(rows_lens)
    out = []
    for (follow, site, layer), g in df.groupby(["follow", "site", "layer"]):
        for subset, gg in (("all", g), ("success", g[g.success]), ("failure", g[~g.success])):
            if len(gg):
                out.append(dict(follow=follow, site=site, layer=layer, subset=subset, ldar=float(gg.agree.mean()),
                                margin_mean=float(gg.margin.mean()), margin_std=float(gg.margin.std(ddof=0)),
                                n=len(gg)))
    return pd.DataFrame(out)


def _scope_mask(batch, offsets, shape, scope: str) -> torch.Tensor:
    masks = torch.zeros(shape, dtype=torch.bool)
    key = {"instruction": "instruction", "prompt_text": "prompt_text", "last": "last"}.get(scope)
    for b, (s, o) in enumerate(zip(batch, offsets)):
        pos = s.token_sets[key] if key else list(range(s.length))
        masks[b, [o + p for p in pos]] = True
    return masks


def _margins(lm, batch, enc, offsets, spec: InterventionSpec | None) -> list[torch.Tensor]:
    model = lm.model
    plan = None
    if spec is not None and not spec.is_empty:
        geo = geometry(model)
        plan = HeadPlan.build([spec] * len(batch), _scope_mask(batch, offsets, enc["input_ids"].shape, spec.scope),
                              geo.num_layers, geo.num_heads)
    device = next(model.parameters()).device
    feed = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in enc.items()}
    with torch.inference_mode(), intervene(model, plan):
        logits = model(**feed).logits[:, -1].float()
    return [logits[b, s.compliant_ids].max() - logits[b, s.competing_ids].max() for b, s in enumerate(batch)]


def final_margins(lm, samples: Sequence[Sample], spec: InterventionSpec | None = None,
                  batch_size: int = 8) -> torch.Tensor:
    """max_{E_c} - max_{E_o} of the final logits at the last prompt position, per sample."""
    out = []
    for batch in _batches(samples, batch_size):
        enc, offsets = encode_samples(lm, batch)
        out += _margins(lm, batch, enc, offsets, spec)
    return torch.stack(out).cpu()


def ablation_effects(lm, samples: Sequence[Sample], scope: str = "instruction", batch_size: int = 8,
                     heads: Sequence[Head] | None = None, progress: bool = True, share_prefix: bool = True,
                     max_rows: int = 64) -> list[dict]:
    """Total effect of each head: drop of the final margin when that head alone is blocked at ``scope``.

    With ``share_prefix`` (and where it applies: `mf_harness.analysis.attribution.prefix_shared_ablation`)
    each sample's prefix before the scope runs once and the heads are rows of one forward over the suffix;
    otherwise one forward per head per batch (each batch is encoded once). Same numbers either way.
    """
    geo = geometry(lm.model)
    heads = list(heads) if heads is not None else [Head(l, h) for l in geo.head_layers
                                                    for h in range(geo.num_heads)]
    if share_prefix:
        from mf_harness.analysis.attribution import prefix_shared_ablation

        shared = prefix_shared_ablation(lm, samples, scope, heads, max_rows=max_rows, progress=progress)
        if shared is not None:
            return shared
    rows = []
    batches = list(_batches(samples, batch_size))
    bar = tqdm(total=len(batches) * len(heads), desc=f"single-head ablation at {scope}", disable=not progress)
    for batch in batches:
        enc, offsets = encode_samples(lm, batch)
        clean = _margins(lm, batch, enc, offsets, None)
        for head in heads:
            m = _margins(lm, batch, enc, offsets, InterventionSpec(block=[head], scope=scope))
            for s, c, a in zip(batch, clean, m):
                rows.append(dict(sample_id=s.sample_id, follow=s.follow, layer=head.layer, head=head.head,
                                 effect=float(c - a)))
            bar.update(1)
    bar.close()
    return rows


def attention_layers(model) -> set[int]:
    """Layers whose token mixing is attention (edges a knockout can cut): all but a hybrid decoder's
    linear-attention layers, KV-shared layers included (no heads to edit, but attention of their own)."""
    row, decoder_layers, attns, _ = resolve(model)
    return {i for i, a in enumerate(attns) if a is not None or getattr(decoder_layers[i], row.attn, None) is not None}


@contextmanager
def cut_edges(model, layers: Iterable[int], dest: Sequence[torch.Tensor], src: Sequence[torch.Tensor],
              row_layers: Sequence[range] | None = None):
    """Remove attention edges src -> dest (absolute positions per row) for every head in ``layers``
    (per row: in the layers of ``row_layers[b]`` only, when given).

    Edits the ``attention_mask`` each attention module receives: the float mask (eager) gets
    the dtype's minimum, the boolean mask (sdpa) gets False, and a missing mask (sdpa without
    padding) is rebuilt as the causal mask first. A position's edge to itself is kept, so no
    query loses every key.
    """
    row, decoder_layers, attns, _ = resolve(model)
    layers = list(layers)
    attending = attention_layers(model)
    for l in layers:
        if l not in attending:
            raise MfHarnessError(
                f"knockout: layer {l} mixes tokens without attention (a linear-attention layer of a hybrid decoder: "
                f"a recurrent state, no edges to cut); layers with attention: {', '.join(map(str, sorted(attending)))}")
    B = len(dest)
    handles = []
    state = {}

    def cut_matrix(q_len, k_len, offset, device, layer):
        C = torch.zeros(B, q_len, k_len, dtype=torch.bool, device=device)
        for b in range(B):
            if row_layers is not None and layer not in row_layers[b]:
                continue
            d = dest[b].to(device)
            d = d[(d >= offset) & (d < offset + q_len)] - offset
            if d.numel() == 0 or src[b].numel() == 0:
                continue
            s = src[b].to(device)
            s = s[s < k_len]
            C[b, d[:, None], s[None, :]] = True
            C[b, d, d + offset] = False  # keep self edges
        return C

    def pre(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        Bq, q_len = h.shape[:2]
        cache = find_cache(args, kwargs)
        if cache is None:
            offset = 0
        elif getattr(module, "is_kv_shared_layer", False):
            # a KV-shared layer (Gemma 4) keeps no cache: it attends over an earlier layer's keys, this chunk's
            # included, which that layer has already added to the cache in this forward
            offset = int(cache.get_seq_length()) - q_len
        else:
            offset = int(cache.get_seq_length(module.layer_idx))
        k_len = offset + q_len
        mask = kwargs.get("attention_mask")
        C = cut_matrix(q_len, k_len, offset, h.device, module.layer_idx)
        if not C.any():
            return None
        if mask is None:
            qpos = torch.arange(offset, k_len, device=h.device)[:, None]
            kpos = torch.arange(k_len, device=h.device)[None, :]
            mask = (kpos <= qpos)[None, None].expand(Bq, 1, q_len, k_len).clone()
        else:
            mask = mask.clone()
            if mask.shape[0] != Bq:
                mask = mask.expand(Bq, *mask.shape[1:]).clone()
        m = mask[..., :k_len]
        if m.dtype == torch.bool:
            m[C[:, None]] = False
        else:
            m[C[:, None]] = torch.finfo(m.dtype).min
        kwargs["attention_mask"] = mask
        state["cut"] = state.get("cut", 0) + int(C.sum())
        return args, kwargs

    try:
        for l in layers:  # a KV-shared layer (Gemma 4) has no heads to edit, but its own attention edges
            attn = attns[l] if attns[l] is not None else getattr(decoder_layers[l], row.attn)
            handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
        yield state
    finally:
        for h in handles:
            h.remove()


def nssd(p_logits: torch.Tensor, q_logits: torch.Tensor, ec: Sequence[int], eo: Sequence[int]) -> float:
    """NSSD of one sample from the clean (p) and knocked-out (q) next-token logits."""
    sub = sorted(set(ec) | set(eo))
    idx = torch.tensor(sub)
    is_c = torch.tensor([t in set(ec) for t in sub])
    p = torch.softmax(p_logits[idx].double(), -1)
    q = torch.softmax(q_logits[idx].double(), -1)
    kl = float((p * (p.log() - q.log())).sum())
    diff = float(q[is_c].sum() - p[is_c].sum())
    sign = 0.0 if diff == 0 else math.copysign(1.0, diff)
    return sign * kl


def knockout_nssd(lm, samples: Sequence[Sample], src: str, dest: str, window: int = 9, batch_size: int = 8,
                  layers: Sequence[int] | None = None, progress: bool = True, share_prefix: bool = True) -> list[dict]:
    """NSSD and decision change per sample for a knockout src -> dest centred on each layer.

    Cutting edges into ``dest`` leaves every position before its first token unchanged, so where that
    lies after the image (``dest`` = instruction, last, ...) each sample's prefix runs once and every
    window is a row of one batched forward over the suffix
    (`mf_harness.analysis.attribution.prefix_shared_knockout`); elsewhere whole prompts in batches."""
    from mf_harness.analysis.attribution import prefix_shared_knockout

    model = lm.model
    L = geometry(model).num_layers
    attending = attention_layers(model)
    centers = list(layers) if layers is not None else list(range(L))
    half = window // 2
    spans = [range(max(0, c - half), min(L, c + half + 1)) for c in centers]
    # a window cuts the edges of its layers with attention; a hybrid decoder's linear-attention layers in it have
    # none (a recurrent state) and stay as they are. A window without any attention layer measures nothing: not
    # reported where the centres are every layer, an error where they were asked for.
    keep = [(c, w) for c, w in zip(centers, spans) if set(w) & attending]
    if len(keep) < len(centers) and layers is not None:
        c = next(c for c, w in zip(centers, spans) if not set(w) & attending)
        raise MfHarnessError(f"knockout: the window of {window} around layer {c} has no attention layer (it mixes "
                             f"tokens through linear attention only); layers with attention: "
                             f"{', '.join(map(str, sorted(attending)))}")
    centers = [c for c, _ in keep]
    windows = [[l for l in w if l in attending] for _, w in keep]
    label = {c: f"{w.start}-{w.stop - 1}" for c, w in keep}
    rows = []

    def add(s, clean, cut, c):
        before = bool(clean[s.compliant_ids].max() > clean[s.competing_ids].max())
        after = bool(cut[s.compliant_ids].max() > cut[s.competing_ids].max())
        rows.append(dict(sample_id=s.sample_id, follow=s.follow, src=src, dest=dest, layer=c, window=label[c],
                         nssd=nssd(clean, cut, s.compliant_ids, s.competing_ids),
                         compliant_before=before, compliant_after=after))

    rest = []
    for s in tqdm(samples, desc=f"knockout {src}->{dest} (prefix shared)", disable=not progress or not share_prefix):
        got = prefix_shared_knockout(lm, s, src, dest, windows) if share_prefix else None
        if got is None:
            rest.append(s)
            continue
        cuts = [(clean, row) for clean, rows_ in got for row in rows_]
        for c, (clean, row) in zip(centers, cuts):
            add(s, clean, row, c)
    device = next(model.parameters()).device
    for batch in tqdm(list(_batches(rest, batch_size)), desc=f"knockout {src}->{dest}", disable=not progress or not rest):
        enc, offsets = encode_samples(lm, batch)
        feed = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in enc.items()}
        d = [torch.tensor([o + p for p in s.token_sets[dest]], dtype=torch.long) for s, o in zip(batch, offsets)]
        sp = [torch.tensor([o + p for p in s.token_sets[src]], dtype=torch.long) for s, o in zip(batch, offsets)]
        with torch.inference_mode():
            clean = model(**feed).logits[:, -1].float()
        for c, win in zip(centers, windows):
            with torch.inference_mode(), cut_edges(model, win, d, sp):
                cut = model(**feed).logits[:, -1].float()
            for b, s in enumerate(batch):
                add(s, clean[b], cut[b], c)
    return rows
