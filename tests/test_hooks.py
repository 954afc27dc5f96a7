"""Golden tests of the per-head hooks on tiny real Qwen2-VL / Qwen2.5-VL models."""

import pytest
import torch
from PIL import Image

from conftest import load
from mf_harness.core.arch import ARCH, geometry, resolve
from mf_harness.core.hooks import HeadPlan, active_handles, intervene
from mf_harness.core.spec import InterventionSpec


def _inputs(processor, texts, sizes=((56, 56), (84, 56))):
    # the image depends on the text only, so a row looks the same alone and in a batch
    images = [Image.new("RGB", s, (7 * len(t) % 256, 200 - 3 * len(t) % 200, 90)) for t, s in zip(texts, sizes)]
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}] for t in texts]
    rendered = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return processor(text=rendered, images=images, padding=True, padding_side="left", return_tensors="pt")


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _capture_oproj(model, layer):
    """Record the o_proj input as the model computes it (before any intervention) and its output."""
    _, _, _, oprojs = resolve(model)
    rec = {"in": [], "out": []}
    h1 = oprojs[layer].register_forward_pre_hook(lambda m, a: rec["in"].append(a[0].detach().clone()))
    h2 = oprojs[layer].register_forward_hook(lambda m, a, o: rec["out"].append(o.detach().clone()))
    return rec, (h1, h2)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_coefficient_one_is_bit_exact(tiny_dir, attn):
    model, proc = load(tiny_dir, attn)
    inp = _inputs(proc, ["what colour is it?", "a longer question about the shape here"])
    geo = geometry(model)
    with torch.no_grad():
        clean = model(**inp).logits
        spec = InterventionSpec(amplify=[(l, h) for l in range(geo.num_layers) for h in range(geo.num_heads)],
                                coefficient=1.0000001)  # non-empty, so hooks are registered
        mask = torch.ones_like(inp["attention_mask"], dtype=torch.bool)
        plan = HeadPlan.build([spec, spec], mask, geo.num_layers, geo.num_heads)
        for c in plan.coef.values():
            c.fill_(1.0)
        with intervene(model, plan) as handles:
            assert len(handles) == 2 * geo.num_layers + 1  # per layer: attention + o_proj; one on the text decoder
            out = model(**inp).logits
    assert torch.equal(clean, out)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_block_subtracts_exactly_the_head_contribution_at_scope_positions(tiny_dir, attn):
    model, proc = load(tiny_dir, attn)
    inp = _inputs(proc, ["what colour is it?", "a longer question about the shape here"])
    geo = geometry(model)
    layer, head, d = 1, 2, geo.head_dim
    B, S = inp["input_ids"].shape
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[0, [S - 3, S - 5]] = True
    mask[1, [S - 1, S - 8, S - 9]] = True
    spec = InterventionSpec(block=[(layer, head)])
    plan = HeadPlan.build([spec, InterventionSpec(block=[(layer, head)])], mask, geo.num_layers, geo.num_heads)
    rec_clean, hs = _capture_oproj(model, layer)
    with torch.no_grad():
        clean_logits = model(**inp).logits
    for h in hs:
        h.remove()
    rec, hs = _capture_oproj(model, layer)
    with torch.no_grad(), intervene(model, plan):
        logits = model(**inp).logits
    for h in hs:
        h.remove()
    z = rec_clean["in"][0]  # [B, S, heads*d], identical in both runs (layer is upstream-clean)
    assert torch.equal(z, rec["in"][0])
    W = resolve(model)[3][layer].weight  # [hidden, heads*d]
    contribution = z[..., head * d:(head + 1) * d] @ W[:, head * d:(head + 1) * d].T
    expected = rec_clean["out"][0] - contribution * mask[..., None]
    got = rec["out"][0]
    assert torch.allclose(got[mask], expected[mask], atol=1e-6, rtol=0)
    # every other position of that layer is bit-identical
    assert torch.equal(got[~mask], rec_clean["out"][0][~mask])
    # and the intervention really changed the model's output downstream
    assert not torch.allclose(logits[mask], clean_logits[mask])
    # real (non-padding) positions before the first intervened position are untouched (causality)
    first = int(inp["attention_mask"][0].nonzero()[0])
    assert torch.equal(logits[0, first: S - 5], clean_logits[0, first: S - 5])


def test_amplify_multiplies_the_head_slice(tiny_qwen25_dir):
    model, proc = load(tiny_qwen25_dir)
    inp = _inputs(proc, ["what colour is it?"])
    geo = geometry(model)
    layer, head, d = 2, 1, geo.head_dim
    S = inp["input_ids"].shape[1]
    mask = torch.zeros(1, S, dtype=torch.bool)
    mask[0, -4:] = True
    plan = HeadPlan.build([InterventionSpec(amplify=[(layer, head)], coefficient=10)], mask, geo.num_layers,
                          geo.num_heads)
    rec, hs = _capture_oproj(model, layer)
    with torch.no_grad(), intervene(model, plan):
        model(**inp)
    for h in hs:
        h.remove()
    z = rec["in"][0].clone()
    z[0, -4:, head * d:(head + 1) * d] *= 10
    W = resolve(model)[3][layer].weight
    assert torch.allclose(rec["out"][0], z @ W.T, atol=1e-5)


def _prompt(proc, text, size):
    return _inputs(proc, [text], sizes=(size,))


def test_left_padded_batch_equals_single_rows(tiny_qwen25_dir):
    model, proc = load(tiny_qwen25_dir)
    texts = ["what colour is it?", "a much longer question about the shape in the image here"]
    sizes = ((56, 56), (84, 56))
    geo = geometry(model)
    spec = InterventionSpec(block=[(1, 0), (2, 3), (3, 1)])
    batch = _inputs(proc, texts, sizes)
    B, S = batch["input_ids"].shape
    singles = [_prompt(proc, t, s) for t, s in zip(texts, sizes)]
    # scope = the last 6 prompt positions of each row, in that row's own coordinates
    masks_single = []
    for one in singles:
        m = torch.zeros_like(one["input_ids"], dtype=torch.bool)
        m[0, -6:] = True
        masks_single.append(m)
    mask_b = torch.zeros(B, S, dtype=torch.bool)
    mask_b[:, -6:] = True  # left padding: the row's last positions are the batch's last positions
    with torch.no_grad():
        with intervene(model, HeadPlan.build([spec, spec], mask_b, geo.num_layers, geo.num_heads)):
            lb = model(**batch).logits
        for b, (one, m) in enumerate(zip(singles, masks_single)):
            with intervene(model, HeadPlan.build([spec], m, geo.num_layers, geo.num_heads)):
                ls = model(**one).logits
            n = one["input_ids"].shape[1]
            assert torch.allclose(lb[b, S - n:], ls[0], atol=1e-4), (lb[b, S - n:] - ls[0]).abs().max()
        # a plan that ignores the padding offset (positions counted from the left) is detectably different
        wrong = torch.zeros(B, S, dtype=torch.bool)
        n0 = singles[0]["input_ids"].shape[1]
        wrong[0, n0 - 6: n0] = True
        wrong[1, -6:] = True
        with intervene(model, HeadPlan.build([spec, spec], wrong, geo.num_layers, geo.num_heads)):
            lw = model(**batch).logits
    assert not torch.allclose(lw[0, S - n0:], lb[0, S - n0:], atol=1e-3)


@pytest.mark.parametrize("decode", [False, True])
def test_prefill_only_unless_decode(tiny_qwen25_dir, decode):
    model, proc = load(tiny_qwen25_dir)
    inp = _inputs(proc, ["what colour is it?"])
    geo = geometry(model)
    layer, head, d = 1, 3, geo.head_dim
    S = inp["input_ids"].shape[1]
    mask = torch.zeros(1, S, dtype=torch.bool)
    mask[0, -3:] = True
    plan = HeadPlan.build([InterventionSpec(block=[(layer, head)], decode=decode)], mask, geo.num_layers,
                          geo.num_heads)
    rec, hs = _capture_oproj(model, layer)
    with torch.no_grad(), intervene(model, plan):
        model.generate(**inp, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    for h in hs:
        h.remove()
    W = resolve(model)[3][layer].weight
    assert rec["in"][0].shape[1] == S and len(rec["in"]) == 4  # prefill + 3 decode steps
    for step, (x, y) in enumerate(zip(rec["in"], rec["out"])):
        z = x.clone()
        if step == 0:
            z[0, -3:, head * d:(head + 1) * d] = 0
        elif decode:
            z[..., head * d:(head + 1) * d] = 0
        assert torch.allclose(y, z @ W.T, atol=1e-6), f"step {step}"
        if step > 0 and not decode:
            assert torch.equal(y, x @ W.T) or torch.allclose(y, x @ W.T, atol=1e-7)


def test_no_hook_survives_run_exception_interrupt_or_nesting(tiny_qwen25_dir):
    model, proc = load(tiny_qwen25_dir)
    inp = _inputs(proc, ["what colour is it?"])
    geo = geometry(model)
    before = _hook_count(model)
    S = inp["input_ids"].shape[1]
    mask = torch.ones(1, S, dtype=torch.bool)
    plan = HeadPlan.build([InterventionSpec(block=["L0H0", "L3H2"])], mask, geo.num_layers, geo.num_heads)
    with torch.no_grad(), intervene(model, plan):
        model(**inp)
        assert _hook_count(model) == before + 5 and active_handles() == 5  # 2 per layer + 1 on the text decoder
    assert _hook_count(model) == before and active_handles() == 0
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with intervene(model, plan):
                raise exc
        assert _hook_count(model) == before and active_handles() == 0
    # nested: the inner context removes only its own handles
    plan2 = HeadPlan.build([InterventionSpec(block=["L1H1"])], mask, geo.num_layers, geo.num_heads)
    foreign = resolve(model)[3][2].register_forward_pre_hook(lambda m, a: None)
    with intervene(model, plan):
        with intervene(model, plan2):
            assert active_handles() == 8
        assert active_handles() == 5 and _hook_count(model) == before + 6
    assert _hook_count(model) == before + 1  # the user's own hook is left alone
    foreign.remove()
    # an empty plan registers nothing
    with intervene(model, None) as hs:
        assert hs == [] and _hook_count(model) == before


def test_plan_rejects_mismatched_batch(tiny_qwen25_dir):
    model, proc = load(tiny_qwen25_dir)
    inp = _inputs(proc, ["what colour is it?"])
    geo = geometry(model)
    mask = torch.ones(2, inp["input_ids"].shape[1], dtype=torch.bool)
    spec = InterventionSpec(block=["L0H0"])
    plan = HeadPlan.build([spec, spec], mask, geo.num_layers, geo.num_heads)
    with pytest.raises(RuntimeError, match="plan is for 2 rows"):
        with torch.no_grad(), intervene(model, plan):
            model(**inp)
    assert active_handles() == 0


def test_architecture_table_rows_resolve(tiny_dir):
    model, _ = load(tiny_dir)
    row, layers, attns, oprojs = resolve(model)
    assert row is ARCH[model.config.model_type]
    geo = geometry(model)
    assert len(oprojs) == geo.num_layers == 4 and oprojs[0].in_features == geo.num_heads * geo.head_dim


def test_unknown_family_is_a_clear_error():
    from transformers import LlamaConfig

    from mf_harness.core.arch import arch_for

    with pytest.raises(ValueError, match="'llama' is not in mf-harness's architecture table"):
        arch_for(LlamaConfig())
