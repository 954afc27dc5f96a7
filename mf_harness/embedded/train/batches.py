"""Training and probe batches: the wrapper's prompt and image path, the routing masks."""

from __future__ import annotations


from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

from mf_harness.embedded.train.config import SYSTEM_PROMPT


def render(processor, text: str, image: bool = True) -> str:
    """The chat-templated prompt of the ``intervened_qwen`` wrapper (system prompt, image, text)."""
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": content},
    ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def pixel_bounds(processor) -> tuple[int, int, int]:
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
    from mf_harness.embedded.train import synth
    from mf_harness.lmms.images import qwen_fetch_image
    from mf_harness.core.scopes import scope_positions

    tok = processor.tokenizer
    lo, hi, factor = pixel_bounds(processor)
    images = [qwen_fetch_image(r["image"], lo, hi, factor) for r in rows if r["image"] is not None]
    user = [synth.user_text(r) for r in rows]
    prompts = [render(processor, u, r["image"] is not None) for u, r in zip(user, rows)]
    texts = [p + answer_prefix + r["answer"] + tok.eos_token if with_answer else p for p, r in zip(prompts, rows)]
    inputs = processor(text=texts, images=images or None, padding=True, padding_side="right", return_tensors="pt")
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
        if r["question"]:
            question.append(scope_positions("instruction", rendered=texts[b], user_text=user[b],
                                            expanded_ids=row_ids, tokenizer=tok, placeholder_ids=placeholder,
                                            instruction=r["question"]))
        else:  # a caption request: the request is the question
            question.append(pos)
        # image + context (empty for a capability row: nothing is routed there)
        content.append((row_ids.index(vstart), pos[0]) if not r.get("capability") else (pos[0], pos[0]))
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
        if batch.rows[b].get("capability"):  # no conflict, no modality instruction: nothing to route
            continue
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
    from mf_harness.core.arch import resolve

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
