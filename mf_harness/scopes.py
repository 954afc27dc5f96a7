"""Token scopes: which prompt positions an intervention acts on.

The prompt the model sees is the chat-templated text with each image placeholder
expanded into a run of image tokens by the processor. A character span of the
rendered text (say, the instruction) is mapped to token positions in two steps:

1. tokenize the rendered (unexpanded) text with character offsets, and take the
   tokens that overlap the span;
2. align that token sequence with the processor's ``input_ids`` for the row: the two
   agree token for token except where one placeholder became a run of special
   tokens. The alignment checks every text token and raises if they disagree.

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


def align_expanded(plain_ids: Sequence[int], expanded_ids: Sequence[int], placeholder_ids: set[int],
                   special_ids: set[int]) -> list[int]:
    """Map each index of ``plain_ids`` to its index in ``expanded_ids``.

    ``expanded_ids`` equals ``plain_ids`` except that each placeholder token (an id in
    ``placeholder_ids``) became a run of special tokens. A placeholder maps to the
    first token of its run. Any other disagreement raises `ScopeError`.
    """
    out: list[int] = []
    j, n = 0, len(expanded_ids)
    for i, tok in enumerate(plain_ids):
        if tok in placeholder_ids:
            nxt = plain_ids[i + 1] if i + 1 < len(plain_ids) else None
            start = j
            while j < n and (j == start or (expanded_ids[j] != nxt and expanded_ids[j] in special_ids)):
                j += 1
            out.append(start)
            continue
        if j >= n or expanded_ids[j] != tok:
            got = expanded_ids[j] if j < n else "end of sequence"
            raise ScopeError(
                f"cannot align the rendered prompt with the processor's tokens at token {i}: "
                f"expected id {tok}, found {got}"
            )
        out.append(j)
        j += 1
    if j != n:
        raise ScopeError(f"processed prompt has {n - j} unaligned trailing tokens")
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
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    mapping = align_expanded(plain_ids, list(expanded_ids), set(placeholder_ids), special)
    positions: set[int] = set()
    for a, b in spans:
        for i in char_span_positions(offsets, a, b):
            positions.add(mapping[i])
    return sorted(positions)
