"""Every family of the architecture table, on a tiny real checkpoint, through the one wrapper.

Parametrized over `mf_harness.core.arch.ARCH`: a new row is tested here as soon as `mf_harness.tiny`
can build it. Per family: the prompt is lmms-eval's (snapshots), the instruction scope is
found after that family's image expansion, the hooks are exact (coefficient 1 bit-exact,
block = minus W_O[:, h] z_h, amplify multiplies), left-padded batches equal single rows
(generate and loglikelihood), loglikelihood equals a hand-made forward, and text-only
requests work.
"""

import pytest
import torch
from PIL import Image

from lmms_eval.api.instance import Instance

from mf_harness.core.arch import ARCH, geometry, resolve
from mf_harness.core.hooks import HeadPlan, active_handles, intervene
from mf_harness.lmms.model import IntervenedHF
from mf_harness.core.spec import InterventionSpec

FAMILIES = list(ARCH)
INSTR = "You should follow the textual context rather than the visual content."
INSTR2 = "Focus on the textual context; ignore visual content."
DOCS = [
    {"instruction": INSTR, "image": Image.new("RGB", (84, 84), (200, 30, 30))},
    {"instruction": INSTR, "image": Image.new("RGB", (112, 84), (30, 200, 30))},
    {"instruction": INSTR2, "image": Image.new("RGB", (56, 84), (9, 9, 200))},
]
CTX = [
    f"Text context: The square in the picture is blue.\n{INSTR} What colour is the shape?\nAnswer with one word.",
    f"<image>Text context: A large green circle sits in a white field.\n{INSTR} What colour?",
    f"{INSTR2} Which colour is it?",  # the instruction right after the image: edge of the expansion
]
IMAGE = lambda d: [d["image"]]  # noqa: E731


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = build_tiny_vlm(tmp_path_factory.mktemp(family), TinyConfig(family=family, seed=7))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def wrappers(family_dirs):
    """One loaded wrapper per (family, batch size); ``get(family, n, spec)`` gives a view under ``spec``."""
    cache = {}

    def get(family, batch_size=1, spec=InterventionSpec()):
        key = (family, batch_size)
        if key not in cache:
            lm = IntervenedHF(pretrained=str(family_dirs(family)), batch_size=batch_size, attn_implementation="eager")
            lm.task_dict = {"t": {"test": DOCS}}
            cache[key] = lm
        return cache[key].with_spec(spec)

    return get


def _heads(lm, *names):
    """Heads ``L{l}H{h}`` with ``l`` taken as the l-th layer that has heads (every layer, except in hybrid
    decoders such as Qwen3.5)."""
    hl = lm.geometry.head_layers
    return [f"L{hl[int(n[1:n.index('H')]) % len(hl)]}H{n[n.index('H') + 1:]}" for n in names]


def _gen(ctx=CTX, visual=IMAGE, n=6):
    return [Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1},
                     arguments=(c, {"max_new_tokens": n, "until": ["\n"]}, visual, i, "t", "test"))
            for i, c in enumerate(ctx)]


def _ll(ctx=CTX, visual=IMAGE, cont=" red"):
    return [Instance(request_type="loglikelihood", idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1},
                     arguments=(c, cont, visual, i, "t", "test")) for i, c in enumerate(ctx)]


def _batch(lm, spec, visual=IMAGE):
    """Encoded left-padded batch of the three docs and the plan of ``spec``."""
    images = [lm.visuals(visual, d, "x") for d in DOCS]
    rendered, users = zip(*(lm.codec.render(c, len(im)) for c, im in zip(CTX, images)))
    enc = lm.codec.encode(list(rendered), images)
    plan = lm.codec.plan([spec] * 3, list(rendered), list(users), enc["input_ids"], enc["attention_mask"], DOCS,
                         [f"t doc {k}" for k in range(3)])
    return enc, plan


# ------------------------------------------------------------------ the table and the prompts

SNAPSHOT_USER = "Text context: It is red.\nFollow the text. What colour?"
_QWEN = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{img}" + SNAPSHOT_USER +
         "<|im_end|>\n<|im_start|>assistant\n")
SNAPSHOTS = {  # lmms-eval's layout for each family, rendered by the checkpoint's own chat template
    "qwen2_5_vl": _QWEN.format(img="<|vision_start|><|image_pad|><|vision_end|>"),
    "qwen2_vl": _QWEN.format(img="<|vision_start|><|image_pad|><|vision_end|>"),
    "qwen3_vl": _QWEN.format(img="<|vision_start|><|image_pad|><|vision_end|>"),
    "qwen3_vl_moe": _QWEN.format(img="<|vision_start|><|image_pad|><|vision_end|>"),
    "qwen3_5": _QWEN.format(img="<|vision_start|><|image_pad|><|vision_end|>") + "<think>\n",  # enable_thinking
    "qwen3_5_moe": _QWEN.format(img="<|vision_start|><|image_pad|><|vision_end|>") + "<think>\n",
    "internvl": "<|im_start|>user\n<IMG_CONTEXT>\n" + SNAPSHOT_USER + "<|im_end|>\n<|im_start|>assistant\n",
    "llava": "USER: <image>\n" + SNAPSHOT_USER + " ASSISTANT:",
    "llava_next": "[INST] <image>\n" + SNAPSHOT_USER + " [/INST]",  # the tokenizer adds <s>
    "llava_onevision": "<|im_start|>user <image>\n" + SNAPSHOT_USER + "<|im_end|><|im_start|>assistant\n",
    "gemma3": ("<bos><start_of_turn>user\nYou are a helpful assistant.\n\n<start_of_image>" + SNAPSHOT_USER +
               "<end_of_turn>\n<start_of_turn>model\n"),
    # gemma-4-31B-it's template: the system text as parts gains a trailing space; an empty thought channel
    "gemma4": ("<bos><|turn>system\nYou are a helpful assistant. <turn|>\n<|turn>user\n<|image|>" + SNAPSHOT_USER +
               "<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"),
    # lmms-eval's glm4v wrapper has no system turn by default; GLM-4.1V-9B-Thinking's template writes [gMASK]<sop>
    "glm4v": "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>" + SNAPSHOT_USER + "<|assistant|>\n",
    # (the tiny GLM-4.5V uses GLM-4.1V's template; see mf_harness.tiny.builders_2026)
    "glm4v_moe": "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>" + SNAPSHOT_USER + "<|assistant|>\n",
    "idefics3": "<|begin_of_text|>User:<image>" + SNAPSHOT_USER + "<end_of_utterance>\nAssistant:",
    "smolvlm": "<|im_start|>User:<image>" + SNAPSHOT_USER + "<end_of_utterance>\nAssistant:",
}


def test_every_row_has_a_snapshot_and_a_tiny_builder():
    from mf_harness.tiny import FAMILIES as BUILT

    assert set(SNAPSHOTS) == set(ARCH) == set(BUILT)


def test_the_readme_family_table_lists_every_row_with_its_wrapper():
    """README's family table: one `model_type` per row of the architecture table, on a line naming the lmms-eval
    wrapper whose conventions that row follows."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text[text.index("| family (`model_type`) |"):]
    table = table[:table.index("\n\n")].splitlines()[2:]
    listed = {}
    for line in table:
        family_cell, _, wrapper_cell = line.split("|")[1:4]
        for t in re.findall(r"`(\w+)`", family_cell):
            listed[t] = wrapper_cell
    assert set(listed) == set(ARCH)
    for family, cell in listed.items():
        assert ARCH[family].upstream.split()[0] in cell, (family, cell)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_snapshot_and_defaults_follow_upstream(wrappers, family):
    lm = wrappers(family)
    row = ARCH[family]
    rendered, user = lm.codec.render("<image>" + SNAPSHOT_USER, 1)
    assert rendered == SNAPSHOTS[family]
    assert user == SNAPSHOT_USER
    assert lm.default_max_new_tokens == row.prompt.max_new_tokens
    assert lm.model_name == row.alias
    _, layers, _, oprojs = resolve(lm.model)
    geo = geometry(lm.model)
    assert len(layers) == geo.num_layers == 4 and all(oprojs[i] is not None for i in geo.head_layers)
    # text-only: the same turn without the image
    rendered0, _ = lm.codec.render("Question: 2+2?", 0)
    assert row.prompt.image_token in rendered and row.prompt.image_token not in rendered0 and "Question: 2+2?" in rendered0


# ------------------------------------------------------------------ scopes after image expansion


@pytest.mark.parametrize("family", FAMILIES)
def test_instruction_positions_decode_to_the_instruction(wrappers, family):
    lm = wrappers(family)
    enc, plan = _batch(lm, InterventionSpec(block=_heads(lm, "L0H0"), scope="instruction"))
    ids = enc["input_ids"]
    assert (enc["attention_mask"][:, 0] == 0).any(), "the batch should be left-padded"
    n_image = [int(torch.isin(ids[b], torch.tensor(sorted(lm.codec.image_token_ids))).sum()) for b in range(3)]
    assert min(n_image) > 0
    for b in range(3):
        pos = plan.mask[b].nonzero().flatten()
        assert lm.tokenizer.decode(ids[b, pos]).strip() == DOCS[b]["instruction"], b
        assert (pos[1:] - pos[:-1] == 1).all()
    enc, plan = _batch(lm, InterventionSpec(block=_heads(lm, "L0H0"), scope="prompt_text"))
    pos = plan.mask[1].nonzero().flatten()
    assert lm.tokenizer.decode(ids[1, pos]).strip() == CTX[1].replace("<image>", "")


# ------------------------------------------------------------------ golden hook tests


def _capture(model, layer):
    oproj = resolve(model)[3][layer]
    rec = {"in": [], "out": []}
    hs = [oproj.register_forward_pre_hook(lambda m, a: rec["in"].append(a[0].detach().clone())),
          oproj.register_forward_hook(lambda m, a, o: rec["out"].append(o.detach().clone()))]
    return rec, hs


def _forward(lm, enc, plan=None, layer=1):
    rec, hs = _capture(lm.model, layer)
    try:
        with torch.no_grad(), intervene(lm.model, plan):
            logits = lm.model(**enc).logits
    finally:
        for h in hs:
            h.remove()
    return logits, rec["in"][0], rec["out"][0]


def _golden_layers(geo):
    """Layer 1, and where head widths differ per layer (Gemma 4) the first layer of each other width."""
    layers = [1]
    for i in geo.head_layers:
        if geo.width(i) not in {geo.width(j) for j in layers}:
            layers.append(i)
    return layers


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_are_exact(wrappers, family):
    lm = wrappers(family)
    geo = geometry(lm.model)
    for layer in _golden_layers(geo):
        _golden(lm, geo, layer, head=2)
    assert active_handles() == 0


def _golden(lm, geo, layer, head):
    d = geo.width(layer)
    enc, plan = _batch(lm, InterventionSpec(block=[(layer, head)], scope="instruction"))
    clean, z, out_clean = _forward(lm, enc, layer=layer)
    assert z.shape[-1] == geo.num_heads * d
    # coefficient 1 everywhere: bit-identical
    assert layer in geo.head_layers
    every = InterventionSpec(amplify=[(l, h) for l in geo.head_layers for h in range(geo.num_heads)],
                             coefficient=1.0000001)
    ones = HeadPlan.build([every] * 3, torch.ones_like(plan.mask), geo.num_layers, geo.num_heads)
    for c in ones.coef.values():
        c.fill_(1.0)
    assert torch.equal(_forward(lm, enc, ones, layer)[0], clean)
    # block = the clean output minus the head's contribution W_O[:, h] z_h, at the scope positions only
    logits, z2, out = _forward(lm, enc, plan, layer)
    assert torch.equal(z2, z)  # upstream of the edit: untouched
    W = resolve(lm.model)[3][layer].weight
    contribution = z[..., head * d:(head + 1) * d] @ W[:, head * d:(head + 1) * d].T
    mask = plan.mask
    assert torch.allclose(out[mask], (out_clean - contribution)[mask], atol=1e-6, rtol=0)
    assert torch.equal(out[~mask], out_clean[~mask])
    assert not torch.allclose(logits[mask], clean[mask])
    # amplify multiplies the head's slice
    amp = HeadPlan.build([InterventionSpec(amplify=[(layer, head)], coefficient=10)] * 3, mask, geo.num_layers,
                         geo.num_heads)
    _, z3, out3 = _forward(lm, enc, amp, layer)
    zz = z3.clone()
    zz[..., head * d:(head + 1) * d] *= torch.where(mask, 10.0, 1.0)[..., None]
    assert torch.allclose(out3, torch.nn.functional.linear(zz, W, resolve(lm.model)[3][layer].bias), atol=1e-5)


# ------------------------------------------------------------------ batching, loglikelihood, text-only


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generate_equals_single_rows(wrappers, family):
    spec = InterventionSpec(block=_heads(wrappers(family), "L0H0", "L1H1", "L2H2", "L3H3", "L3H0", "L2H1"),
                            scope="instruction")
    one, three = wrappers(family, 1, spec), wrappers(family, 3, spec)
    got1, got3 = one.generate_until(_gen()), three.generate_until(_gen())
    assert got1 == got3 and all(isinstance(a, str) for a in got1)


def _manual_loglikelihood(lm, ctx, images, cont):
    """log p(cont | prompt) from one unpadded row, by hand."""
    rendered, _ = lm.codec.render(ctx, len(images))
    enc = lm.codec.encode([rendered], [images])
    c = lm.tokenizer(cont, add_special_tokens=False)["input_ids"]
    n = enc["input_ids"].shape[1]
    feed = {}
    for k, v in enc.items():
        if torch.is_tensor(v) and v.shape == enc["input_ids"].shape:  # per-token inputs
            tail = torch.tensor([c]) if k == "input_ids" else torch.full((1, len(c)), int(k == "attention_mask"))
            v = torch.cat([v, tail.to(v.dtype)], 1)
        feed[k] = v
    with torch.no_grad():
        logits = lm.model(**feed).logits[0].float()
    lp = torch.log_softmax(logits[n - 1: n - 1 + len(c)], -1)
    return sum(lp[k, t].item() for k, t in enumerate(c)), all(lp[k].argmax().item() == t for k, t in enumerate(c))


@pytest.mark.parametrize("family", FAMILIES)
def test_loglikelihood_batched_equals_single_and_manual(wrappers, family):
    spec = InterventionSpec(block=_heads(wrappers(family), "L0H1", "L2H3"), scope="instruction")
    for s in (InterventionSpec(), spec):
        one, three = wrappers(family, 1, s), wrappers(family, 3, s)
        a, b = one.loglikelihood(_ll()), three.loglikelihood(_ll())
        for (x, gx), (y, gy) in zip(a, b):
            assert x == pytest.approx(y, abs=1e-4) and gx == gy
    one = wrappers(family, 1)
    ref = _manual_loglikelihood(one, CTX[0], one.visuals(IMAGE, DOCS[0], "x"), " red")
    got = one.loglikelihood(_ll())[0]
    assert got[0] == pytest.approx(ref[0], abs=1e-4) and got[1] == ref[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_requests(wrappers, family):
    """MMLU/IFEval-style requests: no doc_to_visual, or one that returns []."""
    spec = InterventionSpec(block=_heads(wrappers(family), "L0H1", "L2H3"), scope="instruction")
    one, two = wrappers(family, 1, spec), wrappers(family, 2, spec)
    for visual in (None, lambda d: []):
        assert one.generate_until(_gen(visual=visual)) == two.generate_until(_gen(visual=visual))
        for (x, _), (y, _) in zip(one.loglikelihood(_ll(visual=visual)), two.loglikelihood(_ll(visual=visual))):
            assert x == pytest.approx(y, abs=1e-4)
    enc, plan = _batch(one, spec, visual=None)
    assert not torch.isin(enc["input_ids"], torch.tensor(sorted(one.codec.placeholder_ids))).any()
    pos = plan.mask[0].nonzero().flatten()
    assert one.tokenizer.decode(enc["input_ids"][0, pos]).strip() == INSTR


# ------------------------------------------------------------------ hybrid decoders (Qwen3.5)


def test_hybrid_decoder_keeps_layer_indices_and_rejects_layers_without_heads(wrappers):
    from mf_harness.core.spec import SpecError

    lm = wrappers("qwen3_5")
    geo = lm.geometry
    assert (geo.num_layers, geo.head_layers, geo.total_heads) == (4, (1, 3), 2 * geo.num_heads)
    _, layers, attns, oprojs = resolve(lm.model)
    assert len(layers) == 4 and attns[0] is None and oprojs[2] is None and oprojs[3] is not None
    for bad in (["L0H1"], ["L1H0", "L2H3"]):
        with pytest.raises(SpecError, match=r"has no attention heads.*layers with heads are 1, 3"):
            lm.with_spec(InterventionSpec(block=bad))
    with pytest.raises(SpecError, match="layers with heads are 1, 3"):
        IntervenedHF(pretrained=lm.pretrained, block="L2H0")
    with pytest.raises(SpecError, match="layers with heads are 1, 3"):
        with intervene(lm.model, HeadPlan.build([InterventionSpec(amplify=["L0H0"], coefficient=2)],
                                                torch.ones(1, 3, dtype=torch.bool), 4, geo.num_heads)):
            pass
    assert active_handles() == 0


def test_gemma4_heads_have_their_layers_width_and_kv_shared_layers_none(wrappers):
    """Gemma 4: full-attention layers have wider heads (``global_head_dim``) than sliding ones, read from the
    config per layer; one width for the whole model is an error, not a guess. KV-shared layers (E2B/E4B) have no
    editable heads: their outputs at a prompt position reach only that position's own logits (generate's prefill
    does not even compute them there), so a spec naming one is rejected when bound, listing the layers that have
    heads."""
    from mf_harness.core.arch import ArchError, kv_shared_layers
    from mf_harness.core.spec import SpecError

    lm = wrappers("gemma4")
    geo = geometry(lm.model)
    tc = lm.model.config.text_config
    assert geo.head_dims == (16, 32, 16, 32) == tuple(tc.per_layer_config[i].head_dim for i in range(4))
    assert [resolve(lm.model)[3][i].in_features for i in geo.head_layers] == [64, 128]
    with pytest.raises(ArchError, match="head widths differ per layer"):
        geo.head_dim
    assert kv_shared_layers(tc) == (2, 3) and geo.head_layers == (0, 1) and geo.total_heads == 8
    for bad in (["L2H1"], ["L0H0", "L3H2"]):
        with pytest.raises(SpecError, match=r"KV-shared layer.*layers with heads are 0, 1"):
            lm.with_spec(InterventionSpec(block=bad))
    # the premise: zeroing every head of a KV-shared layer at the instruction leaves the last position's logits as
    # they were; the same in layer 0 changes them (layer 1, the last before the shared ones, feeds only their
    # queries: at the instruction it is what a final layer is anywhere)
    enc, plan = _batch(lm, InterventionSpec(block=["L0H0"], scope="instruction"))
    mask = plan.mask

    def last_logits(layer=None):
        def zero(m, args):
            return (args[0] * (~mask)[..., None].to(args[0].dtype),)
        h = layer is not None and lm.model.model.language_model.layers[layer].self_attn.o_proj.register_forward_pre_hook(
            zero)
        try:
            with torch.no_grad():
                return lm.model(**enc).logits[:, -1]
        finally:
            h and h.remove()

    clean = last_logits()
    assert torch.equal(last_logits(3), clean) and torch.equal(last_logits(2), clean)
    assert not torch.allclose(last_logits(0), clean)


# ------------------------------------------------------------------ the alignment behind the scopes


def test_align_expanded_handles_every_expansion_shape():
    from mf_harness.core.scopes import ScopeError, align_expanded

    P, I, A, B, BOS, NL, NL2, NL3, T = 100, 101, 102, 103, 1, 10, 11, 12, 104  # placeholder, image, markers, ...
    text = [20, 21, 22]
    # Qwen: the placeholder becomes a run of itself
    plain = [5, 6, P, 7, *text, 8]
    assert align_expanded(plain, [5, 6, P, P, P, 7, *text, 8], {P}) == [0, 1, 2, 5, 6, 7, 8, 9]
    # InternVL: <img> I*n </img> around it; a tokenizer BOS in front
    got = align_expanded([5, P, NL, *text], [BOS, 5, A, I, I, I, B, NL, *text], {P, I})
    assert got == [1, 2, 7, 8, 9, 10]
    # Gemma 3: "\n\n" B I*n E "\n\n" inserted, and the newline before it merges with the inserted ones
    got = align_expanded([5, NL, P, *text, 9], [5, NL3, A, I, I, B, NL2, *text, 9], {P, I})
    assert got[0] == 0 and got[1] == -1 and got[3:] == [7, 8, 9, 10]
    # Idefics3 with image splitting: tiles, row tags and plain newlines inside the run
    run = [A, T, I, I, A, T, I, I, NL, NL2, A, T, I, I, A]
    assert align_expanded([5, P, *text], [5, *run, *text], {P, I})[2:] == [1 + len(run) + k for k in range(3)]
    # text that is not in the processor's tokens (far from any image) is an error
    with pytest.raises(ScopeError, match="cannot align"):
        align_expanded([5, P, 6, 7, 30, 8, 9, 40], [5, P, P, 6, 7, 31, 8, 9, 40], {P})
