"""Measurements of a trained checkpoint on generator rows: first-token MFR, LDAR by layer, single-head effects."""

from __future__ import annotations


from typing import Iterator, Sequence

from mf_harness.embedded.train.batches import Batch, encode_batch


def first_token_ids(tokenizer, forms: Sequence[str]) -> list[int]:
    """The entity dictionary E as token ids: the first token of each form, bare and after a space."""
    ids: list[int] = []
    for form in forms:
        for variant in (form, " " + form):
            toks = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if toks and toks[0] not in ids:
                ids.append(toks[0])
    return ids


def answer_sides(row: dict) -> tuple[list[str], list[str]]:
    """(compliant forms, competing forms) of a synth row or an mfr doc."""
    if "compliant_answers" in row:
        return list(row["compliant_answers"]), list(row["competing_answers"])
    v = [row["answer_vision"], *row.get("answer_vision_synonyms", [])]
    t = [row["answer_text"], *row.get("answer_text_synonyms", [])]
    return (v, t) if row["follow"] == "vision" else (t, v)


def scope_mask(batch: Batch, scope: str):
    import torch

    B, S = batch.inputs["input_ids"].shape
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b in range(B):
        if scope == "instruction":
            mask[b, batch.instruction[b]] = True
        elif scope == "last":
            mask[b, batch.length[b] - 1] = True
        elif scope == "prompt":
            mask[b, : batch.length[b]] = True
        else:
            raise ValueError(f"scope {scope!r} is not measured here (instruction, last, prompt)")
    return mask


def forward_prompts(model, batch: Batch, spec=None, scope: str = "instruction", capture: bool = False):
    """Forward the prompts (no answer); return (last-position logits [B, V], per-layer residuals or None)."""
    import torch

    from mf_harness.core.arch import geometry, resolve
    from mf_harness.core.hooks import HeadPlan, intervene

    plan = None
    if spec is not None and not spec.is_empty:
        geo = geometry(model)
        plan = HeadPlan.build([spec] * len(batch.rows), scope_mask(batch, spec.scope), geo.num_layers, geo.num_heads)
    states: list = []
    handles = []
    if capture:
        _, layers, _, _ = resolve(model)
        for layer in layers:
            handles.append(layer.register_forward_hook(
                lambda m, a, o: states.append((o[0] if isinstance(o, tuple) else o).detach())))
    try:
        with torch.inference_mode(), intervene(model, plan):
            hidden = model.model(**batch.inputs).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    last = torch.tensor(batch.length) - 1
    with torch.inference_mode():
        logits = model.lm_head(hidden[torch.arange(len(batch.rows)), last]).float()
    return logits, (states if capture else None)


def prompt_batches(processor, rows: Sequence[dict], batch_size: int = 64) -> Iterator[Batch]:
    for i in range(0, len(rows), batch_size):
        yield encode_batch(processor, rows[i : i + batch_size], with_answer=False)


def margins(logits, batch: Batch, tokenizer):
    """Per row: max logit over E_c minus max logit over E_o, and whether the argmax token is in E_c."""
    import torch

    out, follows = [], []
    for b, row in enumerate(batch.rows):
        c, o = answer_sides(row)
        ec, eo = first_token_ids(tokenizer, c), first_token_ids(tokenizer, o)
        out.append(float(logits[b, ec].max() - logits[b, eo].max()))
        follows.append(int(logits[b].argmax()) in ec)
    return torch.tensor(out), torch.tensor(follows)


def first_token_mfr(model, processor, rows: Sequence[dict], spec=None) -> float:
    """Share of rows whose greedy first answer token is a compliant form (a fast proxy of MFR)."""
    hits = []
    for batch in prompt_batches(processor, rows):
        logits, _ = forward_prompts(model, batch, spec)
        hits += margins(logits, batch, processor.tokenizer)[1].tolist()
    return sum(hits) / len(hits)


def ldar_by_layer(model, processor, rows: Sequence[dict], k: int = 3) -> dict[str, list[float]]:
    """LDAR per layer (logit lens) at the instruction tokens and at the last prompt position.

    s_l(i, E) = max over t in E of (W_U . FinalNorm(h_l(i)))_t, with h_l the output of layer l.
    Instruction readout R_l(E): the mean of s_l(i, E) over the k instruction tokens with the
    highest s_l(i, E) (the paper's readout; ``k`` is its free parameter). LDAR_l: share of rows
    whose 1[R_l(E_c) > R_l(E_o)] equals the final decision 1[s(last, E_c) > s(last, E_o)] on the
    output logits. Keys: ``instruction`` (top-k readout), ``instruction_top1`` (k = 1),
    ``instruction_final_token`` (the instruction's last token alone), ``last``.
    """
    import torch

    norm, head = model.model.language_model.norm, model.lm_head
    tok = processor.tokenizer
    scopes = ("instruction", "instruction_top1", "instruction_final_token", "last")
    hits: dict[str, list[list[bool]]] = {s: [] for s in scopes}
    for batch in prompt_batches(processor, rows):
        logits, states = forward_prompts(model, batch, capture=True)
        final = margins(logits, batch, tok)[0] > 0
        for b, row in enumerate(batch.rows):
            c, o = answer_sides(row)
            ec, eo = first_token_ids(tok, c), first_token_ids(tok, o)
            ins, last = batch.instruction[b], batch.length[b] - 1
            per = {s: [] for s in scopes}
            for h in states:
                with torch.inference_mode():
                    lens = head(norm(h[b, ins + [last]])).float()
                sc, so = lens[:, ec].max(-1).values, lens[:, eo].max(-1).values
                si, oi = sc[:-1], so[:-1]
                kk = min(k, len(ins))
                per["instruction"].append(bool(si.topk(kk).values.mean() > oi.topk(kk).values.mean()))
                per["instruction_top1"].append(bool(si.max() > oi.max()))
                per["instruction_final_token"].append(bool(si[-1] > oi[-1]))
                per["last"].append(bool(sc[-1] > so[-1]))
            for s in scopes:
                hits[s].append([x == bool(final[b]) for x in per[s]])
    return {s: [round(sum(r[l] for r in v) / len(v), 4) for l in range(len(v[0]))] for s, v in hits.items()}


def head_effects(model, processor, rows: Sequence[dict], scope: str = "instruction"):
    """[layers, heads]: mean drop of the compliant-vs-competing margin when one head is blocked at ``scope``
    (single-head ablation: the total effect, unlike direct logit attribution)."""
    import torch

    from mf_harness.core.arch import geometry
    from mf_harness.core.spec import InterventionSpec

    geo = geometry(model)
    batches = list(prompt_batches(processor, rows))
    clean = torch.cat([margins(forward_prompts(model, b)[0], b, processor.tokenizer)[0] for b in batches])
    eff = torch.zeros(geo.num_layers, geo.num_heads)
    for layer in range(geo.num_layers):
        for head in range(geo.num_heads):
            spec = InterventionSpec(block=[(layer, head)], scope=scope)
            m = torch.cat([margins(forward_prompts(model, b, spec)[0], b, processor.tokenizer)[0] for b in batches])
            eff[layer, head] = float((clean - m).mean())
    return eff


def ranked_heads(effects) -> list[tuple[int, int]]:
    """Every (layer, head), largest effect first (ties: lower layer, then lower head)."""
    H = effects.shape[1]
    flat = [float(x) for x in effects.flatten()]
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    return [(i // H, i % H) for i in order]


def top_heads(effects, k: int) -> list[tuple[int, int]]:
    """The k heads with the largest effect, in (layer, head) order."""
    return sorted(ranked_heads(effects)[:k])


def bundled_docs(follow: str) -> list[dict]:
    """The bundled ``mfr`` eval set as the task sees it (`mf_harness.tasks.mfr.mfr.process_docs`), PIL images decoded."""
    import datasets

    from mf_harness.tasks.mfr.mfr import process_docs
    from mf_harness.tasks.mfr.mfr_data import bundled_synthetic_path

    ds = datasets.load_dataset("parquet", data_files={"test": str(bundled_synthetic_path())}, split="test")
    return [dict(d) for d in process_docs(ds, follow)]


def random_heads(k: int, seed: int, exclude: Sequence[tuple[int, int]], layers: int, heads: int):
    """k heads drawn uniformly from the heads not in ``exclude`` (the random control)."""
    import random

    pool = [(l, h) for l in range(layers) for h in range(heads) if (l, h) not in set(map(tuple, exclude))]
    return sorted(random.Random(f"mf-harness-random-heads:{seed}").sample(pool, k))
