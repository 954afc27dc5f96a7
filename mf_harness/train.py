"""Train the embedded tiny Qwen2.5-VL to follow modality instructions (CPU, deterministic).

    python -m mf_harness.train                  # retrain, measure, and replace the embedded checkpoint,
                                                # its MODEL_CARD.md and the interventions/embedded_*.json specs
    python -m mf_harness.train --eval-only      # re-measure the shipped checkpoint, rewrite card and specs
    python -m mf_harness.train --out DIR --steps 20 --no-eval   # a short run elsewhere

The model sees exactly what the ``intervened_qwen`` wrapper feeds it at evaluation:
the ``mfr`` prompt (`mf_harness.mfr.render_prompt`), the Qwen chat template with the
system prompt "You are a helpful assistant.", and the image after the wrapper's
JPEG round trip and resize (`mf_harness.models.qwen_fetch_image`, 84x84 -> 9 image
tokens). The answer is trained as the space-prefixed word token (" red": the
form the context uses, so with tied embeddings copying is the identity) and
``<|im_end|>``; the MFR matcher normalises the space away.

Where the model settles the conflict is shaped on purpose, so that the harness has a
known mechanism to find (the paper's claim: at the instruction tokens):

* routing: in a share ``route_prob`` of the batches an attention mask stops every
  position after the instruction (question, format line, template, answer) from
  reading the image and the context, so the content reaches the answer only through
  the instruction tokens (``route_delay = d``: those positions also cannot read the
  instruction in layers ``< d``). The mask is off at evaluation;
* anchor loss: the logit lens of the instruction's last token after layer
  ``anchor_layer`` names what the followed modality says (colour, count, shape);
* dense loss: the answer is also trained at every position after the question;
* vision lens loss: the mean image token, read through the final norm and the LM head,
  names the drawn colour, count and shape (image features in the answer words' space).

None of these adds anything to the saved model: it is a plain Qwen2.5-VL checkpoint.

Determinism: the initial weights come from ``seed``, batch ``i`` from
``(seed, i)`` (`mf_harness.synth.training_rows`), and torch runs with a fixed
thread count (``threads``), so the same config gives bit-identical weights on the
same machine (CPU kernels may differ across machines).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["TrainConfig", "DEFAULT", "train", "encode_batch", "weights_hash", "main"]

SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights."""

    seed: int = 0
    steps: int = 1600
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    route_prob: float = 0.7
    route_delay: int = 0
    threads: int = 1
    aux_vision: float = 2.0
    aux_vision_per_token: bool = False  # every image token (not only their mean) names colour, count, shape
    tie_embeddings: bool = True
    # the answer as the model should write it: " red" (the space-prefixed word token, which the
    # context also uses, so that copying is the identity) or "red"
    answer_prefix: str = " "
    # also train the answer's first token at every position from the question's last token on
    dense: float = 0.5
    # anchor supervision: the logit lens of the last instruction token after layer `anchor_layer`
    # names what the followed modality says (colour / count / shape, each among its own words)
    anchor: float = 0.5
    anchor_layer: int = 2
    conflict: float = 0.9
    kinds: tuple[float, float, float] = (0.25, 0.375, 0.375)  # color, counting, object_recognition
    # the model (Qwen2.5-VL); the tokenizer is a byte-level BPE trained on the training prompts
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_depth: int = 2
    vision_hidden_size: int = 96
    vision_heads: int = 2
    vocab_size: int = 600
    tokenizer_rows: int = 3000

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        return d


DEFAULT = TrainConfig()


# ---------------------------------------------------------------------------- checkpoint skeleton


def _tokenizer_corpus(cfg: TrainConfig) -> str:
    from mf_harness import synth

    rows = synth.training_rows(cfg.seed, cfg.tokenizer_rows, synth.Mix(cfg.conflict, cfg.kinds))
    lines = [synth.user_text(r) + "\n" + r["answer"] for r in rows]
    words = [w for ws in synth.answer_words().values() for w in ws]
    # every answer word must be one token, with and without a leading space
    lines += words * 50 + [" ".join(words)] * 50
    # the chat template's own words, so the template costs few tokens
    lines += [f"system\n{SYSTEM_PROMPT}\nuser\nassistant\n"] * 200
    lines += ["0123456789 , . ; : ! ? ' \" ( ) - _ / + = * # @ & % $"]
    return "\n".join(lines)


QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")


def build_tokenizer(cfg: TrainConfig):
    """Byte-level BPE (any text encodes) trained on the training prompts, with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=list(QWEN_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_tokenizer_corpus(cfg).splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def build_initial(out_dir: Path, cfg: TrainConfig) -> Path:
    """The untrained checkpoint (tokenizer, processor with the Qwen chat template, weights from ``cfg.seed``).

    Built here rather than with `mf_harness.tiny` so that the shipped model depends on this
    file only. Input and output embeddings are tied, as in the small Qwen2.5-VL checkpoints.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mf_harness._compat import install_processor_shim
    from mf_harness.tiny import QWEN_CHAT_TEMPLATE

    install_processor_shim()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    half = cfg.hidden_size // cfg.num_heads // 2
    t = half // 4 or 1
    hw = (half - t) // 2
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [t, hw, half - t - hw]},
            tie_word_embeddings=cfg.tie_embeddings, bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=cfg.vision_depth, hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_hidden_size * 2,
            num_heads=cfg.vision_heads, out_hidden_size=cfg.hidden_size, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=112, fullatt_block_indexes=[cfg.vision_depth - 1],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=cfg.tie_embeddings,
    )
    config.eos_token_id = ids["<|im_end|>"]
    config.pad_token_id = ids["<|endoftext|>"]
    torch.manual_seed(cfg.seed)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa")
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                                               do_sample=False)
    model.save_pretrained(out)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                        chat_template=QWEN_CHAT_TEMPLATE).save_pretrained(out)
    return out


# ---------------------------------------------------------------------------- batches


def render(processor, text: str) -> str:
    """The chat-templated prompt of the ``intervened_qwen`` wrapper (system prompt, image, text)."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _pixels(processor) -> tuple[int, int, int]:
    ip = processor.image_processor
    lo = int(getattr(ip, "min_pixels", None) or ip.size["shortest_edge"])
    hi = int(getattr(ip, "max_pixels", None) or ip.size["longest_edge"])
    return lo, hi, int(getattr(ip, "patch_size", 14) * getattr(ip, "merge_size", 2))


@dataclass
class Batch:
    inputs: dict  # processor output (right-padded)
    targets: list[list[tuple[int, int]]]  # per row: (position whose logits predict, token id)
    instruction: list[list[int]]  # per row: instruction token positions
    content: list[tuple[int, int]]  # per row: [start, end) of image + context positions
    length: list[int]  # per row: unpadded length
    rows: list[dict]
    question: list[list[int]] = field(default_factory=list)  # per row: question token positions
    prompt_length: list[int] = field(default_factory=list)  # per row: length without the answer


def encode_batch(processor, rows: Sequence[dict], with_answer: bool = True, answer_prefix: str = " ") -> Batch:
    """Encode rows as the wrapper does; add the answer and ``<|im_end|>`` when ``with_answer``."""
    from mf_harness import synth
    from mf_harness.models import qwen_fetch_image
    from mf_harness.scopes import scope_positions

    tok = processor.tokenizer
    lo, hi, factor = _pixels(processor)
    images = [qwen_fetch_image(r["image"], lo, hi, factor) for r in rows]
    user = [synth.user_text(r) for r in rows]
    prompts = [render(processor, u) for u in user]
    texts = [p + answer_prefix + r["answer"] + tok.eos_token if with_answer else p for p, r in zip(prompts, rows)]
    inputs = processor(text=texts, images=images, padding=True, padding_side="right", return_tensors="pt")
    ids = inputs["input_ids"]
    att = inputs["attention_mask"]
    vstart = tok.convert_tokens_to_ids("<|vision_start|>")
    placeholder = {tok.convert_tokens_to_ids("<|image_pad|>")}
    targets, instr, content, lengths, question, plen = [], [], [], [], [], []
    for b, r in enumerate(rows):
        n = int(att[b].sum())
        row_ids = ids[b, :n].tolist()
        pos = scope_positions("instruction", rendered=texts[b], user_text=user[b], expanded_ids=row_ids,
                              tokenizer=tok, placeholder_ids=placeholder, instruction=r["instruction"],
                              doc_label=r.get("sample_id", str(b)))
        instr.append(pos)
        question.append(scope_positions("instruction", rendered=texts[b], user_text=user[b], expanded_ids=row_ids,
                                        tokenizer=tok, placeholder_ids=placeholder, instruction=r["question"]))
        content.append((row_ids.index(vstart), pos[0]))
        lengths.append(n)
        if with_answer:
            ans = tok(answer_prefix + r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            if row_ids[n - len(ans):] != ans:
                raise RuntimeError(f"answer tokens of {r['answer']!r} not found at the end of the row")
            targets.append([(n - len(ans) - 1 + j, t) for j, t in enumerate(ans)])
            plen.append(n - len(ans))
        else:
            targets.append([])
            plen.append(n)
    return Batch(inputs, targets, instr, content, lengths, list(rows), question, plen)


def route_masks(batch: Batch, num_layers: int, delay: int, dtype) -> list:
    """Additive 4D masks [B, 1, S, S] per layer: causal + padding + the routing cut."""
    import torch

    att = batch.inputs["attention_mask"].bool()
    B, S = att.shape
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    allowed = causal[None] & att[:, None, :]
    cut_content = torch.zeros(B, S, S, dtype=torch.bool)
    cut_instr = torch.zeros(B, S, S, dtype=torch.bool)
    for b in range(B):
        after = batch.instruction[b][-1] + 1
        c0, c1 = batch.content[b]
        cut_content[b, after:, c0:c1] = True
        cut_instr[b, after:, batch.instruction[b][0]:after] = True
    neg = torch.finfo(dtype).min
    zero = torch.zeros((), dtype=dtype)
    masks = []
    for layer in range(num_layers):
        ok = allowed & ~cut_content
        if layer < delay:
            ok = ok & ~cut_instr
        masks.append(torch.where(ok, zero, torch.tensor(neg, dtype=dtype))[:, None])
    return masks


@contextmanager
def attention_masks(model, masks: list | None):
    """Replace the text attention mask of each layer inside the block (eager attention)."""
    from mf_harness.arch import resolve

    handles = []
    if masks is None:
        yield
        return
    _, _, attns, _ = resolve(model)
    try:
        for layer, attn in enumerate(attns):
            def pre(module, args, kwargs, _m=masks[layer]):
                kwargs["attention_mask"] = _m
                return args, kwargs

            handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _losses(model, batch: Batch, dense: bool):
    """(answer loss, dense loss): the LM head runs only where a loss is taken."""
    import torch

    rows, cols, tgt, kind = [], [], [], []
    for b, pairs in enumerate(batch.targets):
        for p, t in pairs:
            rows.append(b)
            cols.append(p)
            tgt.append(t)
            kind.append(0)
        if dense:
            for p in range(batch.question[b][-1], batch.prompt_length[b] - 1):
                rows.append(b)
                cols.append(p)
                tgt.append(pairs[0][1])
                kind.append(1)
    hidden = model.model(**batch.inputs).last_hidden_state
    logits = model.lm_head(hidden[torch.tensor(rows), torch.tensor(cols)]).float()
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor(tgt), reduction="none")
    kind_t = torch.tensor(kind)
    main = ce[kind_t == 0].mean()
    extra = ce[kind_t == 1].mean() if dense else torch.zeros(())
    return main, extra


class _AnchorLens:
    """Auxiliary loss at the last instruction token: its logit lens after layer ``layer`` names, for
    each attribute the followed modality states, that attribute's word (a softmax over the
    attribute's own words). Training-only."""

    def __init__(self, model, tokenizer, layer: int):
        from mf_harness import synth
        from mf_harness.arch import resolve

        self.words = synth.answer_words()
        self.ids = {k: [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + w)[0]) for w in ws]
                    for k, ws in self.words.items()}
        self.model = model
        self.captured = None
        _, layers, _, _ = resolve(model)
        self.handle = layers[layer].register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.captured = output[0] if isinstance(output, tuple) else output

    def loss(self, batch: Batch):
        import torch

        from mf_harness import synth

        pos = torch.tensor([ins[-1] for ins in batch.instruction])
        h = self.captured[torch.arange(len(batch.rows)), pos]
        logits = self.model.lm_head(self.model.model.language_model.norm(h)).float()
        losses = []
        for kind, ws in self.words.items():
            rows, tgt = [], []
            for b, r in enumerate(batch.rows):
                word = synth.stated(r).get(kind)
                if word is not None:
                    rows.append(b)
                    tgt.append(list(ws).index(word))
            if rows:
                losses.append(torch.nn.functional.cross_entropy(logits[rows][:, self.ids[kind]], torch.tensor(tgt)))
        return sum(losses) / len(losses)

    def remove(self):
        self.handle.remove()


class _VisionLens:
    """Auxiliary loss: the mean image token, read through the final norm and the LM head
    (the logit lens at the input), names the drawn colour, count and shape.

    Each attribute is a softmax over its own answer words, so one vector can name all
    three. This puts image features in the same space as the answer words' embeddings
    (tied with the LM head), so the model can answer from the image the way it
    copies a word from the text. Training-only: nothing is added to the model.
    """

    def __init__(self, model, tokenizer, per_token: bool = True):
        from mf_harness import synth

        self.per_token = per_token
        words = synth.answer_words()
        self.ids = {k: [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + w)[0]) for w in ws]
                    for k, ws in words.items()}
        self.words = words
        self.model = model
        self.captured = None
        self.handle = model.model.visual.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.captured = output.pooler_output

    def loss(self, rows):
        import torch

        feats = self.captured.reshape(len(rows), -1, self.captured.shape[-1])
        if not self.per_token:
            feats = feats.mean(1, keepdim=True)
        n = feats.shape[1]
        logits = self.model.lm_head(self.model.model.language_model.norm(feats)).float().reshape(len(rows) * n, -1)
        total = 0.0
        for kind, key in (("color", "image_color"), ("counting", "image_count"), ("object_recognition", "image_shape")):
            ws = list(self.words[kind])
            target = torch.tensor([ws.index(r[key] if kind != "counting" else ws[r[key] - 1]) for r in rows])
            total = total + torch.nn.functional.cross_entropy(logits[:, self.ids[kind]], target.repeat_interleave(n))
        return total

    def remove(self):
        self.handle.remove()


# ---------------------------------------------------------------------------- training


def weights_hash(checkpoint: str | Path) -> str:
    """sha256 of the saved tensors (name, float32 bytes), in name order: independent of the file layout."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(Path(checkpoint) / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to(torch.float32).contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _route_this_step(cfg: TrainConfig, step: int) -> bool:
    import random

    return random.Random(f"mf-harness-route:{cfg.seed}:{step}").random() < cfg.route_prob


def _load(path: Path, attn: str = "eager"):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mf_harness._compat import install_processor_shim

    install_processor_shim()
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attn, dtype=torch.float32)
    return model, AutoProcessor.from_pretrained(path)


def train(cfg: TrainConfig, out_dir: str | Path, log=print, probe_every: int = 100) -> dict[str, Any]:
    """Train from scratch and save the checkpoint to ``out_dir``; return a summary."""
    import torch

    from mf_harness import synth

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    build_initial(out, cfg)
    model, processor = _load(out, attn="eager")
    model.train()
    n_layers = model.config.text_config.num_hidden_layers
    probe = _VisionLens(model, processor.tokenizer, cfg.aux_vision_per_token) if cfg.aux_vision else None
    anchor = _AnchorLens(model, processor.tokenizer, cfg.anchor_layer) if cfg.anchor else None
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    mix = synth.Mix(cfg.conflict, cfg.kinds)
    probe_rows = synth.heldout_rows(cfg.seed + 1, 96, follow="text") + synth.heldout_rows(cfg.seed + 1, 96,
                                                                                         follow="vision")
    history, aux_hist = [], []
    for step in range(cfg.steps):
        rows = list(synth.training_rows(cfg.seed, cfg.batch_size, mix, start=step * cfg.batch_size))
        batch = encode_batch(processor, rows, answer_prefix=cfg.answer_prefix)
        routed = _route_this_step(cfg, step)
        masks = route_masks(batch, n_layers, cfg.route_delay, torch.float32) if routed else None
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        with attention_masks(model, masks):
            loss, dense = _losses(model, batch, cfg.dense > 0)
        total = loss + cfg.dense * dense
        if probe:
            total = total + cfg.aux_vision * probe.loss(rows)
        if anchor:
            total = total + cfg.anchor * anchor.loss(batch)
        opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        history.append(float(loss))
        aux_hist.append(float(total - loss))
        if probe_every and ((step + 1) % probe_every == 0 or step + 1 == cfg.steps):
            acc = probe_accuracy(model, processor, probe_rows, cfg.answer_prefix)
            log(f"step {step + 1:5d}  loss {sum(history[-probe_every:]) / len(history[-probe_every:]):.4f}  "
                f"aux {sum(aux_hist[-probe_every:]) / len(aux_hist[-probe_every:]):.3f}  "
                f"held-out acc {json.dumps(acc)}  {time.time() - t0:.0f}s")
            model.train()
    for aux in (probe, anchor):
        if aux:
            aux.remove()
    model.eval()
    train_s = time.time() - t0
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    info = {"config": cfg.to_dict(), "train_seconds": round(train_s, 1), "final_loss": round(history[-1], 5),
            "weights_sha256": weights_hash(out), "vocab": len(processor.tokenizer),
            "parameters": sum(p.numel() for p in model.parameters()),
            "safetensors_bytes": (out / "model.safetensors").stat().st_size, "machine": _machine(),
            "load_average_during_training": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "loss_history": [round(x, 4) for x in history[:: max(1, len(history) // 50)]]}
    return info


def probe_accuracy(model, processor, rows: Sequence[dict], answer_prefix: str = " ",
                   batch_size: int = 64) -> dict[str, float]:
    """Teacher-forced first-token accuracy per (follow, kind) on unmasked prompts."""
    import torch

    model.eval()
    hits: dict[str, list[int]] = {}
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = encode_batch(processor, rows[i : i + batch_size], answer_prefix=answer_prefix)
            logits = model(**batch.inputs).logits
            for b, pairs in enumerate(batch.targets):
                p, t = pairs[0]
                r = batch.rows[b]
                key = f"{r['follow'][0]}-{r['task'][:3]}"
                hits.setdefault(key, []).append(int(logits[b, p].argmax()) == t)
    return {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}


# ---------------------------------------------------------------------------- measurements
# Private helpers for the model card and the tests; `mf_harness.analysis` will replace them.


def _first_token_ids(tokenizer, forms: Sequence[str]) -> list[int]:
    """The entity dictionary E as token ids: the first token of each form, bare and after a space."""
    ids: list[int] = []
    for form in forms:
        for variant in (form, " " + form):
            toks = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if toks and toks[0] not in ids:
                ids.append(toks[0])
    return ids


def _sides(row: dict) -> tuple[list[str], list[str]]:
    """(compliant forms, competing forms) of a synth row or an mfr doc."""
    if "compliant_answers" in row:
        return list(row["compliant_answers"]), list(row["competing_answers"])
    v = [row["answer_vision"], *row.get("answer_vision_synonyms", [])]
    t = [row["answer_text"], *row.get("answer_text_synonyms", [])]
    return (v, t) if row["follow"] == "vision" else (t, v)


def _scope_mask(batch: Batch, scope: str):
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


def _run(model, batch: Batch, spec=None, scope: str = "instruction", capture: bool = False):
    """Forward the prompts (no answer); return (last-position logits [B, V], per-layer residuals or None)."""
    import torch

    from mf_harness.arch import geometry, resolve
    from mf_harness.hooks import HeadPlan, intervene

    plan = None
    if spec is not None and not spec.is_empty:
        geo = geometry(model)
        plan = HeadPlan.build([spec] * len(batch.rows), _scope_mask(batch, spec.scope), geo.num_layers, geo.num_heads)
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


def _batches(processor, rows: Sequence[dict], batch_size: int = 64) -> Iterator[Batch]:
    for i in range(0, len(rows), batch_size):
        yield encode_batch(processor, rows[i : i + batch_size], with_answer=False)


def _margins(logits, batch: Batch, tokenizer):
    """Per row: max logit over E_c minus max logit over E_o, and whether the argmax token is in E_c."""
    import torch

    out, follows = [], []
    for b, row in enumerate(batch.rows):
        c, o = _sides(row)
        ec, eo = _first_token_ids(tokenizer, c), _first_token_ids(tokenizer, o)
        out.append(float(logits[b, ec].max() - logits[b, eo].max()))
        follows.append(int(logits[b].argmax()) in ec)
    return torch.tensor(out), torch.tensor(follows)


def first_token_mfr(model, processor, rows: Sequence[dict], spec=None) -> float:
    """Share of rows whose greedy first answer token is a compliant form (a fast proxy of MFR)."""
    hits = []
    for batch in _batches(processor, rows):
        logits, _ = _run(model, batch, spec)
        hits += _margins(logits, batch, processor.tokenizer)[1].tolist()
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
    for batch in _batches(processor, rows):
        logits, states = _run(model, batch, capture=True)
        final = _margins(logits, batch, tok)[0] > 0
        for b, row in enumerate(batch.rows):
            c, o = _sides(row)
            ec, eo = _first_token_ids(tok, c), _first_token_ids(tok, o)
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

    from mf_harness.arch import geometry
    from mf_harness.spec import InterventionSpec

    geo = geometry(model)
    batches = list(_batches(processor, rows))
    clean = torch.cat([_margins(_run(model, b)[0], b, processor.tokenizer)[0] for b in batches])
    eff = torch.zeros(geo.num_layers, geo.num_heads)
    for layer in range(geo.num_layers):
        for head in range(geo.num_heads):
            spec = InterventionSpec(block=[(layer, head)], scope=scope)
            m = torch.cat([_margins(_run(model, b, spec)[0], b, processor.tokenizer)[0] for b in batches])
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


# ---------------------------------------------------------------------------- evaluation for the card


def bundled_docs(follow: str) -> list[dict]:
    """The bundled ``mfr`` eval set as the task sees it (`mf_harness.mfr.process_docs`), PIL images decoded."""
    import datasets

    from mf_harness.mfr import process_docs
    from mf_harness.mfr_data import bundled_synthetic_path

    ds = datasets.load_dataset("parquet", data_files={"test": str(bundled_synthetic_path())}, split="test")
    return [dict(d) for d in process_docs(ds, follow)]


def random_heads(k: int, seed: int, exclude: Sequence[tuple[int, int]], layers: int, heads: int):
    """k heads drawn uniformly from the heads not in ``exclude`` (the random control)."""
    import random

    pool = [(l, h) for l in range(layers) for h in range(heads) if (l, h) not in set(map(tuple, exclude))]
    return sorted(random.Random(f"mf-harness-random-heads:{seed}").sample(pool, k))


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    w = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(max(0.0, c - w), 4), round(min(1.0, c + w), 4))


def _t_ci(values: Sequence[float]) -> tuple[float, float]:
    # two-sided 95% Student t quantiles for n-1 degrees of freedom (n = 2..10)
    t = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return (m, m)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    h = t.get(n - 1, 1.96) * sd / math.sqrt(n)
    return (round(m - h, 4), round(m + h, 4))


def _paired_bootstrap(targeted: Sequence[int], randoms: Sequence[Sequence[int]], reps: int = 2000, seed: int = 0):
    """95% CI of mean_seeds(random MFR) - targeted MFR, resampling docs (paired across conditions)."""
    import random

    n = len(targeted)
    per_doc = [sum(r[i] for r in randoms) / len(randoms) - targeted[i] for i in range(n)]
    rng = random.Random(seed)
    stats = sorted(sum(per_doc[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return (round(stats[int(0.025 * reps)], 4), round(stats[int(0.975 * reps) - 1], 4))


def lmms_mfr(path: Path, follow: str, extra_args: str = "", env: dict | None = None) -> list[int]:
    """Per-doc 0/1 MFR on the bundled set through the real lmms-eval path (`mf_harness.demo.run_mfr`)."""
    from mf_harness.demo import run_mfr
    from mf_harness.mfr import process_results

    task = f"mfr_{follow}"
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    # the wrapper applies lmms-eval's Qwen pixel bounds to any checkpoint but `pretrained=embedded`;
    # pass this checkpoint's own bounds so a directory is evaluated exactly as `embedded` is
    from transformers import AutoProcessor

    lo, hi, _ = _pixels(AutoProcessor.from_pretrained(path))
    margs = f"pretrained={path},min_pixels={lo},max_pixels={hi}" + (f",{extra_args}" if extra_args else "")
    try:
        res = run_mfr(margs, tasks=(task,))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    docs = bundled_docs(follow) if not env else None
    answers = res[task]["answers"]
    if docs is None:
        # the instruction differs, not the answers: score against the default docs' answer sets
        docs = bundled_docs(follow)
    out = []
    for i in range(len(docs)):
        a = answers[i]
        out.append(int(process_results(docs[i], [a[0] if isinstance(a, list) else a])["mfr"]))
    return out


def evaluate(path: str | Path, seed: int = 0, ks: Sequence[int] = (1, 2, 4, 8), n_random: int = 5,
             ranking_rows: int = 96, log=print) -> dict[str, Any]:
    """Everything the model card reports, measured on the checkpoint at ``path``."""
    import torch

    from mf_harness import synth
    from mf_harness.arch import geometry
    from mf_harness.spec import InterventionSpec

    path = Path(path)
    torch.set_num_threads(DEFAULT.threads)
    model, processor = _load(path, attn="sdpa")
    model.eval()
    geo = geometry(model)
    out: dict[str, Any] = {"heads": [geo.num_layers, geo.num_heads]}
    t0 = time.time()

    # 1. held-out MFR through lmms-eval: the eval default phrasing and the two held-out ones
    phr = {"paper": {}, "focus (held out)": {"MF_HARNESS_INSTRUCTION": "focus"},
           "custom (held out)": {"MF_HARNESS_INSTRUCTION_TEXT": synth.HELDOUT_INSTRUCTIONS["text"][1],
                                 "MF_HARNESS_INSTRUCTION_VISION": synth.HELDOUT_INSTRUCTIONS["vision"][1]}}
    per_doc: dict[str, list[int]] = {}
    out["mfr"] = {}
    for name, env in phr.items():
        out["mfr"][name] = {}
        for follow in ("text", "vision"):
            hits = lmms_mfr(path, follow, env=env or None)
            if name == "paper":
                per_doc[follow] = hits
            p = sum(hits) / len(hits)
            out["mfr"][name][follow] = {"mfr": round(p, 4), "n": len(hits), "ci95": _wilson(p, len(hits))}
        log(f"  MFR {name}: {out['mfr'][name]}  ({time.time() - t0:.0f}s)")

    # 2. where the conflict is settled: LDAR by layer on the bundled docs
    docs = {f: bundled_docs(f) for f in ("text", "vision")}
    out["ldar"] = {f: ldar_by_layer(model, processor, docs[f]) for f in docs}
    log(f"  LDAR {out['ldar']}  ({time.time() - t0:.0f}s)")

    # 3. heads ranked by single-head ablation on generator rows (not the eval set)
    out["effects"], out["ranking"] = {}, {}
    for follow in ("text", "vision"):
        rows = synth.heldout_rows(seed + 7, ranking_rows, follow=follow)
        for scope in ("instruction", "last"):
            eff = head_effects(model, processor, rows, scope)
            out["effects"][f"{follow}/{scope}"] = [[round(float(x), 3) for x in r] for r in eff]
            out["ranking"][f"{follow}/{scope}"] = [f"L{l}H{h}" for l, h in ranked_heads(eff)]
    log(f"  rankings done ({time.time() - t0:.0f}s)")

    # 4. fast sweep (first answer token) over k: targeted vs n_random random sets
    out["sweep"] = {}
    for follow in ("text", "vision"):
        for scope in ("instruction", "last"):
            ranked = [InterventionSpec(block=[h]).block[0] for h in out["ranking"][f"{follow}/{scope}"]]
            for k in ks:
                top = [(h.layer, h.head) for h in ranked[:k]]
                tgt = first_token_mfr(model, processor, docs[follow], InterventionSpec(block=top, scope=scope))
                rnd = [first_token_mfr(model, processor, docs[follow],
                                       InterventionSpec(block=random_heads(k, s, top, geo.num_layers, geo.num_heads),
                                                        scope=scope)) for s in range(n_random)]
                out["sweep"][f"{follow}/{scope}/k{k}"] = {"targeted": round(tgt, 4),
                                                         "random": [round(r, 4) for r in rnd]}
    out["clean_first_token_mfr"] = {f: round(first_token_mfr(model, processor, docs[f]), 4) for f in docs}
    log(f"  sweep done ({time.time() - t0:.0f}s)")
    out["eval_seconds"] = round(time.time() - t0, 1)
    return out


def headline(path: str | Path, results: dict, follow: str, scope: str, k: int, n_random: int = 5) -> dict:
    """Targeted top-k vs ``n_random`` random k-head sets at ``scope``, through lmms-eval, with CIs."""
    from mf_harness.spec import InterventionSpec

    L, H = results["heads"]
    top = [InterventionSpec(block=[h]).block[0] for h in results["ranking"][f"{follow}/{scope}"][:k]]
    top_t = [(h.layer, h.head) for h in top]
    base = lmms_mfr(Path(path), follow)
    tgt = lmms_mfr(Path(path), follow, f"block={'+'.join(map(str, top))},scope={scope}")
    rnd_sets = [random_heads(k, s, top_t, L, H) for s in range(n_random)]
    rnd = [lmms_mfr(Path(path), follow, f"block={'+'.join(f'L{l}H{h}' for l, h in hs)},scope={scope}")
           for hs in rnd_sets]
    n = len(tgt)
    m = lambda xs: sum(xs) / len(xs)  # noqa: E731
    rnd_means = [m(r) for r in rnd]
    return {
        "follow": follow, "scope": scope, "k": k, "n": n,
        "heads": [str(h) for h in top],
        "original": {"mfr": round(m(base), 4), "ci95": _wilson(m(base), n)},
        "targeted": {"mfr": round(m(tgt), 4), "ci95": _wilson(m(tgt), n)},
        "random": {"mfr_mean": round(m(rnd_means), 4), "per_seed": [round(x, 4) for x in rnd_means],
                   "ci95_over_seeds": _t_ci(rnd_means),
                   "heads": [[f"L{l}H{h}" for l, h in hs] for hs in rnd_sets]},
        "gap": round(m(rnd_means) - m(tgt), 4),
        "gap_ci95_paired_bootstrap": _paired_bootstrap(tgt, rnd),
    }


def choose_k(results: dict, follow: str, scope: str, bar: float = 0.3) -> int:
    """The smallest k whose first-token sweep gap (random mean - targeted) reaches ``bar``, else the largest gap."""
    rows = []
    for key, v in results["sweep"].items():
        f, sc, k = key.split("/")
        if f == follow and sc == scope:
            gap = sum(v["random"]) / len(v["random"]) - v["targeted"]
            rows.append((int(k[1:]), gap))
    rows.sort()
    for k, gap in rows:
        if gap >= bar:
            return k
    return max(rows, key=lambda x: x[1])[0]


def write_specs(results: dict, out_dir: Path, model_label: str | None) -> list[Path]:
    """One spec JSON per (follow, scope) headline: ``embedded_<follow>_<scope>_top<k>.json``."""
    from mf_harness.spec import InterventionSpec

    paths = []
    for h in results["headlines"]:
        name = f"embedded_{h['follow']}_{h['scope']}_top{h['k']}"
        spec = InterventionSpec(block=h["heads"], scope=h["scope"], name=name, provenance={
            "model": model_label or "embedded",
            "weights_sha256": results.get("weights_sha256", ""),
            "method": f"top-{h['k']} heads by single-head ablation at scope '{h['scope']}': mean drop of the "
                      f"compliant-minus-competing logit margin at the last prompt position, "
                      f"{results['ranking_rows']} generator rows (mf_harness.synth.heldout_rows, seed "
                      f"{results['ranking_seed']}), follow={h['follow']}",
            "eval": f"bundled mfr_{h['follow']} (n={h['n']}): original {h['original']['mfr']}, targeted "
                    f"{h['targeted']['mfr']}, random k={h['k']} x{len(h['random']['per_seed'])} seeds "
                    f"{h['random']['mfr_mean']} (gap {h['gap']}, 95% CI {h['gap_ci95_paired_bootstrap']})",
        })
        paths.append(spec.save(out_dir / f"{name}.json"))
    return paths


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def model_card(info: dict, results: dict) -> str:
    """MODEL_CARD.md for the checkpoint, from the training summary and `evaluate` + headline results."""
    from mf_harness import synth

    cfg = info["config"]
    L, H = results["heads"]
    mfr = results["mfr"]
    ldar = results["ldar"]
    scope_used = results.get("scope_used", "instruction")
    fmt = lambda ci: f"[{ci[0]:.3f}, {ci[1]:.3f}]"  # noqa: E731
    parts = [
        "# Embedded model: a tiny Qwen2.5-VL trained to follow modality instructions",
        "",
        "The default checkpoint behind `pretrained=embedded` and `make demo`. A real "
        "`Qwen2_5_VLForConditionalGeneration` (transformers classes, safetensors) trained on CPU by "
        "`python -m mf_harness.train` on synthetic modality conflicts, so that MFR, LDAR and head "
        "interventions measure something real without a download. It is a test bed for the harness, "
        "not a model of how large VLMs work: its mechanism was shaped on purpose (see *Training*).",
        "",
        "## Architecture",
        "",
        _table(["part", "size"], [
            ["text decoder", f"{cfg['num_layers']} layers x {cfg['num_heads']} heads (head dim "
                             f"{cfg['hidden_size'] // cfg['num_heads']}), {cfg['num_kv_heads']} KV heads, hidden "
                             f"{cfg['hidden_size']}, MLP {cfg['intermediate_size']}, mrope"],
            ["vision tower", f"depth {cfg['vision_depth']}, width {cfg['vision_hidden_size']}, patch 14, 2x2 merge: "
                             f"an 84x84 image is 9 image tokens"],
            ["vocabulary", f"{info['vocab']} byte-level BPE tokens trained on the training prompts, Qwen's special "
                           f"tokens and chat template; input and output embeddings tied"],
            ["parameters", f"{info['parameters']:,} (float32, {info['safetensors_bytes'] / 1e6:.2f} MB safetensors)"],
        ]),
        "",
        "## Data (`mf_harness.synth`)",
        "",
        "Rows in the `mfr` schema, drawn like the bundled eval set (84x84, one shape in one of ten colours, or one "
        "to four shapes for counting; wider jitter). Three MC2 kinds: `color`, `counting`, `object_recognition` "
        f"({', '.join(f'{x:.0%}' for x in cfg['kinds'])} of the rows); {cfg['conflict']:.0%} of rows conflict (the "
        "context contradicts the image), the rest agree. "
        "Half follow the text, half the image. The prompt is the `mfr` task's "
        "(`Text context: {context}\\n{instruction} {question}\\nAnswer the question with a single word.`) in the "
        "Qwen chat template with the system prompt `You are a helpful assistant.`, and the image goes "
        "through the wrapper's JPEG q85 round trip (`qwen_fetch_image`): training sees what evaluation feeds.",
        "",
        "Held out of training:",
        "",
        f"- colour conflicts: the {len(synth.HELDOUT_COLOR_PAIRS)} ordered (image colour, text colour) pairs of the "
        f"bundled eval set never occur in training; training conflicts use the other {len(synth.TRAIN_COLOR_PAIRS)};",
        "- items: the eval images come from `mf_harness.mfr_data`'s own generator and seed (counting and "
        "object_recognition have only 12 ordered answer pairs each; all occur in training, on other images);",
        "- instruction phrasings: training uses " + "; ".join(f"`{t}`" for t in synth.TRAIN_INSTRUCTIONS["text"])
        + " (and their image-following mirrors); held out: "
        + "; ".join(f"`{t}`" for t in synth.HELDOUT_INSTRUCTIONS["text"]) + " (and mirrors).",
        "",
        "## Training (`mf_harness.train`)",
        "",
        _table(["setting", "value"], [[k, f"`{v}`"] for k, v in cfg.items()]),
        "",
        f"- {cfg['steps']} steps of {cfg['batch_size']} rows, AdamW (betas 0.9/0.98), lr {cfg['lr']} with "
        f"{cfg['warmup']} warmup steps and cosine decay, seed {cfg['seed']}, {cfg['threads']} torch thread(s).",
        f"- Training took **{info['train_seconds']:.0f} s** on the machine that built it "
        f"({info.get('machine', 'CPU')}).",
        f"- Weights sha256 (parameters in name order, float32 bytes): `{info['weights_sha256']}`. The same "
        "config, seed and thread count give the same hash on the same machine "
        "(`tests/test_train.py`; the full retrain is the opt-in slow test).",
        "- Loss: cross-entropy on the answer token and `<|im_end|>` (the answer is written as the "
        "space-prefixed word token, e.g. ` red`, which the MFR matcher normalises to `red`), plus training-only "
        "auxiliary losses, none of which adds anything to the model:",
        f"  - *routing* (on in {cfg['route_prob']:.0%} of batches, off at evaluation): an attention mask stops every "
        "position after the instruction (question, format line, template, answer) from reading the image and "
        "the context, so the content can reach the answer only through the instruction tokens;",
        f"  - *anchor* (weight {cfg['anchor']}): the logit lens of the last instruction token after layer "
        f"{cfg['anchor_layer']} names what the followed modality says (its colour, count, shape, each as a softmax "
        "over that attribute's words);",
        f"  - *dense* (weight {cfg['dense']}): the answer is also trained at every position from the question's "
        "last token to the end of the prompt;",
        f"  - *vision lens* (weight {cfg['aux_vision']}): the mean image token, read through the final norm and "
        "the LM head, names the drawn colour, count and shape.",
        "",
        "## Held-out modality following (bundled `mfr` set, lmms-eval, `intervened_qwen`)",
        "",
        _table(["instruction phrasing", "MFR text [95% CI]", "MFR vision [95% CI]", "n"], [
            [name, f"{v['text']['mfr']:.3f} {fmt(v['text']['ci95'])}",
             f"{v['vision']['mfr']:.3f} {fmt(v['vision']['ci95'])}", v["text"]["n"]] for name, v in mfr.items()
        ]),
        "",
        "`paper` is the eval default and a training phrasing; the two others never occur in training "
        "(`MF_HARNESS_INSTRUCTION=focus`; the custom pair via `MF_HARNESS_INSTRUCTION_TEXT/_VISION`).",
        "",
        "## Where it settles the conflict: LDAR by layer (logit lens)",
        "",
        "s_l(i, E) = max over t in E of (W_U . FinalNorm(h_l(i)))_t, with h_l the output of layer l and E the "
        "first tokens of the answer's forms (bare and space-prefixed). LDAR_l is the share of docs whose "
        "1[R_l(E_c) > R_l(E_o)] equals the model's final decision 1[s(last, E_c) > s(last, E_o)] on its output "
        "logits. Readouts R_l(E): `instruction (top-3)` is the paper's, the mean of s_l(i, E) over the 3 "
        "instruction tokens with the highest s_l(i, E); `instruction (top-1)` the same with k = 1; `instruction "
        "(final token)` is s_l at the instruction's last token (`.`); `last position` is s_l(last, E). "
        "Bundled set (240 docs per direction), `paper` phrasing.",
        "",
        _table(["follow", "readout"] + [f"after layer {l}" for l in range(L)], [
            [f, sc.replace("_top1", " (top-1)").replace("_final_token", " (final token)")
             .replace("instruction", "instruction (top-3)" if sc == "instruction" else "instruction")
             .replace("last", "last position")] + [f"{x:.3f}" for x in ldar[f][sc]]
            for f in ("text", "vision") for sc in ldar[f]
        ]),
        "",
        "## Heads",
        "",
        f"Ranked by single-head ablation (the total effect): block one head at a scope and measure the mean drop "
        f"of the compliant-minus-competing logit margin at the last prompt position, over "
        f"{results['ranking_rows']} generator rows per direction (`synth.heldout_rows`, seed "
        f"{results['ranking_seed']}; not the eval set). Top 8 (effect in logits):",
        "",
        _table(["follow / scope", "top heads (effect)"], [
            [key, ", ".join(f"{h} ({results['effects'][key][int(h[1:h.index('H')])][int(h[h.index('H') + 1:])]:.2f})"
                            for h in results["ranking"][key][:8])] for key in results["ranking"]
        ]),
        "",
        "Sweep (first answer token, bundled set): MFR with the targeted top-k blocked vs k random heads "
        "(drawn from the other heads; mean of 5 seeds):",
        "",
        _table(["follow / scope / k", "targeted", "random (mean)", "random per seed"], [
            [key, f"{v['targeted']:.3f}", f"{sum(v['random']) / len(v['random']):.3f}",
             " ".join(f"{x:.3f}" for x in v["random"])] for key, v in results["sweep"].items()
        ]),
        "",
        "Headline (lmms-eval `intervened_qwen` on the bundled set; CIs: Wilson for one run, Student t over the "
        "5 random seeds, paired bootstrap over docs for the gap):",
        "",
        _table(["follow", "scope", "k", "heads", "original", "targeted", "random (5 seeds)", "gap [95% CI]"], [
            [h["follow"], h["scope"], h["k"], " ".join(h["heads"]),
             f"{h['original']['mfr']:.3f}", f"{h['targeted']['mfr']:.3f} {fmt(h['targeted']['ci95'])}",
             f"{h['random']['mfr_mean']:.3f} {fmt(h['random']['ci95_over_seeds'])}",
             f"{h['gap']:.3f} {fmt(h['gap_ci95_paired_bootstrap'])}"] for h in results["headlines"]
        ]),
        "",
        "Spec files: " + ", ".join(f"`interventions/{p}`" for p in results.get("spec_files", [])) + ".",
        "",
        "## The harness's own discovery (what `make demo` runs)",
        "",
        "`make demo` does not reuse the rankings above: it ranks heads with the harness, "
        "`mf-harness discover --model-args pretrained=embedded --tasks mfr_dev_text,mfr_dev_vision "
        "--method ablation --ablation-scope instruction` (the `mfr_dev` split: 96 rows held out of training and of "
        "the bundled eval set; output committed as `interventions/embedded/heads.csv`), then sweeps the top k "
        "(`interventions/embedded/demo.json`) blocked at the instruction tokens and at the last position against "
        "two random controls of 5 seeds each: k heads from any layer, and k heads matched layer by layer (the "
        "paper's control). This model's routing heads all sit in layer 0, which has 8 heads, so at k = 8 the "
        "layer-matched control is nearly the targeted set itself and measures layer 0 against the rest, not "
        "head specificity; here the any-layer control is the one that tests specificity (on a 28-layer model "
        "the paper's control is the stricter, right one). The README shows the demo's table.",
        "",
        "## What this model is and is not",
        "",
    ]
    parts += [f"- {line}" for line in results.get("notes", [])]
    parts += [
        "",
        "## Retrain",
        "",
        "```bash",
        "python -m mf_harness.train              # retrain (~12 min on 2 cores), re-measure, rewrite card and specs",
        "python -m mf_harness.train --eval-only  # re-measure the shipped weights, rewrite card and specs",
        "python -m mf_harness.train --card-only  # rewrite this card from mf_harness_train.json",
        "```",
        "",
        "Measuring (the `--eval-only` part) takes another ~8 minutes: 34 lmms-eval runs and 128 head ablations.",
        "",
    ]
    return "\n".join(parts)


REPO = Path(__file__).resolve().parents[1]
RECORD = "mf_harness_train.json"


def _machine() -> str:
    import platform

    import torch
    import transformers

    return (f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, torch "
            f"{torch.__version__}, transformers {transformers.__version__}")


def evaluate_and_document(path: Path, info: dict, specs_dir: Path | None, log=print, label: str | None = None) -> dict:
    """Measure the checkpoint, pick the headline k per (follow, scope), write specs, record and card."""
    results = evaluate(path, seed=info["config"]["seed"], log=log)
    results["ranking_rows"], results["ranking_seed"] = 96, info["config"]["seed"] + 7
    results["weights_sha256"] = info["weights_sha256"]
    results["headlines"] = []
    for follow in ("text", "vision"):
        for scope in ("instruction", "last"):
            k = choose_k(results, follow, scope)
            results["headlines"].append(headline(path, results, follow, scope, k))
            log(f"  headline {follow}/{scope}/k{k}: {results['headlines'][-1]['gap']}")
    gaps = {h["scope"]: h["gap"] for h in results["headlines"] if h["follow"] == "text"}
    # the model is trained to route the content through the instruction tokens: that is its scope
    # when blocking there works; otherwise the scope where blocking works best
    results["scope_used"] = "instruction" if gaps["instruction"] >= 0.3 else max(gaps, key=gaps.get)
    results["notes"] = _notes(results)
    if specs_dir is not None:
        label = label or f"{path.name} (trained by mf_harness.train)"
        results["spec_files"] = [p.name for p in write_specs(results, specs_dir, label)]
    record = {"training": info, "evaluation": results}
    (path / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    (path / "MODEL_CARD.md").write_text(model_card(info, results))
    return results


def _notes(results: dict) -> list[str]:
    """Plain statements for the card, derived from the measurements."""
    L = results["heads"][0]
    first = lambda xs: next((l for l, x in enumerate(xs) if x >= 0.95), None)  # noqa: E731
    at = lambda l: f"after layer {l}" if l is not None else "at no layer"  # noqa: E731
    notes = []
    for follow in ("text", "vision"):
        ld = results["ldar"][follow]
        notes.append(
            f"{follow.capitalize()} following, LDAR >= 0.95: at the instruction's final token "
            f"{at(first(ld.get('instruction_final_token', [])))}, at the last position {at(first(ld['last']))}; the "
            f"paper's top-3 readout over all instruction tokens peaks at {max(ld['instruction']):.3f} (the other "
            f"instruction tokens hold copies of both sides' answers, not the decision).")
    by = {(h["follow"], h["scope"]): h for h in results["headlines"]}
    for follow in ("text", "vision"):
        hi, hl = by[(follow, "instruction")], by[(follow, "last")]
        notes.append(
            f"{follow.capitalize()} following: blocking the top-{hi['k']} heads ({' '.join(hi['heads'])}) at the "
            f"instruction tokens gives MFR {hi['targeted']['mfr']:.3f} against {hi['random']['mfr_mean']:.3f} for "
            f"{hi['k']} random heads (gap {hi['gap']:.3f}, 95% CI {hi['gap_ci95_paired_bootstrap']}); at the last "
            f"position the top-{hl['k']} give {hl['targeted']['mfr']:.3f} against {hl['random']['mfr_mean']:.3f} "
            f"(gap {hl['gap']:.3f}).")
    notes.append(
        f"So the scope this model uses is **{results.get('scope_used', 'instruction')}**: the content reaches the "
        "answer through the instruction tokens, written there by layer-0 heads; the last position only reads "
        "the instruction's decision, and many positions after the question hold the answer (the dense loss), "
        "so blocking heads at the last position alone changes little.")
    k1 = results["sweep"].get("text/instruction/k1")
    notes.append(
        "This anchor was trained in (routing mask, anchor and dense losses): the model is a test bed with a "
        "known mechanism for the harness's measures, not evidence about large VLMs. The heads were ranked by "
        "single-head ablation (the total effect); direct logit attribution was not measured on this checkpoint "
        "(on the earlier trial models it ranked heads whose output is never read: "
        "../shared/notes/embedded-model-trials.md). The content is written into the instruction by several "
        "layer-0 heads at once" + (f", so one head moves text MFR only to {k1['targeted']:.3f}" if k1 else "") + ".")
    notes.append(
        "Held-out instruction phrasings generalise poorly: the model learned its training phrasings, not the "
        "meaning of an unseen sentence. It can only answer with its 18 answer words (10 colours, one to four, "
        f"4 shapes); {L} layers do exactly this task and nothing else (no captioning, no general QA).")
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mf_harness.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="checkpoint directory (default: the embedded one)")
    p.add_argument("--steps", type=int, default=DEFAULT.steps)
    p.add_argument("--seed", type=int, default=DEFAULT.seed)
    p.add_argument("--route-prob", type=float, default=DEFAULT.route_prob)
    p.add_argument("--route-delay", type=int, default=DEFAULT.route_delay)
    p.add_argument("--lr", type=float, default=DEFAULT.lr)
    p.add_argument("--batch-size", type=int, default=DEFAULT.batch_size)
    p.add_argument("--aux-vision", type=float, default=DEFAULT.aux_vision)
    p.add_argument("--threads", type=int, default=DEFAULT.threads)
    p.add_argument("--dense", type=float, default=DEFAULT.dense)
    p.add_argument("--anchor", type=float, default=DEFAULT.anchor)
    p.add_argument("--answer-prefix", default=DEFAULT.answer_prefix)
    p.add_argument("--probe-every", type=int, default=100, help="held-out probe interval (0: never)")
    p.add_argument("--no-eval", action="store_true", help="train only: no evaluation, card or spec files")
    p.add_argument("--eval-only", action="store_true", help="evaluate the checkpoint at --out and rewrite its card")
    p.add_argument("--card-only", action="store_true", help="rewrite MODEL_CARD.md from the checkpoint's record")
    p.add_argument("--specs-dir", type=Path, default=None,
                   help="where to write the head-set specs (default: interventions/ for the embedded checkpoint)")
    args = p.parse_args(argv)
    cfg = replace(DEFAULT, steps=args.steps, seed=args.seed, route_prob=args.route_prob, route_delay=args.route_delay,
                  lr=args.lr, batch_size=args.batch_size, aux_vision=args.aux_vision, threads=args.threads,
                  dense=args.dense, anchor=args.anchor, answer_prefix=args.answer_prefix)
    embedded = args.out is None
    if embedded:
        from mf_harness.embedded import EMBEDDED_NAME

        args.out = Path(__file__).resolve().parent / "embedded" / EMBEDDED_NAME
    specs_dir = args.specs_dir or (REPO / "interventions" if embedded else None)
    label = f"embedded ({args.out.name}, trained by mf_harness.train)" if embedded else None
    if args.card_only:
        record = json.loads((args.out / RECORD).read_text())
        record["evaluation"]["notes"] = _notes(record["evaluation"])
        if specs_dir is not None:
            record["evaluation"]["spec_files"] = [p.name for p in write_specs(record["evaluation"], specs_dir, label)]
        (args.out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        (args.out / "MODEL_CARD.md").write_text(model_card(record["training"], record["evaluation"]))
        print(f"wrote {args.out / 'MODEL_CARD.md'}")
        return 0
    if args.eval_only:
        info = json.loads((args.out / RECORD).read_text())["training"]
        evaluate_and_document(args.out, info, specs_dir, label=label)
        print(f"wrote {args.out / 'MODEL_CARD.md'}")
        return 0
    # build beside the target and swap it in at the end: users of the old checkpoint never see a half-built one
    work = args.out.with_name(args.out.name + ".new")
    info = train(cfg, work, probe_every=args.probe_every)
    print(json.dumps({k: v for k, v in info.items() if k != "loss_history"}, indent=2))
    if args.no_eval:
        (work / RECORD).write_text(json.dumps({"training": info}, indent=1) + "\n")
    else:
        evaluate_and_document(work, info, specs_dir, label=label)
    old = args.out.with_name(args.out.name + ".old")
    if args.out.exists():
        args.out.rename(old)
    work.rename(args.out)
    shutil.rmtree(old, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
