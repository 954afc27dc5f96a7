"""The training loop and its losses (CPU, deterministic), and the held-out probe."""

from __future__ import annotations


import hashlib
import json
import math
import os
import shutil
import time

from pathlib import Path
from typing import Any, Sequence

from mf_harness.embedded.train.batches import Batch, attention_masks, encode_batch, route_masks
from mf_harness.embedded.train.card import machine_label
from mf_harness.embedded.train.config import TrainConfig, build_initial


def losses(model, batch: Batch, dense: bool):
    """(answer loss, dense loss): the LM head runs only where a loss is taken."""
    import torch

    rows, cols, tgt, kind = [], [], [], []
    for b, pairs in enumerate(batch.targets):
        for p, t in pairs:
            rows.append(b)
            cols.append(p)
            tgt.append(t)
            kind.append(0)
        if dense and batch.rows[b].get("capability") != "caption":  # a caption's first word says little
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


class AnchorLens:
    """Auxiliary loss at the last instruction token: its logit lens after layer ``layer`` names, for
    each attribute the followed modality states, that attribute's word (a softmax over the
    attribute's own words). Training-only."""

    def __init__(self, model, tokenizer, layer: int):
        from mf_harness.embedded.train import synth
        from mf_harness.core.arch import resolve

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

        from mf_harness.embedded.train import synth

        pos = torch.tensor([ins[-1] for ins in batch.instruction])
        h = self.captured[torch.arange(len(batch.rows)), pos]
        logits = self.model.lm_head(self.model.model.language_model.norm(h)).float()
        losses = []
        for kind, ws in self.words.items():
            rows, tgt = [], []
            for b, r in enumerate(batch.rows):
                if r.get("capability"):  # no modality instruction to anchor
                    continue
                word = synth.stated(r).get(kind)
                if word is not None:
                    rows.append(b)
                    tgt.append(list(ws).index(word))
            if rows:
                losses.append(torch.nn.functional.cross_entropy(logits[rows][:, self.ids[kind]], torch.tensor(tgt)))
        return sum(losses) / len(losses) if losses else torch.zeros(())

    def remove(self):
        self.handle.remove()


class VisionLens:
    """Auxiliary loss: the mean image token, read through the final norm and the LM head
    (the logit lens at the input), names the drawn colour, count and shape.

    Each attribute is a softmax over its own answer words, so one vector can name all
    three. This puts image features in the same space as the answer words' embeddings
    (tied with the LM head), so the model can answer from the image the way it
    copies a word from the text. Training-only: nothing is added to the model.
    """

    def __init__(self, model, tokenizer, per_token: bool = True):
        from mf_harness.embedded.train import synth

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

        rows = [r for r in rows if r["image"] is not None]  # the tower ran on these rows' images, in order
        if not rows:
            return torch.zeros(())
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


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def route_this_step(cfg: TrainConfig, step: int) -> bool:
    import random

    return random.Random(f"mf-harness-route:{cfg.seed}:{step}").random() < cfg.route_prob


def load_checkpoint(path: Path, attn: str = "eager"):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mf_harness.lmms.patches import install_processors

    install_processors()
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attn, dtype=torch.float32)
    return model, AutoProcessor.from_pretrained(path)


def train(cfg: TrainConfig, out_dir: str | Path, log=print, probe_every: int = 100) -> dict[str, Any]:
    """Train from scratch and save the checkpoint to ``out_dir``; return a summary."""
    import torch

    from mf_harness.embedded.train import synth

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    build_initial(out, cfg)
    model, processor = load_checkpoint(out, attn="eager")
    model.train()
    n_layers = model.config.text_config.num_hidden_layers
    probe = VisionLens(model, processor.tokenizer, cfg.aux_vision_per_token) if cfg.aux_vision else None
    anchor = AnchorLens(model, processor.tokenizer, cfg.anchor_layer) if cfg.anchor else None
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    mix = synth.Mix(cfg.conflict, cfg.kinds, cfg.capability)
    probe_rows = synth.heldout_rows(cfg.seed + 1, 96, follow="text") + synth.heldout_rows(cfg.seed + 1, 96,
                                                                                         follow="vision")
    if cfg.capability:
        probe_rows += synth.capability_rows(cfg.seed + 1, 24)
    history, aux_hist = [], []
    for step in range(cfg.steps):
        rows = list(synth.training_rows(cfg.seed, cfg.batch_size, mix, start=step * cfg.batch_size))
        batch = encode_batch(processor, rows, answer_prefix=cfg.answer_prefix)
        routed = route_this_step(cfg, step)
        masks = route_masks(batch, n_layers, cfg.route_delay, torch.float32) if routed else None
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg, step)
        with attention_masks(model, masks):
            loss, dense = losses(model, batch, cfg.dense > 0)
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
            "safetensors_bytes": (out / "model.safetensors").stat().st_size, "machine": machine_label(),
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
                key = f"cap-{r['capability']}" if r.get("capability") else f"{r['follow'][0]}-{r['task'][:3]}"
                hits.setdefault(key, []).append(int(logits[b, p].argmax()) == t)
    return {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}
