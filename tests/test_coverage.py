"""Coverage is checked, always: an intervention that misses the positions its plan names raises.

These tests break the position logic on purpose (as transformers 5.24's rename of the KV cache
argument did to the old name-based lookup) and check that the hooks refuse to return numbers.
"""

import pytest
import torch
from PIL import Image

import mf_harness.core.hooks as hooks
from conftest import load
from mf_harness.core.arch import geometry
from mf_harness.core.hooks import HeadPlan, InterventionCoverageError, active_handles, cache_kwarg, intervene, output_cache
from mf_harness.lmms.model import IntervenedHF
from mf_harness.lmms.fast_engine import MultiSpecRunner
from mf_harness.core.spec import InterventionSpec

INSTR = "You should follow the textual context rather than the visual content."
DOC = {"instruction": INSTR, "image": Image.new("RGB", (84, 84), (200, 30, 30))}
CTX = f"Text context: The square in the picture is blue.\n{INSTR} What colour is the shape?\nAnswer with one word."
GEN = {"max_new_tokens": 6, "until": ["\n"]}


def _inputs(processor, text="what colour is it?"):
    image = Image.new("RGB", (56, 56), (20, 200, 90))
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]]
    rendered = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return processor(text=rendered, images=[image], return_tensors="pt")


def _plan(model, S, positions, decode=False, heads=("L0H1", "L2H3")):
    geo = geometry(model)
    mask = torch.zeros(1, S, dtype=torch.bool)
    mask[0, list(positions)] = True
    return HeadPlan.build([InterventionSpec(block=list(heads), decode=decode)], mask, geo.num_layers, geo.num_heads)


def _zero_start(args, kwargs, length):
    return 0


def test_correct_positions_pass_the_check_over_prefill_and_decode(tiny_qwen25_dir):
    model, proc = load(tiny_qwen25_dir)
    inp = _inputs(proc)
    S = inp["input_ids"].shape[1]
    plan = _plan(model, S, range(S - 4, S), decode=True)
    with torch.no_grad(), intervene(model, plan):
        out = model.generate(**inp, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape[1] == S + 5 and active_handles() == 0


def test_decode_steps_read_at_position_zero_raise(tiny_qwen25_dir, monkeypatch):
    """The 5.24 failure: every chunk after the first taken to start at 0."""
    model, proc = load(tiny_qwen25_dir)
    inp = _inputs(proc)
    S = inp["input_ids"].shape[1]
    plan = _plan(model, S, range(S - 4, S), decode=True)
    monkeypatch.setattr(hooks, "chunk_start", _zero_start)
    with pytest.raises(InterventionCoverageError, match=r"KV cache holds \d+ tokens, but the model forward's chunk starts at 0"):
        with torch.no_grad(), intervene(model, plan):
            model.generate(**inp, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert active_handles() == 0


def test_prefix_shared_suffix_read_at_position_zero_raises(tiny_qwen25_dir, monkeypatch):
    """The multi-spec engine's suffix after a shared prefix, with the position logic broken."""
    lm = IntervenedHF(pretrained=str(tiny_qwen25_dir), min_pixels=56 * 56)
    runner = MultiSpecRunner(lm)
    images = [DOC["image"]]
    specs = [InterventionSpec(), InterventionSpec(block=["L1H0", "L2H3"])]
    good = runner.generate(CTX, images, DOC, specs, GEN)  # the real logic: no error
    assert runner.stats["prefix_passes"] == 1 and len(good) == 2
    monkeypatch.setattr(hooks, "chunk_start", _zero_start)
    with pytest.raises(InterventionCoverageError, match=r"KV cache holds \d+ tokens, but .* starts at 0"):
        runner.generate(CTX, images, DOC, specs, {"max_new_tokens": 1})
    # with the layers' cache cross-check blinded too, the count still catches it
    monkeypatch.setattr(hooks, "find_cache", lambda args, kwargs: None)
    with pytest.raises(InterventionCoverageError, match=r"reached 0 of \d+ instruction positions in layer 1 of row 1"):
        runner.generate(CTX, images, DOC, specs, {"max_new_tokens": 1})
    assert active_handles() == 0


def test_cache_under_an_unknown_name_with_no_mask_raises(tiny_qwen25_dir, monkeypatch):
    """A suffix forward whose cache the hooks cannot recognise (and no attention mask to say where the
    chunk starts) must not be read as starting at 0."""
    from transformers import DynamicCache

    model, proc = load(tiny_qwen25_dir)
    inp = _inputs(proc)
    S = inp["input_ids"].shape[1]
    p = S - 6
    plan = _plan(model, S, range(S - 4, S))
    with torch.no_grad():
        model.model.rope_deltas = None
        pre = {k: (v[:, :p] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
               for k, v in inp.items()}
        cache = output_cache(model(**pre, **{cache_kwarg(model): DynamicCache(config=model.config)}, use_cache=True))
        suffix = dict(input_ids=inp["input_ids"][:, p:], mm_token_type_ids=inp["mm_token_type_ids"][:, p:],
                      image_grid_thw=inp["image_grid_thw"], use_cache=True)
        # recognised: the chunk starts at p and every named position is reached
        import copy

        with intervene(model, plan):
            model(**suffix, **{cache_kwarg(model): copy.deepcopy(cache)})
        # unrecognised (as the old name-based lookup was on 5.24): an error, not numbers
        monkeypatch.setattr(hooks, "find_cache", lambda args, kwargs: None)
        with pytest.raises(InterventionCoverageError, match=r"reached 0 of 4 in-scope|reached 0 of 4 \w+ positions"):
            with intervene(model, plan):
                model(**suffix, **{cache_kwarg(model): copy.deepcopy(cache)})


def test_positions_the_forward_never_reaches_raise(tiny_qwen25_dir):
    model, proc = load(tiny_qwen25_dir)
    inp = _inputs(proc)
    S = inp["input_ids"].shape[1]
    plan = _plan(model, S + 5, range(S, S + 5))  # the plan names 5 positions past the prompt that runs
    plan.scopes = ("instruction",)
    with pytest.raises(InterventionCoverageError,
                       match=r"intervention reached 0 of 5 instruction positions in layer 0 of row 0"):
        with torch.no_grad(), intervene(model, plan):
            model(**inp)
    assert active_handles() == 0


def test_wrapper_refuses_numbers_when_positions_break(tiny_qwen25_dir, monkeypatch):
    """End to end through the lmms-eval model: a decode-scope spec with the position logic broken."""
    from lmms_eval.api.instance import Instance

    lm = IntervenedHF(pretrained=str(tiny_qwen25_dir), min_pixels=56 * 56, block="L1H0", decode="true")
    lm.task_dict = {"t": {"test": [DOC]}}
    req = Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1},
                   arguments=(CTX, {"max_new_tokens": 4, "until": ["\n"]}, lambda d: [d["image"]], 0, "t", "test"))
    assert isinstance(lm.generate_until([req])[0], str)
    monkeypatch.setattr(hooks, "chunk_start", _zero_start)
    with pytest.raises(InterventionCoverageError, match="KV cache holds"):
        lm.generate_until([req])
    monkeypatch.setattr(hooks, "find_cache", lambda args, kwargs: None)  # only the tiling is left
    with pytest.raises(InterventionCoverageError, match="previous chunk ended at"):
        lm.generate_until([req])
