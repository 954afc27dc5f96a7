"""The prompt codec: one object per loaded checkpoint that turns a request into model inputs and a plan.

Every path that feeds the model a prompt goes through a `PromptCodec`: the lmms-eval model
(`mf_harness.lmms.model`), the fast multi-spec engine (`mf_harness.lmms.fast_engine`) and the
analysis (`mf_harness.analysis.samples`). It

* **renders** a request as lmms-eval's wrapper for the family does: the ``<image>`` tag some
  tasks put in the context is removed; the chat turn is ``[system] + user[image x n, text]``,
  rendered by the checkpoint's own chat template with the generation prompt;
* **encodes** rendered prompts and (already prepared) images with the checkpoint's processor:
  left padding for batches, the family's processor arguments, nested images where the family
  wants them, no second BOS where the template writes one (as
  ``processor.apply_chat_template(tokenize=True)`` does);
* **locates** a scope's token positions after the family's image expansion
  (`mf_harness.core.scopes`), and builds the `HeadPlan` of a batch from one spec per row.

The family's conventions are data: the row's `PromptStyle` in `mf_harness.core.arch`. Image
*preparation* (upstream's JPEG round trip and resizing) is the adapter's job
(`mf_harness.lmms.images`), because it reuses lmms-eval's own encoder and this package never
imports lmms-eval.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from mf_harness.core.arch import ArchRow, HeadGeometry
from mf_harness.core.hooks import HeadPlan
from mf_harness.core.scopes import scope_positions, span_positions
from mf_harness.core.spec import InterventionSpec
from mf_harness.errors import MfHarnessError

__all__ = ["PromptCodec", "FAMILY_DEFAULT"]

FAMILY_DEFAULT = object()  # "the family's default" for system_prompt


class PromptCodec:
    """Render, encode and locate scopes for one checkpoint (see the module doc)."""

    def __init__(self, processor, row: ArchRow, geometry: HeadGeometry, config, *,
                 system_prompt: Any = FAMILY_DEFAULT, instruction_field: str = "instruction",
                 name: str = "checkpoint") -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.row = row
        self.style = row.prompt
        self.geometry = geometry
        self.instruction_field = instruction_field
        if system_prompt is FAMILY_DEFAULT:
            system_prompt = self.style.system_prompt
        elif isinstance(system_prompt, str) and system_prompt.strip().lower() in ("", "none"):
            system_prompt = None
        self.system_prompt: str | None = system_prompt
        tok = self.tokenizer
        self.image_token_ids = frozenset(i for i in (getattr(config, "image_token_id", None),
                                                     getattr(config, "image_token_index", None)) if i is not None)
        # ids that stand for an image in the rendered prompt and in the processor's expansion
        placeholder = tok.convert_tokens_to_ids(self.style.image_token)
        if placeholder is None or (placeholder == tok.unk_token_id and self.style.image_token != tok.unk_token):
            raise MfHarnessError(f"{name}: the tokenizer has no {self.style.image_token!r} token, which "
                                 f"{row.family} chat templates write for an image")
        self.placeholder_ids = frozenset({placeholder} | self.image_token_ids)

    # ------------------------------------------------------------------ render
    def messages(self, context: str, n_images: int) -> tuple[list[dict], str]:
        """The upstream wrapper's message layout; returns (messages, user text)."""
        text = context.replace("<image>", "")
        messages: list[dict] = []
        if self.system_prompt is not None:
            sp = self.system_prompt
            messages.append({"role": "system",
                             "content": [{"type": "text", "text": sp}] if self.style.system_as_parts else sp})
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
        messages.append({"role": "user", "content": content})
        return messages, text

    def render(self, context: str, n_images: int) -> tuple[str, str]:
        """(chat-templated prompt, the user text as it appears in it)."""
        messages, text = self.messages(context, n_images)
        rendered = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      **dict(self.style.chat_template_kwargs))
        if text not in rendered and text.strip() in rendered:
            text = text.strip()  # Gemma's template trims texts
        return rendered, text

    # ------------------------------------------------------------------ encode
    def encode(self, rendered: Sequence[str], images: Sequence[Sequence]):
        """Processor inputs for a batch of rendered prompts and their prepared images."""
        kwargs: dict[str, Any] = dict(self.style.processor_kwargs)
        if any(images):
            kwargs["images"] = [list(ims) for ims in images] if self.style.nested_images else \
                [im for ims in images for im in ims]
        bos = self.tokenizer.bos_token
        if bos and all(r.startswith(bos) for r in rendered):
            kwargs["add_special_tokens"] = False
        padding_side = "left" if len(rendered) > 1 else "right"
        return self.processor(text=list(rendered), padding=True, padding_side=padding_side, return_tensors="pt",
                              **kwargs)

    # ------------------------------------------------------------------ scopes
    def positions(self, scope: str, rendered: str, user_text: str, ids: Sequence[int], doc: dict | None = None,
                  label: str = "request") -> list[int]:
        """Positions of ``scope`` in one row's unpadded, expanded ``ids`` (the instruction comes from
        ``doc[instruction_field]``)."""
        instruction = doc.get(self.instruction_field) if isinstance(doc, dict) else None
        return scope_positions(scope, rendered=rendered, user_text=user_text, expanded_ids=ids,
                               tokenizer=self.tokenizer, placeholder_ids=self.placeholder_ids,
                               instruction=instruction, doc_label=label)

    def span_positions(self, rendered: str, spans: Sequence[tuple[int, int]], ids: Sequence[int]) -> list[int]:
        """Positions in ``ids`` of the tokens overlapping character ``spans`` of ``rendered``."""
        return span_positions(rendered, spans, ids, self.tokenizer, self.placeholder_ids)

    def image_positions(self, ids: Sequence[int]) -> list[int]:
        return [p for p, t in enumerate(ids) if t in self.image_token_ids]

    def last_image_position(self, ids: torch.Tensor) -> int:
        """Index of the last image token of a 1-D id tensor (-1 without images)."""
        if not self.image_token_ids:
            return -1
        image = torch.isin(ids, torch.tensor(sorted(self.image_token_ids)))
        return int(image.nonzero().max()) if image.any() else -1

    def plan(self, specs: Sequence[InterventionSpec], rendered: Sequence[str], user_texts: Sequence[str],
             input_ids: torch.Tensor, attention_mask: torch.Tensor, docs: Sequence[dict], labels: Sequence[str],
             tail_lengths: Sequence[int] | None = None) -> HeadPlan | None:
        """The `HeadPlan` of a left-padded batch, one spec per row (None when every spec is empty).
        ``tail_lengths[b]``: trailing tokens of row b that are not prompt (loglikelihood continuations);
        they are in scope where the spec acts on decode."""
        if all(s.is_empty for s in specs):
            return None
        B, S = input_ids.shape
        mask = torch.zeros(B, S, dtype=torch.bool)
        for b in range(B):
            if specs[b].is_empty:
                continue
            idx = attention_mask[b].bool().nonzero().flatten()
            if idx.numel() == 0:
                continue
            first = int(idx[0])
            tail = tail_lengths[b] if tail_lengths else 0
            ids = input_ids[b, first: S - tail].tolist()
            pos = self.positions(specs[b].scope, rendered[b], user_texts[b], ids, docs[b], labels[b])
            mask[b, [first + p for p in pos]] = True
            if tail and specs[b].acts_on_decode:
                mask[b, S - tail:] = True
        return HeadPlan.build(specs, mask, self.geometry.num_layers, self.geometry.num_heads,
                              self.geometry.attn_layers)
