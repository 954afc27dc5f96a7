"""Many specs per prompt: per-row batching and prefix sharing are exact against one spec at a time."""


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


@pytest.mark.parametrize("family", ["qwen3_vl", "internvl", "gemma3", "idefics3"])
def test_other_families_batch_specs_exactly(tmp_path, family):
    """Per-row specs in one batch equal one spec at a time for every family (prefix sharing: Qwen only)."""
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    path = build_tiny_vlm(tmp_path / family, TinyConfig(family=family, seed=5))
    lm = IntervenedHF(pretrained=str(path), attn_implementation="eager")
    runner = MultiSpecRunner(lm)
    images = lm.visuals(lambda d: [d["image"]], DOC, "doc")
    specs = SPECS[:4]
    got = runner.generate(CTX, images, DOC, specs, GEN)
    want = []
    for s in specs:
        view = lm.with_spec(s)
        view.task_dict = {"t": {"test": [DOC]}}
        req = Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1},
                       arguments=(CTX, dict(GEN), lambda d: [d["image"]], 0, "t", "test"))
        want.append(view.generate_until([req])[0])
    assert got == want
    if family == "qwen3_vl":
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
