"""Many specs on one prompt, near the physical limit: per-row specs, a shared prefix, one vision pass.

A sweep scores dozens of specs on the same prompts. An intervention acts only from the
first intervened position p on (for scope ``instruction``: the first instruction token),
so the prompt before p (system prompt, image tokens, text context) is identical for every
spec. `MultiSpecRunner.generate` therefore, per sample:

1. renders and encodes the prompt once (as the lmms-eval wrapper does);
2. runs the prefix ``[0, p)`` once, vision tower included, into a KV cache (this is the
   only place the image is encoded);
3. continues that cache with R rows, row i carrying spec i (the unintervened baseline is just
   an empty spec), and lets ``generate`` compute only the suffix ``[p, L)`` and the new
   tokens, with a per-row `HeadPlan` (positions are absolute, so the hooks need no change).
   The prefix's keys and values are stored once, not per row (`mf_harness.core.shared_prefix`:
   the rows' attention over the prefix is one call against the one copy); where the model's
   attention implementation does not allow that (flash-attention-2), the cache is repeated per row.

Exact against one spec at a time (same tokens; logits equal within float tolerance; Qwen's
3-D mrope positions come from the prefix pass's ``rope_deltas``), tested on the tiny
models. When sharing cannot apply it falls back, saying so once: a spec that acts at or
before the last image token (scopes ``prompt``/``all``), or a model family without a KV
cache in ``generate``. Rows beyond ``max_rows`` are run in chunks, each from a copy of the
same prefix cache.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from loguru import logger

from mf_harness.core.hooks import HeadPlan, cache_kwarg, intervene, output_cache
from mf_harness.core.shared_prefix import continue_prefix, shared_prefix_attention, supports_shared_prefix
from mf_harness.core.spec import InterventionSpec
from mf_harness.lmms.model import parse_gen_kwargs

__all__ = ["MultiSpecRunner", "PromptPrefix", "prefix_sharable"]


def prefix_sharable(lm) -> bool:
    """Whether a prompt prefix's KV cache can be computed once and continued per row on this model: 3-D position
    families (their positions come from the prefix pass's rope deltas; validated on Qwen2/2.5/3-VL(-MoE) and
    GLM-4V), full attention in every layer (no hybrid decoder: a linear-attention layer's recurrent state is not
    a KV cache; no sliding-window layer, whose cache drops the prefix's start)."""
    types = getattr(lm.model.config.get_text_config(decoder=True), "layer_types", None) or ["full_attention"]
    return lm.row.rope_3d and lm.geometry.attn_layers is None and set(types) == {"full_attention"}


class PromptPrefix:
    """One encoded prompt (batch 1, on the model's device) run up to position ``p`` into a KV cache, vision
    tower included (the cache: batch 1, never modified; ``deltas``: the pass's mrope deltas), and what every
    continuation over the suffix ``[p, L)`` feeds. Used by `MultiSpecRunner` and the prefix-shared analyses
    (`mf_harness.analysis.attribution`)."""

    def __init__(self, lm, enc, p: int, grad: bool = False):
        from transformers import DynamicCache

        model = lm.model
        self.lm, self.enc, self.p = lm, enc, p
        self.per_token = {k for k, v in enc.items() if torch.is_tensor(v) and v.shape == enc["input_ids"].shape}
        # not inference mode where gradients will flow from the suffix: the cache then feeds the graph
        with torch.no_grad() if grad else torch.inference_mode():
            if hasattr(model.model, "rope_deltas"):
                model.model.rope_deltas = None  # recomputed from this prompt by the prefix pass
            pre = {k: (v[:, :p] if k in self.per_token else v) for k, v in enc.items()}
            self.cache = output_cache(model(**pre, **{cache_kwarg(model): DynamicCache(config=model.config)},
                                            use_cache=True))
        self.deltas = getattr(model.model, "rope_deltas", None)

    def restore_positions(self) -> None:
        """Every continuation starts from the prefix pass's mrope deltas, never from a previous continuation's."""
        if hasattr(self.lm.model.model, "rope_deltas"):
            self.lm.model.model.rope_deltas = self.deltas

    def forward(self, cache, rows: int = 1):
        """The suffix over ``cache`` (a continuation of this prefix) for ``rows`` rows; the last position's logits."""
        model = self.lm.model
        self.restore_positions()
        feed = {k: v[:, self.p:].expand(rows, -1) for k, v in self.enc.items()
                if k in self.per_token and k != "attention_mask"}
        return model(**feed, **{cache_kwarg(model): cache}, use_cache=True, logits_to_keep=1).logits[:, -1]


class MultiSpecRunner:
    """Evaluate R specs on one prompt in one batched, prefix-shared generate (see module doc)."""

    def __init__(self, lm, max_rows: int = 64, share_prefix: bool = True, share_kv: bool = True) -> None:
        self.lm = lm
        self.max_rows = max_rows
        self.share_prefix = share_prefix
        self.share_kv = share_kv  # the prefix's KV stored once (`mf_harness.core.shared_prefix`), not per row
        self._warned: set[str] = set()
        self.stats = {"prefix_passes": 0, "suffix_rows": 0, "fallbacks": 0}

    def _warn_once(self, why: str) -> None:
        if why not in self._warned:
            self._warned.add(why)
            logger.warning(f"prefix sharing off: {why}; recomputing the whole prompt per row")

    def plan(self, specs, rendered, user_text, enc, doc, label) -> HeadPlan | None:
        """The plan of R specs on one encoded prompt (row i carries spec i)."""
        R = len(specs)
        ids = enc["input_ids"].expand(R, -1)
        att = enc["attention_mask"].expand(R, -1)
        return self.lm.codec.plan(list(specs), [rendered] * R, [user_text] * R, ids, att, [doc] * R, [label] * R)

    def prefix_length(self, plan: HeadPlan | None, enc) -> int:
        """First position any row intervenes at (the whole prompt when no row does), or 0 to fall back."""
        L = enc["input_ids"].shape[1]
        if plan is None or not plan.mask.any():
            p = L - 1  # nothing intervenes on the prompt: share all but the last token
        else:
            p = int(plan.mask.any(0).nonzero().min())
        if not prefix_sharable(self.lm):
            self._warn_once(f"prefix sharing is validated for the families with 3-D positions (Qwen, GLM-4V) "
                            f"and full attention in every layer, not {self.lm.family}")
            return 0
        if p <= self.lm.codec.last_image_position(enc["input_ids"][0]):
            self._warn_once("a spec acts at or before the image tokens (scope prompt/all?)")
            return 0
        return p

    def generate(self, context: str, images: list, doc: dict, specs: Sequence[InterventionSpec], gen_kwargs: dict,
                 label: str = "doc") -> list[str]:
        lm = self.lm
        model = lm.model
        rendered, user_text = lm.codec.render(context, len(images))
        enc = lm.codec.encode([rendered], [images])
        plan = self.plan(specs, rendered, user_text, enc, doc, label)
        kw, until = parse_gen_kwargs(gen_kwargs, lm.default_max_new_tokens)
        if kw["num_beams"] > 1:
            raise ValueError("beam search is not supported by the multi-spec runner")
        p = self.prefix_length(plan, enc) if self.share_prefix else 0
        device = lm.device
        enc = enc.to(device)
        tok = lm.tokenizer
        answers: list[str] = []
        L = enc["input_ids"].shape[1]
        # per-token inputs (ids, mask, token-type ids) are cut at the prefix and repeated per row
        per_token = {k for k, v in enc.items() if torch.is_tensor(v) and v.shape == enc["input_ids"].shape}
        prefix_cache = None
        with torch.inference_mode():
            if p > 0:
                prefix_cache = PromptPrefix(lm, enc, p).cache
                self.stats["prefix_passes"] += 1
            else:
                self.stats["fallbacks"] += 1
                if hasattr(model.model, "rope_deltas"):
                    model.model.rope_deltas = None  # not a previous prompt's
            # the prefix pass's mrope deltas (None for a text-only prompt, or without sharing: each chunk's
            # generate computes its own for its rows); every chunk starts from them, never from the previous chunk's
            deltas = getattr(model.model, "rope_deltas", None)
            # the prefix's KV once for all rows (one unpadded prompt), where the model's attention allows it
            share_kv = (prefix_cache is not None and self.share_kv and supports_shared_prefix(model)
                        and bool(enc["attention_mask"].all()))
            for start in range(0, len(specs), self.max_rows):
                rows = slice(start, min(len(specs), start + self.max_rows))
                R = rows.stop - rows.start
                sub = plan.rows(rows) if plan is not None else None
                feed = {}
                for k, v in enc.items():
                    if k in per_token:
                        feed[k] = v.expand(R, -1)
                    elif prefix_cache is None and torch.is_tensor(v):
                        feed[k] = v.repeat(R, *([1] * (v.dim() - 1)))  # one sample's image tensors, per row
                    elif prefix_cache is None:
                        feed[k] = v
                    elif k == "image_grid_thw":
                        feed[k] = v.repeat(R, 1)  # positions only; pixel_values are not needed past the prefix
                if hasattr(model.model, "rope_deltas"):
                    model.model.rope_deltas = deltas
                shared = contextlib.nullcontext()
                if prefix_cache is not None:
                    cache = continue_prefix(prefix_cache, model.config, R, share=share_kv)
                    feed[cache_kwarg(model)] = cache
                    if share_kv:
                        shared = shared_prefix_attention(model, cache)
                self.stats["suffix_rows"] += R
                with intervene(model, sub), shared:
                    out = model.generate(**feed, pad_token_id=tok.pad_token_id, use_cache=True, **lm.stop_kwargs, **kw)
                texts = tok.batch_decode(out[:, L:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
                for t in texts:
                    for u in until:
                        t = t.split(u)[0]
                    answers.append(t)
        return answers
