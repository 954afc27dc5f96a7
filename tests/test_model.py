"""The `intervened_qwen` lmms-eval model on tiny real checkpoints: faithfulness, scopes, errors."""

import io

import pytest
import torch
from PIL import Image

from lmms_eval.api.instance import Instance

from conftest import load
from mf_harness.errors import DataError
from mf_harness.lmms.images import qwen_fetch_image
from mf_harness.lmms.model import IntervenedHF
from mf_harness.core.scopes import InstructionNotFound

INSTR = "You should follow the textual context rather than the visual content."
DOCS = [
    {"instruction": INSTR, "image": Image.new("RGB", (84, 84), (200, 30, 30))},
    {"instruction": INSTR, "image": Image.new("RGB", (112, 84), (30, 200, 30))},
    {"instruction": "Focus on the textual context; ignore visual content.", "image": Image.new("RGB", (84, 56), (9, 9, 200))},
]
CTX = [
    f"Text context: The square in the picture is blue.\n{INSTR} What colour is the shape?\nAnswer the question with a single word.",
    f"<image>Text context: A large green circle sits in the middle of a white field.\n{INSTR} What colour?\nAnswer the question with a single word.",
    "Text context: It is red.\nFocus on the textual context; ignore visual content. Which colour?",
]


def _gen_requests(ctx=CTX, max_new_tokens=5):
    return [
        Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1},
                 arguments=(c, {"max_new_tokens": max_new_tokens, "until": ["\n"]}, lambda d: [d["image"]], i, "t",
                            "test"))
        for i, c in enumerate(ctx)
    ]


def _model(path, docs=DOCS, **kw):
    m = IntervenedHF(pretrained=str(path), **kw)
    m.task_dict = {"t": {"test": docs}}
    return m


def test_prompt_snapshot_follows_upstream_qwen_wrapper(tiny_qwen25_dir):
    m = _model(tiny_qwen25_dir)
    rendered, user_text = m.codec.render("<image>What is shown?", 1)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert user_text == "What is shown?"
    # upstream defaults for real checkpoints
    assert (m.image_prep.min_pixels, m.image_prep.max_pixels) == (256 * 28 * 28, 1605632)
    assert m.default_max_new_tokens == 32768


def test_image_path_matches_qwen_vl_utils_rule():
    img = Image.new("RGB", (100, 60), (10, 120, 250))
    out = qwen_fetch_image(img, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    # round to multiples of 28: 100 -> 112, 60 -> 56 (qwen-vl-utils smart_resize)
    assert out.size == (112, 56)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    ref = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((112, 56))
    assert out.tobytes() == ref.tobytes()
    # min_pixels scales small images up, keeping the aspect ratio
    # beta = sqrt(200704 / 6000) = 5.78; ceil(60 * beta / 28) * 28 = 364, ceil(100 * beta / 28) * 28 = 588
    assert qwen_fetch_image(img, min_pixels=200704, max_pixels=1605632).size == (588, 364)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_empty_spec_equals_plain_transformers_generate(tiny_dir, batch_size):
    m = _model(tiny_dir, batch_size=batch_size, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    got = m.generate_until(_gen_requests(max_new_tokens=6))
    model, proc = load(tiny_dir, attn=m.model.config._attn_implementation)
    for i, (doc, ctx) in enumerate(zip(DOCS, CTX)):
        image = qwen_fetch_image(doc["image"], 56 * 56, 28 * 28 * 1280)
        msgs = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ctx.replace("<image>", "")}]}]
        text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        inp = proc(text=[text], images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inp, max_new_tokens=6, do_sample=False)
        ref = proc.batch_decode(out[:, inp["input_ids"].shape[1]:], skip_special_tokens=True,
                                clean_up_tokenization_spaces=False)[0].split("\n")[0]
        assert got[i] == ref, i


def test_intervention_changes_outputs_and_batching_does_not(tiny_qwen25_dir):
    kw = dict(block="L0H0+L1H1+L2H2+L3H3+L3H0+L2H1", scope="instruction", min_pixels=56 * 56)
    clean = _model(tiny_qwen25_dir, min_pixels=56 * 56).generate_until(_gen_requests(max_new_tokens=8))
    one = _model(tiny_qwen25_dir, batch_size=1, **kw).generate_until(_gen_requests(max_new_tokens=8))
    three = _model(tiny_qwen25_dir, batch_size=3, **kw).generate_until(_gen_requests(max_new_tokens=8))
    assert one == three
    assert one != clean


def test_loglikelihood_matches_a_manual_forward(tiny_qwen25_dir):
    m = _model(tiny_qwen25_dir, min_pixels=56 * 56, batch_size=2)
    reqs = [Instance(request_type="loglikelihood", idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1},
                     arguments=(c, " red", lambda d: [d["image"]], i, "t", "test")) for i, c in enumerate(CTX)]
    got = m.loglikelihood(reqs)
    model, proc = load(tiny_qwen25_dir, attn=m.model.config._attn_implementation)
    for i, (doc, ctx) in enumerate(zip(DOCS, CTX)):
        image = qwen_fetch_image(doc["image"], 56 * 56, 28 * 28 * 1280)
        text, _ = m.codec.render(ctx, 1)
        inp = proc(text=[text], images=[image], return_tensors="pt")
        cont = proc.tokenizer(" red", add_special_tokens=False)["input_ids"]
        ids = torch.cat([inp["input_ids"], torch.tensor([cont])], 1)
        feed = dict(inp, input_ids=ids, attention_mask=torch.ones_like(ids),
                    mm_token_type_ids=torch.cat([inp["mm_token_type_ids"], torch.zeros(1, len(cont), dtype=torch.long)], 1))
        with torch.no_grad():
            logits = model(**feed).logits[0]
        n = inp["input_ids"].shape[1]
        lp = torch.log_softmax(logits[n - 1: n - 1 + len(cont)], -1)
        ref = sum(lp[k, t].item() for k, t in enumerate(cont))
        assert got[i][0] == pytest.approx(ref, abs=1e-4)
        assert got[i][1] == all(lp[k].argmax().item() == t for k, t in enumerate(cont))


def _scope_tokens(m, i, scope, batch_ctx=CTX):
    """Decode the tokens the wrapper would intervene on for doc i (inside a left-padded batch)."""
    images = [m.visuals(lambda d: [d["image"]], d, "x") for d in DOCS]
    rendered, users = zip(*(m.codec.render(c, 1) for c in batch_ctx))
    enc = m.codec.encode(list(rendered), images)
    spec = m.spec.replace(block=["L0H0"], scope=scope)
    plan = m.codec.plan([spec] * len(DOCS), list(rendered), list(users), enc["input_ids"], enc["attention_mask"],
                        DOCS, [f"t doc {k}" for k in range(len(DOCS))])
    pos = plan.mask[i].nonzero().flatten()
    return m.tokenizer.decode(enc["input_ids"][i, pos]), enc, pos


def test_instruction_scope_is_exactly_the_instruction_tokens(tiny_qwen25_dir):
    m = _model(tiny_qwen25_dir, min_pixels=56 * 56)
    for i in range(3):
        text, enc, pos = _scope_tokens(m, i, "instruction")
        assert text.strip() == DOCS[i]["instruction"]
        assert (pos[1:] - pos[:-1] == 1).all()  # one contiguous span
    text, enc, pos = _scope_tokens(m, 1, "prompt_text")
    assert text.strip() == CTX[1].replace("<image>", "")
    text, enc, pos = _scope_tokens(m, 0, "last")
    assert text == "\n" and pos.tolist() == [enc["input_ids"].shape[1] - 1]
    text, enc, pos = _scope_tokens(m, 0, "prompt")
    assert len(pos) == int(enc["attention_mask"][0].sum())  # every real position, no padding


def test_missing_instruction_names_the_doc(tiny_qwen25_dir):
    docs = DOCS[:2] + [{"instruction": "Follow the picture.", "image": DOCS[2]["image"]}]
    m = _model(tiny_qwen25_dir, docs=docs, block="L0H0", min_pixels=56 * 56)
    with pytest.raises(InstructionNotFound, match="t doc 2: instruction 'Follow the picture.' does not occur"):
        m.generate_until(_gen_requests())
    docs = DOCS[:2] + [{"image": DOCS[2]["image"]}]
    m = _model(tiny_qwen25_dir, docs=docs, block="L0H0", min_pixels=56 * 56)
    with pytest.raises(InstructionNotFound, match="t doc 2: the doc has no instruction text"):
        m.generate_until(_gen_requests())
    # other scopes need no instruction
    m = _model(tiny_qwen25_dir, docs=docs, block="L0H0", scope="last", min_pixels=56 * 56)
    assert len(m.generate_until(_gen_requests())) == 3


def test_missing_image_is_a_data_error(tiny_qwen25_dir):
    docs = [dict(DOCS[0], image=None)] + DOCS[1:]
    m = _model(tiny_qwen25_dir, docs=docs)
    with pytest.raises(DataError, match="t doc 0: the doc's image is missing"):
        m.generate_until(_gen_requests())


def test_bad_model_args_are_clear(tiny_qwen25_dir):
    from mf_harness.errors import MfHarnessError
    from mf_harness.core.spec import SpecError

    with pytest.raises(SpecError, match="L9H0 is out of range.*layer must be 0..3"):
        IntervenedHF(pretrained=str(tiny_qwen25_dir), block="L9H0")
    with pytest.raises(MfHarnessError, match=r"unknown model_args for intervened_qwen: \['blok'\]"):
        IntervenedHF(pretrained=str(tiny_qwen25_dir), blok="L0H0")
    with pytest.raises(MfHarnessError, match="cannot load checkpoint"):
        IntervenedHF(pretrained="/nonexistent/checkpoint")
