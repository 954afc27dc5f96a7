"""Many specs per prompt: per-row batching and prefix sharing are exact against one spec at a time."""

import dataclasses

import pytest
import torch
from PIL import Image

from lmms_eval.api.instance import Instance

from mf_harness.lmms.model import IntervenedHF
from mf_harness.lmms.fast_engine import MultiSpecRunner
from mf_harness.core.spec import InterventionSpec

INSTR = "You should follow the textual context rather than the visual content."
DOC = {"instruction": INSTR, "image": Image.new("RGB", (84, 84), (200, 30, 30))}
CTX = f"Text context: The square in the picture is blue.\n{INSTR} What colour is the shape?\nAnswer with one word."
SPECS = [
    InterventionSpec(),
    InterventionSpec(block=["L1H0", "L2H3"]),
    InterventionSpec(amplify=["L3H1", "L2H2"], coefficient=8),
    InterventionSpec(block=["L0H0", "L3H2"], decode=True),
    InterventionSpec(block=["L0H1", "L1H1", "L2H1"], scope="last"),
    InterventionSpec(amplify=["L0H2"], coefficient=12, scope="prompt_text"),
]
GEN = {"max_new_tokens": 8, "until": ["\n"]}


def _one_at_a_time(path, spec):
    kw = {"block": "+".join(map(str, spec.block)), "amplify": "+".join(map(str, spec.amplify)),
          "coefficient": spec.coefficient, "scope": spec.scope, "decode": spec.decode}
    kw = {k: v for k, v in kw.items() if v not in ("", None)}
    lm = IntervenedHF(pretrained=str(path), min_pixels=56 * 56, **kw)
    lm.task_dict = {"t": {"test": [DOC]}}
    req = Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1},
                   arguments=(CTX, dict(GEN), lambda d: [d["image"]], 0, "t", "test"))
    return lm.generate_until([req])[0]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_batched_specs_equal_one_spec_at_a_time(tiny_dir, share_prefix):
    lm = IntervenedHF(pretrained=str(tiny_dir), min_pixels=56 * 56)
    runner = MultiSpecRunner(lm, max_rows=4, share_prefix=share_prefix)  # 6 rows -> two chunks
    images = lm.visuals(lambda d: [d["image"]], DOC, "doc")
    got = runner.generate(CTX, images, DOC, SPECS, GEN)
    want = [_one_at_a_time(tiny_dir, s) for s in SPECS]
    assert got == want
    assert len(set(want)) > 1  # the specs really differ
    if share_prefix:
        assert runner.stats == {"prefix_passes": 1, "suffix_rows": 6, "fallbacks": 0}


def test_scope_prompt_falls_back_and_stays_exact(tiny_qwen25_dir):
    lm = IntervenedHF(pretrained=str(tiny_qwen25_dir), min_pixels=56 * 56)
    runner = MultiSpecRunner(lm)
    images = lm.visuals(lambda d: [d["image"]], DOC, "doc")
    specs = [InterventionSpec(), InterventionSpec(block=["L1H1"], scope="prompt")]
    got = runner.generate(CTX, images, DOC, specs, GEN)
    assert runner.stats["fallbacks"] == 1 and runner.stats["prefix_passes"] == 0
    assert got == [_one_at_a_time(tiny_qwen25_dir, s) for s in specs]


def test_prefix_cache_logits_match_full_recompute_with_mrope(tiny_qwen25_dir):
    """Model level: the suffix computed from the shared prefix cache gives the full pass's logits."""
    from transformers import DynamicCache

    from mf_harness.core.hooks import cache_kwarg, intervene, output_cache

    lm = IntervenedHF(pretrained=str(tiny_qwen25_dir), min_pixels=56 * 56, attn_implementation="eager")
    m = lm.model
    images = lm.visuals(lambda d: [d["image"]], DOC, "doc")
    rendered, user = lm.codec.render(CTX, 1)
    enc = lm.codec.encode([rendered], [images])
    R = len(SPECS)
    runner = MultiSpecRunner(lm)
    plan = runner.plan(SPECS, rendered, user, enc, DOC, "doc")
    p = runner.prefix_length(plan, enc)
    L = enc["input_ids"].shape[1]
    assert 0 < p < L
    full_in = {k: (v.expand(R, -1) if v.dim() == 2 and v.shape[0] == 1 and k != "image_grid_thw" else v)
               for k, v in enc.items()}
    full_in["pixel_values"] = enc["pixel_values"].repeat(R, 1)
    full_in["image_grid_thw"] = enc["image_grid_thw"].repeat(R, 1)
    with torch.no_grad():
        with intervene(m, plan):
            full = m(**full_in).logits
        m.model.rope_deltas = None
        pre = {k: (v[:, :p] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v) for k, v in enc.items()}
        cache = output_cache(m(**pre, **{cache_kwarg(m): DynamicCache(config=m.config)}, use_cache=True))
        cache.batch_repeat_interleave(R)
        with intervene(m, plan):
            # no padding, so no mask: positions = cache length + arange, shifted by the prefix's rope delta
            suffix = m(input_ids=full_in["input_ids"][:, p:],
                       mm_token_type_ids=full_in["mm_token_type_ids"][:, p:], image_grid_thw=full_in["image_grid_thw"],
                       **{cache_kwarg(m): cache}, use_cache=True).logits
    assert torch.allclose(suffix, full[:, p:], atol=1e-5)
    # without the prefix pass's rope deltas (plain 1-D positions) the logits would differ
    with torch.no_grad():
        m.model.rope_deltas = None
        cache2 = output_cache(m(input_ids=enc["input_ids"][:, :p], attention_mask=enc["attention_mask"][:, :p],
                   **{cache_kwarg(m): DynamicCache(config=m.config)}, use_cache=True))  # no image
        wrong = m(input_ids=enc["input_ids"][:1, p:], **{cache_kwarg(m): cache2}, use_cache=True).logits
    assert not torch.allclose(wrong[0], full[0, p:], atol=1e-3)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe", "glm4v", "qwen3_5", "internvl", "gemma3", "gemma4",
                                    "idefics3"])
def test_other_families_batch_specs_exactly(tmp_path, family):
    """Per-row specs in one batch equal one spec at a time for every family (prefix sharing: the families with
    3-D positions; not a hybrid decoder, whose linear-attention state is not a KV cache)."""
    from mf_harness.core.spec import Head
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    path = build_tiny_vlm(tmp_path / family, TinyConfig(family=family, seed=5))
    lm = IntervenedHF(pretrained=str(path), attn_implementation="eager")
    runner = MultiSpecRunner(lm)
    images = lm.visuals(lambda d: [d["image"]], DOC, "doc")
    hl = lm.geometry.head_layers  # layer l of the specs -> the l-th layer with heads (hybrid decoders)
    specs = [dataclasses.replace(s, block=tuple(Head(hl[h.layer % len(hl)], h.head) for h in s.block),
                                 amplify=tuple(Head(hl[h.layer % len(hl)], h.head) for h in s.amplify))
             for s in SPECS[:4]]
    got = runner.generate(CTX, images, DOC, specs, GEN)
    want = []
    for s in specs:
        view = lm.with_spec(s)
        view.task_dict = {"t": {"test": [DOC]}}
        req = Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1},
                       arguments=(CTX, dict(GEN), lambda d: [d["image"]], 0, "t", "test"))
        want.append(view.generate_until([req])[0])
    assert got == want
    if family in ("qwen3_vl", "qwen3_vl_moe", "glm4v"):
        assert runner.stats["prefix_passes"] == 1
    else:
        assert runner.stats["fallbacks"] == 1


def test_text_only_prompt_over_several_row_chunks():
    """A prompt without an image (no mrope deltas from the prefix pass) split over row chunks: each chunk starts
    from the prefix's state, not the previous chunk's (the shapes of the two differ)."""
    from mf_harness.core.spec import Head

    lm = IntervenedHF(pretrained="embedded")
    doc = {"instruction": "Answer the question with a single word."}
    ctx = ("Text context: There are three squares in the picture.\nHow many squares are there?\n"
           "Answer the question with a single word.")
    specs = [InterventionSpec()] + [InterventionSpec(block=[Head(0, h), Head(1, h)], scope="instruction")
                                    for h in range(8)]
    chunked = MultiSpecRunner(lm, max_rows=4).generate(ctx, [], doc, specs, {"max_new_tokens": 4}, "doc")
    whole = MultiSpecRunner(lm, max_rows=64, share_prefix=False).generate(ctx, [], doc, specs,
                                                                         {"max_new_tokens": 4}, "doc")
    assert chunked == whole and len(chunked) == 9
    assert chunked[0].strip() == "three"


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_shared_prefix_kv_equals_the_prefix_repeated_per_row(tiny_qwen25_dir, impl):
    """The prefix's KV stored once (cascade attention) gives the logits of the prefix repeated per row, at every
    generated step, with per-row interventions acting in the suffix."""
    from transformers import DynamicCache

    from mf_harness.core.hooks import cache_kwarg, intervene, output_cache
    from mf_harness.core.shared_prefix import SharedPrefixLayer, continue_prefix, shared_prefix_attention

    lm = IntervenedHF(pretrained=str(tiny_qwen25_dir), min_pixels=56 * 56, attn_implementation=impl)
    m = lm.model
    images = lm.visuals(lambda d: [d["image"]], DOC, "doc")
    rendered, user = lm.codec.render(CTX, 1)
    enc = lm.codec.encode([rendered], [images])
    specs = SPECS[:4]
    runner = MultiSpecRunner(lm)
    plan = runner.plan(specs, rendered, user, enc, DOC, "doc")
    p = runner.prefix_length(plan, enc)
    R = len(specs)
    with torch.no_grad():
        m.model.rope_deltas = None
        pre = {k: (v[:, :p] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v) for k, v in enc.items()}
        prefix = output_cache(m(**pre, **{cache_kwarg(m): DynamicCache(config=m.config)}, use_cache=True))
        deltas = m.model.rope_deltas
        outs = []
        for share in (True, False):
            cache = continue_prefix(prefix, m.config, R, share=share)
            assert isinstance(cache.layers[0], SharedPrefixLayer) == share
            m.model.rope_deltas = deltas
            feed = dict(input_ids=enc["input_ids"].expand(R, -1), attention_mask=enc["attention_mask"].expand(R, -1),
                        mm_token_type_ids=enc["mm_token_type_ids"].expand(R, -1),
                        image_grid_thw=enc["image_grid_thw"].repeat(R, 1))
            ctx = shared_prefix_attention(m, cache) if share else intervene(m, None)
            with intervene(m, plan), ctx:
                outs.append(m.generate(**feed, **{cache_kwarg(m): cache}, max_new_tokens=5, min_new_tokens=5,
                                       do_sample=False, output_logits=True, return_dict_in_generate=True,
                                       pad_token_id=lm.tokenizer.pad_token_id))
        assert prefix.layers[0].keys.shape[0] == 1  # the prefix itself was not modified
    shared, repeated = outs
    assert torch.equal(shared.sequences, repeated.sequences)
    for a, b in zip(shared.logits, repeated.logits):
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(shared.logits[0][0], shared.logits[0][1], atol=1e-3)  # the rows' specs differ


@pytest.mark.parametrize("q_len,masked", [(7, True), (1, False)])
def test_prefix_attention_equals_attention_over_the_concatenated_keys(q_len, masked):
    """The merge of prefix and suffix attention (fused kernel and the chunked maths path) against plain softmax
    attention over [prefix; suffix] with grouped KV heads; causal inside the suffix, bottom-right aligned."""
    import mf_harness.core.shared_prefix as sp

    torch.manual_seed(0)
    R, H, KV, d, P, S = 3, 6, 2, 8, 11, 9  # S suffix keys, the last q_len of them are the queries
    q = torch.randn(R, H, q_len, d)
    pk, pv = torch.randn(1, KV, P, d), torch.randn(1, KV, P, d)
    sk, sv = torch.randn(R, KV, S, d), torch.randn(R, KV, S, d)
    qpos = torch.arange(P + S - q_len, P + S)[:, None]
    full_mask = torch.arange(P + S)[None, :] <= qpos  # [q, P + S]
    keys = torch.cat([pk.expand(R, -1, -1, -1), sk], 2).repeat_interleave(H // KV, 1)
    vals = torch.cat([pv.expand(R, -1, -1, -1), sv], 2).repeat_interleave(H // KV, 1)
    scores = (q @ keys.transpose(-1, -2)) / d ** 0.5
    want = torch.softmax(scores.masked_fill(~full_mask, float("-inf")), -1) @ vals

    class Module:
        _mf_shared_prefix = sp.SharedPrefixLayer(pk, pv)

    mask = full_mask[None, None].expand(R, 1, -1, -1) if masked else None
    got, _ = sp.prefix_attention(Module, q, sk, sv, mask)
    assert torch.allclose(got.transpose(1, 2), want, atol=1e-5)
    for causal in (False, True):  # the maths path, in chunks, against the fused kernel
        k2, v2 = sk[..., -q_len:, :], sv[..., -q_len:, :]
        small = sp._lse_attention(q, k2, v2, d ** -0.5, None, chunk=2, fused=False, causal=causal)
        fused = sp._lse_attention(q, k2, v2, d ** -0.5, None, causal=causal)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(small, fused))
    if masked:  # a mask that is not the plain causal one (padding, edited edges) is refused, not ignored
        for bad in (torch.ones_like(mask), mask.clone().index_fill_(-1, torch.tensor([0]), False)):
            with pytest.raises(RuntimeError, match="plain causal mask"):
                sp.prefix_attention(Module, q, sk, sv, bad)
    if q_len > 1:  # a chunk of queries shorter than the suffix (the maths path with a bottom-right causal mask)
        got_sub, _ = sp.prefix_attention(Module, q[..., -3:, :], sk, sv, full_mask[-3:][None, None])
        assert torch.allclose(got_sub.transpose(1, 2), want[..., -3:, :], atol=1e-5)


def test_prefix_sharing_declines_a_sliding_window_layer(tiny_qwen25_dir):
    """A sliding-window layer's cache drops the start of a long prefix: such a model is not prefix-shared."""
    from mf_harness.lmms.fast_engine import prefix_sharable

    lm = IntervenedHF(pretrained=str(tiny_qwen25_dir), min_pixels=56 * 56)
    assert prefix_sharable(lm)
    tc = lm.model.config.get_text_config(decoder=True)
    saved = list(tc.layer_types)
    try:
        tc.layer_types = saved[:-1] + ["sliding_attention"]
        assert not prefix_sharable(lm)
        runner = MultiSpecRunner(lm)
        images = lm.visuals(lambda d: [d["image"]], DOC, "doc")
        rendered, user = lm.codec.render(CTX, 1)
        enc = lm.codec.encode([rendered], [images])
        assert runner.prefix_length(runner.plan(SPECS[:2], rendered, user, enc, DOC, "doc"), enc) == 0  # fall back
    finally:
        tc.layer_types = saved
