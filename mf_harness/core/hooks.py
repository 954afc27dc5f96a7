"""Per-head interventions as hooks that live only inside a context manager, with checked coverage.

For a batch, a `HeadPlan` says, per row, which positions are in scope and which
multiplier each head gets there:

    z[b, p, h] <- coef[l][b, h] * z[b, p, h]   if p is in scope for row b
    z[b, p, h] <- z[b, p, h]                   otherwise

where z is the input of layer l's ``o_proj`` split per head. Rows may carry
different specs (a sweep can batch several specs of the same prompt), and scopes
are per row, so left-padded batches are exact. Prompt positions in scope come from
`mask`; positions at or past the padded prompt length (generated tokens) are in
scope where `decode[b]` is true.

**Where a chunk starts.** The hooks never guess a chunk's absolute position from the
name of a private keyword argument (transformers 5.24 renamed the KV cache argument
from ``past_key_values`` to ``cache``; a hook that looked for the old name read every
chunk as starting at 0 and multiplied the wrong positions). Instead a forward
pre-hook on the text decoder (the module that holds the layers: every forward of the
whole model, of the inner model or of the language model alone runs through it once)
fixes the chunk once per forward, from what it is handed:

* the KV cache, found by *type* (any ``transformers.Cache`` among the arguments,
  whatever it is called): its length is where the chunk starts;
* the 2-D attention mask, which covers the cached and the new tokens: its length
  minus the chunk length is where the chunk starts. Where both are given they must
  agree; where neither is, the chunk starts at 0 (a forward without a cache
  recomputes the whole sequence).

The attention pre-hook of each intervened layer cross-checks the cache it receives
(again found by type) against that start, so a layer that sees another cache than
the model (or none where the model had one) is an error.

**Coverage, always on.** Forwards in one block must tile the sequence: each forward
starts where the previous one ended (prefill, then decode steps), or, once a pass has
covered the whole prompt, a new pass begins. On exit the hooks compare, per layer
and row, the number of (position, head) cells they actually multiplied with what the
plan's scope says for the passes that ran (in-scope prompt positions, plus generated
positions where the row acts on decode). A mismatch raises `InterventionCoverageError`
naming the layer, the row and both counts, e.g. ``intervention reached 0 of 14
instruction positions in layer 0 of row 3``. The counters are device tensors added to
in the hooks and read once on exit: no second forward, no per-step host sync.

`intervene` registers, for each layer that has a non-identity coefficient, a pre-hook
on the attention module (the cache cross-check) and one on ``o_proj`` (the
multipliers and the counter), plus the one pre-hook on the text decoder. Every site is resolved
before anything is registered; each handle is recorded the moment it exists, and on
exit (normal, exception or KeyboardInterrupt) exactly these handles are removed.
An empty plan registers nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from mf_harness.core.arch import geometry, resolve, text_decoder
from mf_harness.core.spec import InterventionSpec, SpecError

__all__ = ["HeadPlan", "intervene", "active_handles", "InterventionCoverageError", "find_cache", "cache_kwarg",
           "output_cache"]


class InterventionCoverageError(RuntimeError):
    """An intervention did not reach the positions its plan names (a harness or upstream bug, never
    a result): raised instead of returning numbers measured on the wrong positions."""


@dataclass
class HeadPlan:
    """Per-row multipliers and scope for one batch of padded prompts."""

    coef: dict[int, torch.Tensor]  # layer -> [batch, heads] float multipliers (1 = untouched)
    mask: torch.Tensor  # [batch, prompt_len] bool: prompt positions in scope
    decode: torch.Tensor  # [batch] bool: act on positions >= prompt_len (generated tokens)
    scopes: tuple[str, ...] = field(default=())  # per row, for messages only

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def prompt_len(self) -> int:
        return self.mask.shape[1]

    @property
    def is_empty(self) -> bool:
        return not self.coef

    def rows(self, rows: slice) -> "HeadPlan | None":
        """The plan of a slice of rows, or None where no row of the slice changes any head."""
        coef = {l: c[rows] for l, c in self.coef.items() if bool((c[rows] != 1).any())}
        if not coef:
            return None
        return HeadPlan(coef=coef, mask=self.mask[rows], decode=self.decode[rows], scopes=self.scopes[rows])

    @classmethod
    def build(
        cls,
        specs: Sequence[InterventionSpec],
        masks: torch.Tensor,
        num_layers: int,
        num_heads: int,
        head_layers: Sequence[int] | None = None,
    ) -> "HeadPlan":
        """One spec per row; ``masks`` is ``[batch, prompt_len]`` bool (the spec's scope per row).
        ``head_layers``: the layers that have heads, where not every layer has (hybrid decoders)."""
        if len(specs) != masks.shape[0]:
            raise ValueError(f"{len(specs)} specs for a batch of {masks.shape[0]} rows")
        coef: dict[int, torch.Tensor] = {}
        for spec in {id(s): s for s in specs}.values():  # each distinct spec once, not once per row
            spec.validate_for(num_layers, num_heads, head_layers=head_layers)
        for b, spec in enumerate(specs):
            for head, c in spec.head_coefficients().items():
                if head.layer not in coef:
                    coef[head.layer] = torch.ones(len(specs), num_heads)
                coef[head.layer][b, head.head] = c
        decode = torch.tensor([s.acts_on_decode for s in specs], dtype=torch.bool)
        return cls(coef=coef, mask=masks.bool(), decode=decode, scopes=tuple(s.scope for s in specs))


# Handles currently registered by `intervene`, for tests and leak checks.
_ACTIVE: set[int] = set()


def active_handles() -> int:
    """How many hook handles registered by `intervene` are alive right now."""
    return len(_ACTIVE)


def find_cache(args: tuple, kwargs: dict):
    """The KV cache among a forward's arguments, found by type (any name), or None."""
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover
        return None
    for v in kwargs.values():
        if isinstance(v, Cache):
            return v
    for v in args:
        if isinstance(v, Cache):
            return v
    return None


def cache_kwarg(model: nn.Module) -> str:
    """The name under which ``model.forward`` / ``generate`` take a KV cache: ``cache`` from
    transformers 5.24 on (``past_key_values`` is deprecated there until 5.40), else ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output):
    """The KV cache a forward returned (``output.cache`` from transformers 5.24 on, else ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _cache_len(cache, layer_idx: int | None = None) -> int:
    try:
        return int(cache.get_seq_length() if layer_idx is None else cache.get_seq_length(layer_idx))
    except TypeError:
        return int(cache.get_seq_length())


def _chunk_len(args: tuple, kwargs: dict) -> int:
    for name in ("input_ids", "inputs_embeds"):
        v = kwargs.get(name)
        if torch.is_tensor(v):
            return int(v.shape[1])
    if args and torch.is_tensor(args[0]):
        return int(args[0].shape[1])
    raise InterventionCoverageError("intervene: cannot tell the chunk length of a forward that gets neither "
                                    "input_ids nor inputs_embeds")


def chunk_start(args: tuple, kwargs: dict, length: int) -> int:
    """Absolute position of the first token of a model forward (see the module doc)."""
    cache = find_cache(args, kwargs)
    cached = _cache_len(cache) if cache is not None else None
    mask = kwargs.get("attention_mask")
    from_mask = None
    if torch.is_tensor(mask) and mask.dim() == 2 and mask.shape[1] > length:
        from_mask = int(mask.shape[1]) - length
    if cached is not None and from_mask is not None and cached != from_mask:
        raise InterventionCoverageError(
            f"intervene: the KV cache holds {cached} tokens but the attention mask says the chunk of {length} "
            f"starts at {from_mask}; refusing to guess where the intervention's positions are")
    if cached is not None:
        return cached
    return from_mask or 0


class _Tracker:
    """Where the current forward's chunk lies, and what the block's forwards covered so far."""

    def __init__(self, plan: HeadPlan):
        self.plan = plan
        self.start = 0  # of the current forward's chunk
        self.length = 0
        self.end: int | None = None  # of the previous chunk
        self.passes = 0  # full passes that started
        self.decode_positions = 0  # positions >= prompt_len processed, over all passes
        self.forwards = 0
        self.counts: dict[int, torch.Tensor] = {}  # layer -> [batch] cells multiplied, on the activations' device
        self.calls: dict[int, int] = {}

    def begin(self, start: int, length: int) -> None:
        L = self.plan.prompt_len
        if self.end is not None and start != self.end:
            if self.end < L:
                raise InterventionCoverageError(
                    f"intervention positions are broken: a forward starts at position {start}, but the previous "
                    f"chunk ended at {self.end} before the end of the prompt ({L}); the positions "
                    f"{self.end}..{L - 1} would never be reached")
            self.end = None  # a new pass over the same plan
        if self.end is None:
            self.passes += 1
        self.start, self.length = start, length
        self.end = start + length
        self.decode_positions += max(0, self.end - max(start, L))
        self.forwards += 1

    def check(self) -> None:
        plan = self.plan
        L = plan.prompt_len
        if self.forwards == 0:
            return  # nothing ran: nothing was measured under this plan
        if self.end is not None and self.end < L:
            missing_from = self.end
        else:
            missing_from = None
        in_scope = plan.mask.sum(1)  # [batch] prompt positions per pass
        positions = in_scope * self.passes + plan.decode.long() * self.decode_positions
        for layer, coef in sorted(plan.coef.items()):
            heads = (coef != 1).sum(1)  # [batch]
            expected = positions * heads
            applied = self.counts.get(layer)
            applied = applied.cpu() if applied is not None else torch.zeros_like(expected)
            calls = self.calls.get(layer, 0)
            for b in range(plan.batch_size):
                if int(heads[b]) == 0 or int(applied[b]) == int(expected[b]):
                    continue
                scope = plan.scopes[b] if b < len(plan.scopes) else "in-scope"
                why = ""
                if calls != self.forwards:
                    why = f"; o_proj of layer {layer} ran {calls} times in {self.forwards} model forwards"
                elif missing_from is not None:
                    why = f"; the forwards stopped at position {missing_from} of a {L}-token prompt"
                raise InterventionCoverageError(
                    f"intervention reached {int(applied[b]) // int(heads[b])} of {int(expected[b]) // int(heads[b])} "
                    f"{scope} positions in layer {layer} of row {b} ({int(applied[b])} of {int(expected[b])} "
                    f"(position, head) cells){why}")


def _factor(plan: HeadPlan, coef: torch.Tensor, start: int, length: int, like: torch.Tensor) -> torch.Tensor:
    """[batch, length, heads] multipliers for absolute positions start..start+length-1."""
    B, S = plan.mask.shape
    end = start + length
    parts = []
    if start < S:
        parts.append(plan.mask[:, start : min(end, S)])
    if end > S:
        parts.append(plan.decode[:, None].expand(B, end - max(start, S)))
    in_scope = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    c = coef.to(device=like.device, dtype=like.dtype)
    ones = torch.ones((), device=like.device, dtype=like.dtype)
    return torch.where(in_scope.to(like.device)[:, :, None], c[:, None, :], ones)


class _LayerHooks:
    __slots__ = ("layer", "coef", "tracker", "head_dim", "cache")

    def __init__(self, layer: int, coef: torch.Tensor, tracker: _Tracker, head_dim: int):
        self.layer, self.coef, self.tracker, self.head_dim = layer, coef, tracker, head_dim
        self.cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def attn_pre(self, module, args, kwargs):
        cache = find_cache(args, kwargs)
        if cache is None:
            return
        t = self.tracker
        held = _cache_len(cache, self.layer)
        if held != t.start:
            raise InterventionCoverageError(
                f"intervention positions are broken: layer {self.layer}'s KV cache holds {held} tokens, but the "
                f"model forward's chunk starts at {t.start}")

    def factor(self, start: int, T: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.tracker.plan
        L = plan.prompt_len
        # the prefill and every decode step reuse one factor (and its per-row count) each
        key = ("prefill", start, T) if start < L else ("decode", T)
        hit = self.cache.get(key)
        if hit is None or hit[0].device != x.device or hit[0].dtype != x.dtype:
            f = _factor(plan, self.coef, start, T, x)
            hit = (f, (f != 1).sum((1, 2)))
            self.cache[key] = hit
        return hit

    def oproj_pre(self, module, args):
        (x,) = args[:1]
        B, T, D = x.shape
        t = self.tracker
        plan = t.plan
        if B != plan.batch_size:
            raise RuntimeError(f"intervention plan is for {plan.batch_size} rows, forward got {B}")
        if t.forwards == 0 or T != t.length:
            raise InterventionCoverageError(
                f"intervention positions are broken: layer {self.layer} got a chunk of {T} tokens outside a "
                f"forward of the text decoder (or of another length: {t.length})")
        f, n = self.factor(t.start, T, x)
        counts = t.counts.get(self.layer)
        t.counts[self.layer] = n if counts is None else counts + n
        t.calls[self.layer] = t.calls.get(self.layer, 0) + 1
        y = (x.view(B, T, -1, self.head_dim) * f[..., None]).view(B, T, D)
        return (y, *args[1:])


@contextmanager
def intervene(model: nn.Module, plan: HeadPlan | None) -> Iterator[list]:
    """Apply ``plan`` to every forward of ``model`` inside the block; remove all own hooks after.

    On normal exit, raise `InterventionCoverageError` if the multiplied cells differ from what the
    plan's scope says for the forwards that ran (see the module doc)."""
    handles: list = []
    if plan is None or plan.is_empty:
        yield handles
        return
    geo = geometry(model)
    _, _, attns, oprojs = resolve(model)  # raises before anything is registered
    for layer, c in plan.coef.items():
        if not 0 <= layer < geo.num_layers:
            raise ValueError(f"plan names layer {layer}; the model has layers 0..{geo.num_layers - 1}")
        if oprojs[layer] is None:
            raise SpecError(f"plan names layer {layer}, which has no attention heads (a linear-attention layer "
                            f"of a hybrid decoder, or a KV-shared layer); the layers with heads are "
                            f"{', '.join(map(str, geo.head_layers))}")
        if c.shape != (plan.batch_size, geo.num_heads):
            raise ValueError(f"layer {layer} coefficients have shape {tuple(c.shape)}, "
                             f"expected ({plan.batch_size}, {geo.num_heads})")
    decoder = text_decoder(model)
    tracker = _Tracker(plan)

    def decoder_pre(module, args, kwargs):
        T = _chunk_len(args, kwargs)
        tracker.begin(chunk_start(args, kwargs, T), T)

    def register(hook_handle):
        handles.append(hook_handle)
        _ACTIVE.add(hook_handle.id)

    ok = False
    try:
        register(decoder.register_forward_pre_hook(decoder_pre, with_kwargs=True))
        for layer, coef in sorted(plan.coef.items()):
            lh = _LayerHooks(layer, coef, tracker, geo.width(layer))
            register(attns[layer].register_forward_pre_hook(lh.attn_pre, with_kwargs=True))
            register(oprojs[layer].register_forward_pre_hook(lh.oproj_pre))
        yield handles
        ok = True
    finally:
        for h in handles:
            h.remove()
            _ACTIVE.discard(h.id)
        handles.clear()
    if ok:
        tracker.check()
