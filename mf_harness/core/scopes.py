"""Token scopes: which prompt positions an intervention acts on.

The prompt the model sees is the chat-templated text with each image placeholder
expanded into a run of image tokens by the processor. A character span of the
rendered text (say, the instruction) is mapped to token positions in two steps:

1. tokenize the rendered (unexpanded) text with character offsets, and take the
   tokens that overlap the span;
2. align that token sequence with the processor's ``input_ids`` for the row: the two
   agree token for token except where a placeholder became the family's run of image
   tokens (a BOS may also be added, and text right next to a run may tokenize
   differently). `align_expanded` matches the common blocks and raises if a token away
   from the images disagrees; `span_positions` raises if a token of the span has no match.

Scopes:

* ``instruction``: the instruction text(s) the task gives for the doc, searched
  inside the user text; not found is an `InstructionNotFound` naming the doc.
* ``prompt_text``: the user's text (the task context), no image or template tokens.
* ``prompt``: every (non-padding) prompt position.
* ``last``: the final prompt position.
* ``all``: every prompt position (generated tokens are added by the hooks).
"""

from __future__ import annotations

from typing import Sequence

from mf_harness.errors import MfHarnessError

__all__ = ["InstructionNotFound", "ScopeError", "align_expanded", "char_span_positions", "scope_positions",
           "span_positions"]


class ScopeError(MfHarnessError, ValueError):
    """The tokens of a scope could not be located."""


class InstructionNotFound(ScopeError):
    """A doc's instruction text does not occur in its rendered prompt."""


# unmatched prompt tokens are tolerated only this close to an insertion (a placeholder or either end)
_EDGE = 2


def align_expanded(plain_ids: Sequence[int], expanded_ids: Sequence[int], placeholder_ids: set[int]) -> list[int]:
    """Map each index of ``plain_ids`` to its index in ``expanded_ids`` (-1: not there).

    The processor turns the rendered prompt into ``expanded_ids`` by replacing each image
    placeholder (an id in ``placeholder_ids``) with a run of tokens (Qwen:
    ``<|image_pad|>*n``; InternVL: ``<img><IMG_CONTEXT>*n</img>``; Gemma 3:
    ``\\n\\n<start_of_image><image_soft_token>*n<end_of_image>\\n\\n``; Idefics3/SmolVLM:
    tiles with row tags and newlines), and the tokenizer may add a BOS. Text right next to
    an insertion can tokenize differently (Gemma's newlines merge); everything else is the
    same token for token. The two sequences are aligned by their longest common blocks
    (difflib, no junk heuristic); a placeholder maps to the first position of its run.
    A prompt token may stay unmatched only within ``_EDGE`` tokens of an insertion; any
    other disagreement raises `ScopeError`.
    """
    from difflib import SequenceMatcher

    plain, expanded = list(plain_ids), list(expanded_ids)
    out = [-1] * len(plain)
    for a, b, size in SequenceMatcher(None, plain, expanded, autojunk=False).get_matching_blocks():
        out[a : a + size] = range(b, b + size)
    anchors = [-1, len(plain)] + [i for i, t in enumerate(plain) if t in placeholder_ids]
    nxt = 0  # first expanded position after the last matched token
    for i, tok in enumerate(plain):
        if tok in placeholder_ids:
            out[i] = nxt
        elif out[i] >= 0:
            nxt = out[i] + 1
        elif min(abs(i - a) for a in anchors) > _EDGE:
            raise ScopeError(
                f"cannot align the rendered prompt with the processor's tokens at token {i}: "
                f"id {tok} is not in the processor's sequence there"
            )
    return out


def char_span_positions(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of tokens whose character range overlaps ``[start, end)``."""
    return [i for i, (s, e) in enumerate(offsets) if s < end and e > start and e > s]


def _find_all(haystack: str, needle: str, lo: int, hi: int) -> list[int]:
    out, k = [], haystack.find(needle, lo, hi)
    while k != -1:
        out.append(k)
        k = haystack.find(needle, k + 1, hi)
    return out


def scope_positions(
    scope: str,
    *,
    rendered: str,
    user_text: str,
    expanded_ids: Sequence[int],
    tokenizer,
    placeholder_ids: Sequence[int] = (),
    instruction: str | Sequence[str] | None = None,
    doc_label: str = "",
) -> list[int]:
    """Positions (indices into the row's unpadded ``expanded_ids``) of ``scope``."""
    n = len(expanded_ids)
    if scope in ("prompt", "all"):
        return list(range(n))
    if scope == "last":
        return [n - 1]
    # locate the user text inside the rendered prompt (the last occurrence: the template comes first)
    u0 = rendered.rfind(user_text) if user_text else -1
    if u0 < 0:
        raise ScopeError(f"{doc_label}: the user text was not found in the rendered prompt")
    spans: list[tuple[int, int]]
    if scope == "prompt_text":
        spans = [(u0, u0 + len(user_text))]
    elif scope == "instruction":
        needles = [instruction] if isinstance(instruction, str) else list(instruction or [])
        needles = [s for s in needles if s and s.strip()]
        if not needles:
            raise InstructionNotFound(
                f"{doc_label}: the doc has no instruction text, so scope 'instruction' cannot be located "
                f"(the task must give an 'instruction' field, or use scope=prompt_text / last / prompt)"
            )
        spans = []
        for s in needles:
            hits = _find_all(rendered, s, u0, u0 + len(user_text))
            if not hits:
                raise InstructionNotFound(
                    f"{doc_label}: instruction {s!r} does not occur in the prompt text {user_text[:200]!r}"
                )
            spans += [(h, h + len(s)) for h in hits]
    else:
        raise ScopeError(f"unknown scope {scope!r}")
    positions = span_positions(rendered, spans, expanded_ids, tokenizer, placeholder_ids)
    if not positions:
        raise ScopeError(f"{doc_label}: scope {scope!r} maps to no tokens")
    return positions


def span_positions(rendered: str, spans: Sequence[tuple[int, int]], expanded_ids: Sequence[int], tokenizer,
                   placeholder_ids: Sequence[int] = ()) -> list[int]:
    """Positions in ``expanded_ids`` of the tokens overlapping any character span of ``rendered``."""
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    plain_ids, offsets = enc["input_ids"], enc["offset_mapping"]
    mapping = align_expanded(plain_ids, list(expanded_ids), set(placeholder_ids))
    positions: set[int] = set()
    for a, b in spans:
        for i in char_span_positions(offsets, a, b):
            if mapping[i] < 0:
                raise ScopeError(f"the text {rendered[a:b][:80]!r} is tokenized differently once the processor "
                                 f"has expanded the images (token {i} of the rendered prompt)")
            positions.add(mapping[i])
    return sorted(positions)
