"""The embedded model's trainer and data: determinism, the training prompt, the routing mask, the hold-out."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import replace

import pytest
import torch

from mf_harness.embedded.train import synth
from mf_harness.embedded import train as T

# A short run: small batches, a small tokenizer corpus; the same code path as the full run.
QUICK = replace(T.DEFAULT, steps=20, batch_size=8, warmup=5, tokenizer_rows=300)


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    out = []
    for name in ("a", "b"):
        path = tmp_path_factory.mktemp(f"quick_{name}")
        info = T.train(QUICK, path, log=lambda *_: None, probe_every=0)
        out.append((path, info))
    return out


def test_short_training_is_deterministic(quick_runs):
    (pa, ia), (pb, ib) = quick_runs
    assert ia["weights_sha256"] == ib["weights_sha256"]
    assert T.weights_hash(pa) == T.weights_hash(pb) == ia["weights_sha256"]
    assert (pa / "tokenizer.json").read_bytes() == (pb / "tokenizer.json").read_bytes()
    assert all(x == x for x in ia["loss_history"])  # no NaN


def test_short_training_moves_the_weights_and_saves_a_full_checkpoint(quick_runs, tmp_path):
    path, info = quick_runs[0]
    T.build_initial(tmp_path, QUICK)
    assert T.weights_hash(tmp_path) != info["weights_sha256"]
    for f in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja",
              "generation_config.json"):
        assert (path / f).is_file(), f
    model, processor = T.load_checkpoint(path)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()


def test_probing_during_training_does_not_change_the_weights(tmp_path, quick_runs):
    info = T.train(QUICK, tmp_path, log=lambda *_: None, probe_every=7)
    assert info["weights_sha256"] == quick_runs[0][1]["weights_sha256"]


def test_a_different_seed_gives_different_weights(tmp_path, quick_runs):
    info = T.train(replace(QUICK, seed=1, steps=2), tmp_path, log=lambda *_: None, probe_every=0)
    assert info["weights_sha256"] != quick_runs[0][1]["weights_sha256"]


# ---------------------------------------------------------------------------- batches and masks


@pytest.fixture(scope="module")
def model_and_processor(quick_runs):
    model, processor = T.load_checkpoint(quick_runs[0][0], attn="eager")
    return model.eval(), processor


def test_training_batch_is_the_mfr_prompt_with_the_answer(model_and_processor):
    _, processor = model_and_processor
    rows = list(synth.training_rows(3, 4))
    batch = T.encode_batch(processor, rows)
    tok = processor.tokenizer
    for b, r in enumerate(rows):
        ids = batch.inputs["input_ids"][b, : batch.length[b]].tolist()
        text = tok.decode(ids)
        assert text.endswith(f"<|im_start|>assistant\n {r['answer']}<|im_end|>")
        assert f"Text context: {r['context']}\n{r['instruction']} {r['question']}\n" in text
        assert tok.decode([ids[i] for i in batch.instruction[b]]).strip() == r["instruction"]
        assert tok.decode([ids[i] for i in batch.question[b]]).strip() == r["question"]
        (p0, t0), (p1, t1) = batch.targets[b]
        assert tok.decode([t0]) == " " + r["answer"] and t1 == tok.eos_token_id and p1 == p0 + 1
        assert ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) == 9


def test_no_routing_mask_equals_plain_attention(model_and_processor):
    model, processor = model_and_processor
    batch = T.encode_batch(processor, list(synth.training_rows(4, 3)))
    # a "routing" mask that cuts nothing: the causal + padding mask we build must equal the model's own
    for b in range(3):
        batch.content[b] = (0, 0)
    masks = T.route_masks(batch, model.config.text_config.num_hidden_layers, 0, torch.float32)
    with torch.no_grad():
        plain = model(**batch.inputs).logits
        with T.attention_masks(model, masks):
            ours = model(**batch.inputs).logits
    for b in range(3):
        n = batch.length[b]
        torch.testing.assert_close(ours[b, :n], plain[b, :n], rtol=1e-5, atol=1e-5)


def test_routing_mask_hides_the_content_from_post_instruction_positions(model_and_processor):
    model, processor = model_and_processor
    rows = list(synth.training_rows(5, 2))
    other = [dict(r, image=r["image"].rotate(90)) for r in rows]  # same tokens, other pixels
    L = model.config.text_config.num_hidden_layers
    outs = []
    for rs in (rows, other):
        batch = T.encode_batch(processor, rs)
        # delay = L: post-instruction positions also never read the instruction tokens
        with torch.no_grad(), T.attention_masks(model, T.route_masks(batch, L, L, torch.float32)):
            logits = model(**batch.inputs).logits
        outs.append((batch, logits))
    (b0, l0), (_, l1) = outs
    for b in range(2):
        after = b0.instruction[b][-1] + 1
        n = b0.length[b]
        torch.testing.assert_close(l0[b, after:n], l1[b, after:n], rtol=0, atol=0)
        assert not torch.equal(l0[b, b0.content[b][0] + 1], l1[b, b0.content[b][0] + 1])  # the image did change


# ---------------------------------------------------------------------------- data


def test_generator_is_deterministic_and_in_the_mfr_schema():
    a = list(synth.training_rows(11, 12))
    b = list(synth.training_rows(11, 12))
    c = list(synth.training_rows(12, 12))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "image"} | {"png": _png(r["image"])} for r in rows]  # noqa: E731
    assert strip(a) == strip(b) != strip(c)
    assert strip(list(synth.training_rows(11, 4, start=8))) == strip(a[8:])  # row i depends on (seed, i) only
    for r in a:
        assert {"image_id", "task", "question", "answer_vision", "answer_text", "context", "image"} <= set(r)
        assert r["image"].size == (84, 84)
        assert r["answer"] == (r["answer_vision"] if r["follow"] == "vision" else r["answer_text"])
        assert (r["answer_vision"] != r["answer_text"]) == r["conflict"]


def test_bundled_eval_set_is_held_out_of_training():
    import datasets

    from mf_harness.tasks.mfr.mfr_data import COLORS, bundled_synthetic_path

    ds = datasets.load_dataset("parquet", data_files={"test": str(bundled_synthetic_path())}, split="test")
    bundled_pairs = {(r["answer_vision"], r["answer_text"]) for r in ds.remove_columns(["image"]) if r["task"] == "color"}
    assert bundled_pairs <= synth.HELDOUT_COLOR_PAIRS
    assert not set(synth.TRAIN_COLOR_PAIRS) & synth.HELDOUT_COLOR_PAIRS
    assert len(synth.TRAIN_COLOR_PAIRS) + len(synth.HELDOUT_COLOR_PAIRS) == len(COLORS) * (len(COLORS) - 1)
    held_instr = {s for v in synth.HELDOUT_INSTRUCTIONS.values() for s in v}
    assert not held_instr & {s for v in synth.TRAIN_INSTRUCTIONS.values() for s in v}
    eval_images = {hashlib.sha256(im.convert("RGB").tobytes()).hexdigest() for im in ds["image"]}
    for r in synth.training_rows(T.DEFAULT.seed, 1500):
        if r["task"] == "color" and r["conflict"]:
            assert (r["answer_vision"], r["answer_text"]) not in synth.HELDOUT_COLOR_PAIRS
        assert r["instruction"] not in held_instr
        assert hashlib.sha256(r["image"].tobytes()).hexdigest() not in eval_images


def test_stated_attributes():
    r = next(r for r in synth.training_rows(0, 50) if r["task"] == "counting" and r["follow"] == "text"
             and r["conflict"])
    said = synth.stated(r)
    assert said["counting"] == r["answer_text"]
    assert synth.stated(r, "vision")["counting"] == r["answer_vision"]


def test_record_of_the_quick_run_is_json(quick_runs):
    info = quick_runs[0][1]
    json.dumps(info)
    assert info["config"]["steps"] == 20 and info["parameters"] > 0
