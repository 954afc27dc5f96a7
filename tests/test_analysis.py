"""The analysis measures against hand computations on a tiny real Qwen2.5-VL."""

import json

import pytest
import torch

from mf_harness.analysis import (
    capture,
    cut_edges,
    encode_samples,
    knockout_nssd,
    lens_and_attribution,
    ldar_table,
    load_task_docs,
    nssd,
    prepare_samples,
)
from mf_harness.analysis.measures import ablation_effects, final_margins
from mf_harness.core.arch import geometry, resolve
from mf_harness.lmms.model import IntervenedHF


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def setup(tiny_qwen25_dir):
    lm = IntervenedHF(pretrained=str(tiny_qwen25_dir), min_pixels=56 * 56, attn_implementation="eager")
    task, docs = load_task_docs("mfr_text", limit=6)
    samples = prepare_samples(lm, task, docs)
    return lm, samples


def test_token_sets_decode_to_the_doc_fields(setup):
    lm, samples = setup
    for s in samples:
        ids = lm.codec.encode([s.rendered], [s.images])["input_ids"][0]
        dec = lambda name: lm.tokenizer.decode(ids[s.token_sets[name]]).strip()  # noqa: E731
        assert dec("instruction") == s.doc["instruction"]
        assert dec("context") == s.doc["context"].strip()
        assert dec("question") == s.doc["question"].strip()
        assert dec("format") == s.doc["format_instruction"]
        assert all(int(ids[p]) in lm.codec.placeholder_ids for p in s.token_sets["image"])
        assert s.token_sets["last"] == [len(ids) - 1]
        assert not set(s.compliant_ids) & set(s.competing_ids)


def test_logit_lens_of_last_layer_is_the_model_output_and_residual_decomposes(setup):
    lm, samples = setup
    enc, offsets = encode_samples(lm, samples[:3])
    pos = [torch.arange(o, enc["input_ids"].shape[1]) for o in offsets]
    tr = capture(lm.model, enc, pos, with_logits=True)
    model = lm.model
    norm, head = model.model.language_model.norm, model.lm_head
    L = geometry(model).num_layers
    for b in range(3):
        n = len(pos[b])
        h = tr.resid[L - 1][b, :n]
        assert torch.allclose(head(norm(h)), tr.logits[b, :n], atol=1e-5)
        total = tr.embed[b, :n] + sum(tr.attn[l][b, :n] + tr.mlp[l][b, :n] for l in range(L))
        assert torch.allclose(total, h, atol=1e-5)


def _hand_readout(lm, tr, b, layer, rows, tokens, k):
    """R(E) by hand: full vocabulary logit lens, max over E, mean of the top-k rows."""
    model = lm.model
    logits = model.lm_head(model.model.language_model.norm(tr.resid[layer][b, rows]))
    s = sorted((max(float(logits[i, t]) for t in tokens) for i in range(len(rows))), reverse=True)
    return sum(s[:k]) / min(k, len(s))


def test_ldar_and_margins_match_hand_computation(setup):
    lm, samples = setup
    k = 2
    r = lens_and_attribution(lm, samples, k=k, batch_size=4, progress=False)
    enc, offsets = encode_samples(lm, samples)
    pos = [torch.tensor([o + p for p in s.token_sets["instruction"]] + [o + s.length - 1])
           for s, o in zip(samples, offsets)]
    tr = capture(lm.model, enc, pos, with_logits=True)
    L = geometry(lm.model).num_layers
    rows = {(x["sample_id"], x["layer"], x["site"]): x for x in r["lens"]}
    agree = {l: [] for l in range(L)}
    for b, s in enumerate(samples):
        n = len(s.token_sets["instruction"])
        final = tr.logits[b, n]
        final_comp = max(float(final[t]) for t in s.compliant_ids) > max(float(final[t]) for t in s.competing_ids)
        for l in range(L):
            rc = _hand_readout(lm, tr, b, l, list(range(n)), s.compliant_ids, k)
            ro = _hand_readout(lm, tr, b, l, list(range(n)), s.competing_ids, k)
            got = rows[(s.sample_id, l, "instruction")]
            assert got["R_c"] == pytest.approx(rc, abs=1e-4) and got["R_o"] == pytest.approx(ro, abs=1e-4)
            assert got["success"] == final_comp
            agree[l].append((rc > ro) == final_comp)
            last = rows[(s.sample_id, l, "last")]
            assert last["R_c"] == pytest.approx(_hand_readout(lm, tr, b, l, [n], s.compliant_ids, 1), abs=1e-4)
    table = ldar_table(r["lens"])
    for l in range(L):
        got = table[(table.site == "instruction") & (table.layer == l) & (table.subset == "all")].ldar.item()
        assert got == pytest.approx(sum(agree[l]) / len(agree[l]))


def test_head_dla_matches_explicit_per_head_vectors(setup):
    lm, samples = setup
    model = lm.model
    geo = geometry(model)
    k = 2
    r = lens_and_attribution(lm, samples[:2], k=k, batch_size=2, progress=False)
    heads = {(x["sample_id"], x["site"], x["layer"], x["head"]): x["contribution"] for x in r["heads"]}
    layer_rows = {(x["sample_id"], x["layer"]): x for x in r["layers"]}
    s = samples[0]
    enc, offsets = encode_samples(lm, [s])
    n = len(s.token_sets["instruction"])
    pos = [torch.tensor(s.token_sets["instruction"] + [s.length - 1])]
    tr = capture(model, enc, pos, with_logits=True)
    L = geo.num_layers
    norm, W_U = model.model.language_model.norm, model.lm_head.weight
    hL = tr.resid[L - 1][0, :n]
    inv_rms = 1.0 / torch.sqrt(hL.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    full = model.lm_head(norm(hL))
    # the readout selects, per side, the top-k instruction rows and the argmax token in each
    sel = {}
    for side, toks in (("c", s.compliant_ids), ("o", s.competing_ids)):
        best = [(max(float(full[i, t]) for t in toks), i, max(toks, key=lambda t: float(full[i, t]))) for i in range(n)]
        sel[side] = sorted(best, reverse=True)[:k]
    oprojs = resolve(model)[3]
    total = 0.0
    for l in range(L):
        W_O = oprojs[l].weight
        for h in range(geo.num_heads):
            d = geo.head_dim
            vec = tr.z[l][0, :n, h] @ W_O[:, h * d:(h + 1) * d].T  # explicit head output W_O[:, h] z_h
            read = (vec * inv_rms * norm.weight) @ W_U.T  # [n, V]
            want = (sum(float(read[i, t]) for _, i, t in sel["c"]) / k
                    - sum(float(read[i, t]) for _, i, t in sel["o"]) / k)
            assert heads[(s.sample_id, "instruction", l, h)] == pytest.approx(want, abs=1e-5)
            if l == L - 1:
                total += want
    # the heads of the last layer add up to that layer's attention contribution (o_proj has no bias)
    assert layer_rows[(s.sample_id, L - 1)]["attn"] == pytest.approx(total, abs=1e-5)


def test_ablation_effect_is_the_margin_drop_and_tracks_dla_for_last_layer_heads(setup):
    lm, samples = setup
    model = lm.model
    geo = geometry(model)
    L = geo.num_layers
    from mf_harness.core.spec import Head, InterventionSpec

    heads = [Head(L - 1, h) for h in range(geo.num_heads)]
    rows = ablation_effects(lm, samples, scope="last", batch_size=3, heads=heads, progress=False)
    clean = final_margins(lm, samples)
    blocked = final_margins(lm, samples, InterventionSpec(block=[heads[1]], scope="last"))
    mine = [x["effect"] for x in rows if x["head"] == 1]
    assert mine == pytest.approx((clean - blocked).tolist(), abs=1e-5)


@pytest.mark.parametrize("task", ["mfr_text", "mfr_vision"])
def test_ablation_tracks_dla_for_last_layer_heads_on_the_trained_model(task):
    """For last-layer heads at the last position the total effect is the direct effect up to the final
    norm's rescaling (and the max over surface forms): on the trained embedded model, where the margins
    are real, DLA and single-head ablation rank them alike."""
    import pandas as pd

    from mf_harness.core.spec import Head

    lm = IntervenedHF(pretrained="embedded", attn_implementation="eager")
    t, docs = load_task_docs(task, limit=48)  # the last-layer heads' effects are small: 12 docs are noisy
    samples = prepare_samples(lm, t, docs)
    L, H = geometry(lm.model).num_layers, geometry(lm.model).num_heads
    rows = ablation_effects(lm, samples, scope="last", batch_size=4, heads=[Head(L - 1, h) for h in range(H)],
                            progress=False)
    r = lens_and_attribution(lm, samples, k=1, batch_size=4, progress=False)
    dla = pd.DataFrame(r["heads"]).query("site == 'last' and layer == @L - 1").groupby("head").contribution.mean()
    ab = pd.DataFrame(rows).groupby("head").effect.mean()
    assert dla.rank().corr(ab.rank()) > 0.7, (dla.tolist(), ab.tolist())


def test_nssd_hand_values():
    p = torch.tensor([2.0, 0.0, 1.0, -5.0])
    q = torch.tensor([0.0, 0.0, 1.0, 9.0])
    ec, eo = [0], [1, 2]  # token 3 is outside the decision subspace
    P = torch.softmax(torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64), -1)
    Q = torch.softmax(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), -1)
    kl = float((P * (P / Q).log()).sum())
    assert nssd(p, q, ec, eo) == pytest.approx(-kl)  # E_c lost mass: negative
    assert nssd(q, p, ec, eo) == pytest.approx(float((Q * (Q / P).log()).sum()))  # gained: positive
    assert nssd(p, p.clone(), ec, eo) == 0.0


def test_knockout_zeroes_exactly_the_cut_edges_and_nothing_else(setup):
    lm, samples = setup
    model = lm.model
    batch = samples[:2]
    enc, offsets = encode_samples(lm, batch)
    dest = [torch.tensor([o + p for p in s.token_sets["instruction"]]) for s, o in zip(batch, offsets)]
    src = [torch.tensor([o + p for p in s.token_sets["context"] + s.token_sets["image"]]) for s, o in zip(batch, offsets)]
    attns = resolve(model)[2]
    seen = {}
    hooks = [a.register_forward_hook(lambda m, a_, o, i=i: seen.__setitem__(i, o[1])) for i, a in enumerate(attns)]
    try:
        with torch.no_grad(), cut_edges(model, [1, 2], dest, src) as st:
            model(**enc)
    finally:
        for h in hooks:
            h.remove()
    assert st["cut"] > 0
    for l, w in seen.items():  # w: [B, heads, Q, K] attention probabilities (eager)
        assert torch.allclose(w.sum(-1)[enc["attention_mask"].bool()[:, None, :].expand(-1, w.shape[1], -1)],
                              torch.ones(()), atol=1e-5)
        for b in range(2):
            block = w[b][:, dest[b]][:, :, src[b]]
            if l in (1, 2):
                assert torch.equal(block, torch.zeros_like(block))
            else:
                assert block.abs().sum() > 0
    # sdpa (boolean or rebuilt causal mask) gives the same logits as eager
    lm_sdpa = IntervenedHF(pretrained=lm.pretrained, min_pixels=56 * 56, attn_implementation="sdpa")
    with torch.no_grad():
        with cut_edges(model, [1, 2], dest, src):
            le = model(**enc).logits
        with cut_edges(lm_sdpa.model, [1, 2], dest, src):
            ls = lm_sdpa.model(**enc).logits
        one = {k: v[1:] for k, v in enc.items() if k not in ("pixel_values", "image_grid_thw")}
        n0 = int(enc["image_grid_thw"][0].prod())
        one.update(pixel_values=enc["pixel_values"][n0:], image_grid_thw=enc["image_grid_thw"][1:])
        with cut_edges(lm_sdpa.model, [1, 2], dest[1:], src[1:]):  # unpadded row: sdpa gets no mask at all
            l1 = lm_sdpa.model(**one).logits
    valid = enc["attention_mask"].bool()
    assert torch.allclose(le[valid], ls[valid], atol=1e-4)
    assert torch.allclose(l1[0], le[1], atol=1e-4)


def test_knockout_of_nothing_gives_zero_nssd(setup):
    lm, samples = setup
    for s in samples:
        s.token_sets["empty"] = []
    rows = knockout_nssd(lm, samples[:3], "empty", "last", window=3, progress=False)
    # windows are rows of one batch beside the clean row: equal up to the last bits of a batched matmul
    assert rows and all(abs(r["nssd"]) < 1e-12 for r in rows)
    whole = knockout_nssd(lm, samples[:3], "empty", "last", window=3, progress=False, share_prefix=False)
    assert all(r["nssd"] == 0.0 for r in whole)  # the same batch run twice: bit for bit
    assert all(r["compliant_before"] == r["compliant_after"] for r in rows)
    rows = knockout_nssd(lm, samples[:3], "prompt_text", "last", window=3, progress=False)
    assert any(r["nssd"] != 0.0 for r in rows)


def test_discover_writes_specs_that_the_model_accepts(tiny_qwen25_dir, tmp_path):
    from mf_harness.analysis.report import discover
    from mf_harness.core.spec import InterventionSpec

    margs = f"pretrained={tiny_qwen25_dir},min_pixels=3136"
    r = discover(margs, tmp_path, limit=4, k_list=(2, 4, 99), method="both", progress=False)
    names = sorted(p.name for p in r["specs"])
    assert names == ["heads_shared_top16.json", "heads_text_top16.json", "heads_text_top2.json",
                     "heads_text_top4.json", "heads_vision_top16.json", "heads_vision_top2.json",
                     "heads_vision_top4.json"]
    spec = InterventionSpec.load(tmp_path / "heads_text_top4.json")
    prov = spec.provenance
    assert prov["model"] == str(tiny_qwen25_dir) and prov["n_samples"] == 8 and prov["method"] == "both"
    ranked = r["heads"][r["heads"].follow == "text"].sort_values("rank")
    assert set(spec.block) == {(int(a), int(b)) for a, b in zip(ranked["layer"][:4], ranked["head"][:4])} or \
        {str(h) for h in spec.block} == {f"L{a}H{b}" for a, b in zip(ranked["layer"][:4], ranked["head"][:4])}
    assert -1.0 <= r["correlation"][0]["spearman_dla_vs_ablation"] <= 1.0
    for f in ("heads.csv", "layers.csv", "rank_correlation.csv", "heads_text.png", "layers.png"):
        assert (tmp_path / f).stat().st_size > 0
    # the model accepts the file unchanged
    IntervenedHF(pretrained=str(tiny_qwen25_dir), intervention=str(tmp_path / "heads_text_top4.json"))
    json.loads((tmp_path / "heads_shared_top16.json").read_text())


@pytest.mark.parametrize("scope,impl", [("instruction", "eager"), ("last", "eager"), ("instruction", "sdpa")])
def test_prefix_shared_ablation_equals_one_forward_per_head(setup, tiny_qwen25_dir, scope, impl):
    """Every head's ablation as a row of one prefix-shared suffix forward gives the per-head forwards' margins
    (the rows fork at the head's o_proj; the layers above hold the prefix's KV once)."""
    from mf_harness.analysis.attribution import prefix_shared_ablation
    from mf_harness.core.spec import Head

    lm, samples = setup
    if impl != "eager":
        lm = IntervenedHF(pretrained=str(tiny_qwen25_dir), min_pixels=56 * 56, attn_implementation=impl)
    geo = geometry(lm.model)
    heads = [Head(l, h) for l in range(geo.num_layers) for h in range(geo.num_heads)]
    slow = ablation_effects(lm, samples, scope=scope, batch_size=3, progress=False, share_prefix=False)
    fast = prefix_shared_ablation(lm, samples, scope, heads, max_rows=3, progress=False)  # chunks within a layer
    assert fast is not None and len(fast) == len(slow) == len(samples) * len(heads)
    key = lambda r: (r["sample_id"], r["layer"], r["head"])  # noqa: E731
    want = {key(r): r["effect"] for r in slow}
    scale = max(abs(v) for v in want.values())
    assert scale > 0
    for r in fast:
        assert r["effect"] == pytest.approx(want[key(r)], abs=1e-5 * max(1.0, scale)), key(r)
    # the default path is the shared one where it applies
    assert ablation_effects(lm, samples, scope=scope, progress=False) == fast or \
        [x["effect"] for x in ablation_effects(lm, samples, scope=scope, progress=False)] == \
        pytest.approx([x["effect"] for x in fast], abs=1e-6)


def test_prefix_sharing_declines_where_it_cannot_apply(setup):
    from mf_harness.analysis.attribution import prefix_shared_ablation
    from mf_harness.core.spec import Head

    lm, samples = setup
    assert prefix_shared_ablation(lm, samples, "prompt", [Head(0, 0)], progress=False) is None  # acts on the image


def test_attribution_patching_is_the_first_order_effect_of_zeroing_a_head():
    """AtP's estimate for a head equals the finite-difference derivative of the margin as the head's output is
    scaled down from 1 (the harness's own amplify with coefficient 1 - eps), on the trained embedded model."""
    from mf_harness.analysis.attribution import attribution_patching
    from mf_harness.core.spec import Head, InterventionSpec

    lm = IntervenedHF(pretrained="embedded")
    t, docs = load_task_docs("mfr_text", limit=6)
    samples = prepare_samples(lm, t, docs)
    rows = attribution_patching(lm, samples, scope="instruction", batch_size=4, progress=False)
    assert all(p.grad is None for p in lm.model.parameters())  # no weight gradients were kept
    # the prefix-shared path (suffix-only backward) and whole left-padded batches give the same estimates
    whole = attribution_patching(lm, samples, scope="instruction", batch_size=4, progress=False, share_prefix=False)
    key = lambda r: (r["sample_id"], r["layer"], r["head"])  # noqa: E731
    want = {key(r): r["effect"] for r in whole}
    assert len(want) == len(rows) == 6 * 32
    for r in rows:
        assert r["effect"] == pytest.approx(want[key(r)], rel=1e-3, abs=1e-4), key(r)
    eps = 1e-3
    clean = final_margins(lm, samples)
    for head in (Head(0, 2), Head(2, 5)):
        scaled = final_margins(lm, samples, InterventionSpec(amplify=[head], coefficient=1 - eps, scope="instruction"))
        fd = ((clean - scaled) / eps).tolist()
        mine = [r["effect"] for r in rows if (r["layer"], r["head"]) == (head.layer, head.head)]
        assert mine == pytest.approx(fd, rel=0.05, abs=0.02), (head, mine, fd)


@pytest.mark.parametrize("src,dest", [("image", "instruction"), ("context", "last"), ("instruction", "last")])
def test_prefix_shared_knockout_equals_whole_prompt_knockout(setup, src, dest):
    """Each window as a row over the suffix from one prefix cache gives the whole-prompt knockout's NSSD and
    decisions; windows differ per row (a row's cut acts in its own window only)."""
    lm, samples = setup
    kw = dict(window=3, layers=[0, 2, 3], progress=False)
    whole = knockout_nssd(lm, samples[:4], src, dest, share_prefix=False, **kw)
    shared = knockout_nssd(lm, samples[:4], src, dest, **kw)
    key = lambda r: (r["sample_id"], r["layer"])  # noqa: E731
    want = {key(r): r for r in whole}
    assert len(shared) == len(whole) == 12
    for r in shared:
        w = want[key(r)]
        assert r["window"] == w["window"] and r["compliant_after"] == w["compliant_after"]
        assert r["nssd"] == pytest.approx(w["nssd"], abs=1e-6), key(r)
    assert any(abs(r["nssd"]) > 1e-6 for r in whole)  # the cuts change something
    assert len({round(r["nssd"], 9) for r in whole if r["sample_id"] == whole[0]["sample_id"]}) > 1  # windows differ


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe", "glm4v", "qwen3_5"])
def test_prefix_shared_ablation_on_the_other_families(tmp_path, family):
    """The fork at o_proj and the shared-prefix KV are exact on every family with 3-D positions (GLM-4V's
    sandwich norms, MoE MLPs), and a hybrid decoder (Qwen3.5) declines and gets per-head forwards on its
    full-attention layers only."""
    from mf_harness.analysis.attribution import prefix_shared_ablation
    from mf_harness.core.spec import Head
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    path = build_tiny_vlm(tmp_path / family, TinyConfig(family=family, seed=3))
    lm = IntervenedHF(pretrained=str(path), attn_implementation="sdpa")
    task, docs = load_task_docs("mfr_text", limit=3)
    samples = prepare_samples(lm, task, docs)
    geo = geometry(lm.model)
    heads = [Head(l, h) for l in geo.head_layers for h in range(geo.num_heads)]
    fast = prefix_shared_ablation(lm, samples, "instruction", heads, max_rows=5, progress=False)
    slow = ablation_effects(lm, samples, scope="instruction", progress=False, share_prefix=False)
    assert {(r["layer"], r["head"]) for r in slow} == {(h.layer, h.head) for h in heads}
    if family == "qwen3_5":
        assert fast is None and geo.head_layers == (1, 3)
        return
    want = {(r["sample_id"], r["layer"], r["head"]): r["effect"] for r in slow}
    scale = max(abs(v) for v in want.values())
    assert fast is not None and len(fast) == len(want) and scale > 0
    for r in fast:
        assert r["effect"] == pytest.approx(want[(r["sample_id"], r["layer"], r["head"])], abs=1e-5 * max(1, scale))


@pytest.mark.parametrize("family,method", [("qwen3_5", "both"), ("qwen3_5", "atp"), ("gemma4", "both"),
                                           ("gemma4", "atp")])
def test_discover_ranks_only_layers_with_heads(tmp_path, family, method):
    """Qwen3.5 (linear-attention layers beside full-attention ones) and Gemma 4 (head widths differ per layer;
    KV-shared layers without editable heads): lens, DLA, ablation and AtP cover the heads of the layers that have
    them, each layer's heads sliced at its own width, and the specs written load on the model."""
    from mf_harness.analysis.report import discover
    from mf_harness.core.spec import InterventionSpec
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    path = build_tiny_vlm(tmp_path / family, TinyConfig(family=family, seed=2))
    layers = {"qwen3_5": {1, 3}, "gemma4": {0, 1}}[family]
    r = discover(f"pretrained={path}", tmp_path / "out", limit=3, k_list=(2, 4), method=method, progress=False)
    heads = r["heads"]
    assert set(heads.layer) == layers and len(heads) == 2 * 2 * 4  # 2 directions x 2 layers x 4 heads
    assert heads.filter(like="ablation" if method == "both" else "atp").notna().all().all()
    spec = InterventionSpec.load(tmp_path / "out" / "heads_text_top4.json")
    assert {h.layer for h in spec.block} <= layers
    IntervenedHF(pretrained=str(path), intervention=str(tmp_path / "out" / "heads_text_top4.json"))


def test_knockout_reaches_kv_shared_layers_and_skips_linear_attention(tmp_path):
    """Gemma 4's KV-shared layers have no heads to edit but attend over an earlier layer's keys: a knockout cuts
    their edges too (the last position's query, which is computed, loses the image). A hybrid decoder's
    linear-attention layers have no edges to cut: a window cuts its attention layers, and one with none is not
    measured (an error where it was asked for)."""
    from mf_harness.analysis.measures import cut_edges, knockout_nssd
    from mf_harness.errors import MfHarnessError
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    g4 = IntervenedHF(pretrained=str(build_tiny_vlm(tmp_path / "g4", TinyConfig(family="gemma4", seed=7))),
                      attn_implementation="eager")
    task, docs = load_task_docs("mfr_text", limit=2)
    samples = prepare_samples(g4, task, docs)
    assert geometry(g4.model).head_layers == (0, 1)
    rows = knockout_nssd(g4, samples, "image", "last", window=1, layers=[2, 3], progress=False)
    assert len(rows) == 4 and all(abs(r["nssd"]) > 0 for r in rows)
    q35 = IntervenedHF(pretrained=str(build_tiny_vlm(tmp_path / "q35", TinyConfig(family="qwen3_5", seed=2))))
    samples = prepare_samples(q35, task, docs)
    # every layer a centre: windows over linear-attention layers only are not reported; the others cut the
    # attention layers in them (window 0-2 cuts layer 1 only: the same as window 1-1)
    one = knockout_nssd(q35, samples, "image", "instruction", window=1, progress=False)
    assert sorted({(r["layer"], r["window"]) for r in one}) == [(1, "1-1"), (3, "3-3")]
    three = knockout_nssd(q35, samples, "image", "instruction", window=3, layers=[1], progress=False)
    assert [r["window"] for r in three] == ["0-2", "0-2"]
    assert [r["nssd"] for r in three] == [r["nssd"] for r in one if r["layer"] == 1] and any(r["nssd"] for r in three)
    with pytest.raises(MfHarnessError, match=r"around layer 2 has no attention layer.*attention: 1, 3"):
        knockout_nssd(q35, samples, "image", "instruction", window=1, layers=[2], progress=False)
    with pytest.raises(MfHarnessError, match=r"layer 0 mixes tokens without attention.*attention: 1, 3"):
        with cut_edges(q35.model, [0, 1], [torch.tensor([5])], [torch.tensor([1])]):
            pass
