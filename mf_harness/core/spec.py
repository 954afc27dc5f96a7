"""The intervention spec: which attention heads to block or amplify, where, and how much.

A spec is data: a frozen, validated value with a versioned JSON form that
round-trips. Three ways in, one value out:

* Python: ``InterventionSpec(block=["L14H3", "L20H0"], scope="instruction")``
* JSON file (``intervention=path.json`` in lmms-eval's ``--model_args``)::

      {"schema_version": 1, "name": "text-top2",
       "block": ["L14H3", {"layer": 20, "head": 0}],
       "amplify": [], "coefficient": null, "scope": "instruction", "decode": false}

* inline in ``--model_args`` (which lmms-eval splits on ``,`` and then on the first
  ``=``), heads joined with ``+``::

      pretrained=...,block=L14H3+L20H0,scope=instruction
      pretrained=...,amplify=L14H3+L20H0,coefficient=10
      pretrained=...,intervention=heads.json,scope=last      # inline keys override the file

Semantics, per head h of layer l, on the o_proj input slice z_h (the head's output
before the output projection), at the positions of ``scope``:

* ``block``:   z_h <- 0
* ``amplify``: z_h <- coefficient * z_h

Scopes: ``instruction`` (the task's instruction tokens; default, as in the paper),
``prompt_text`` (the user's text tokens), ``prompt`` (every prompt position),
``last`` (the final prompt position), ``all`` (prompt and generated tokens).
``decode=True`` additionally acts on every generated token.

The spec is checked when built (syntax, duplicates, a head in both lists,
coefficient) and again when bound to a model (`validate_for`: layer and head
ranges). Every error names the offending value and the allowed range.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mf_harness.checks import atomic_write_text, parse_bool
from mf_harness.errors import MfHarnessError

__all__ = [
    "SCHEMA_VERSION",
    "SCOPES",
    "SPEC_KEYS",
    "Head",
    "InterventionSpec",
    "SpecError",
    "parse_heads",
    "spec_from_model_args",
]

SCHEMA_VERSION = 1
SCOPES = ("instruction", "prompt_text", "prompt", "last", "all")
# model_args keys that belong to the spec (everything else goes to the model)
SPEC_KEYS = ("intervention", "block", "amplify", "coefficient", "scope", "decode", "spec_name")

_HEAD_RE = re.compile(r"^\s*[Ll](\d+)\s*[Hh](\d+)\s*$")
_SEP_RE = re.compile(r"[+;|\s]+")


class SpecError(MfHarnessError, ValueError):
    """A malformed or out-of-range intervention spec."""


@dataclass(frozen=True, order=True)
class Head:
    """One attention head: ``layer`` and ``head`` are 0-based. Written ``L14H3``."""

    layer: int
    head: int

    def __post_init__(self) -> None:
        for name in ("layer", "head"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SpecError(f"{name} must be a non-negative integer, got {v!r}")

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @classmethod
    def parse(cls, obj: Any) -> "Head":
        """Accept ``"L14H3"``, ``{"layer": 14, "head": 3}``, ``(14, 3)`` or a `Head`."""
        if isinstance(obj, Head):
            return obj
        if isinstance(obj, str):
            m = _HEAD_RE.match(obj)
            if not m:
                raise SpecError(f"cannot parse head {obj!r}: write heads as L<layer>H<head>, e.g. L14H3")
            return cls(int(m.group(1)), int(m.group(2)))
        if isinstance(obj, Mapping):
            extra = set(obj) - {"layer", "head"}
            if extra or not {"layer", "head"} <= set(obj):
                raise SpecError(f"a head object needs exactly the keys 'layer' and 'head', got {dict(obj)!r}")
            return cls(_as_int(obj["layer"], "layer"), _as_int(obj["head"], "head"))
        if isinstance(obj, (list, tuple)) and len(obj) == 2:
            return cls(_as_int(obj[0], "layer"), _as_int(obj[1], "head"))
        raise SpecError(f"cannot parse head {obj!r}: use 'L14H3', {{'layer': 14, 'head': 3}} or (14, 3)")


def _as_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{name} must be an integer, got {v!r}")
    return v


def parse_heads(value: Any, what: str = "heads") -> tuple[Head, ...]:
    """Parse a head list: a ``+``-joined string, or a list of head forms. Duplicates are errors."""
    if value is None or value == "" or value == ():
        return ()
    if isinstance(value, str):
        items: Iterable[Any] = [p for p in _SEP_RE.split(value.strip()) if p]
    elif isinstance(value, (Head, Mapping)):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise SpecError(f"{what}: expected a list of heads or a '+'-joined string, got {value!r}")
    heads = [Head.parse(x) for x in items]
    seen: set[Head] = set()
    for h in heads:
        if h in seen:
            raise SpecError(f"{what}: head {h} is listed twice")
        seen.add(h)
    return tuple(sorted(heads))


def _parse_bool(v: Any, name: str) -> bool:
    try:
        return parse_bool(v, name)
    except MfHarnessError as e:
        raise SpecError(str(e)) from None


@dataclass(frozen=True)
class InterventionSpec:
    """A validated head intervention. The empty spec (the default) changes nothing."""

    block: tuple[Head, ...] = ()
    amplify: tuple[Head, ...] = ()
    coefficient: float | None = None
    scope: str = "instruction"
    decode: bool = False
    name: str = ""
    # free-form provenance (how the heads were found); carried through JSON, not hashed
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("block", parse_heads(self.block, "block"))
        set_("amplify", parse_heads(self.amplify, "amplify"))
        both = sorted(set(self.block) & set(self.amplify))
        if both:
            raise SpecError(f"head {both[0]} is in both 'block' and 'amplify'; a head can have one action")
        if self.coefficient is not None:
            c = self.coefficient
            if isinstance(c, bool) or not isinstance(c, (int, float)):
                try:
                    c = float(c)
                except (TypeError, ValueError):
                    raise SpecError(f"coefficient must be a number, got {self.coefficient!r}") from None
            c = float(c)
            if not math.isfinite(c) or c < 0:
                raise SpecError(f"coefficient must be a finite number >= 0, got {self.coefficient!r}")
            set_("coefficient", c)
        if self.amplify and self.coefficient is None:
            raise SpecError("'amplify' heads need a 'coefficient' (the paper uses 8-12)")
        if self.coefficient is not None and not self.amplify:
            raise SpecError(f"coefficient {self.coefficient:g} applies to amplified heads, and this spec amplifies "
                            f"none (blocked heads are multiplied by 0): drop it or name 'amplify' heads")
        if self.scope not in SCOPES:
            raise SpecError(f"scope must be one of {', '.join(SCOPES)}; got {self.scope!r}")
        set_("decode", _parse_bool(self.decode, "decode"))
        if not isinstance(self.name, str):
            raise SpecError(f"name must be a string, got {self.name!r}")
        set_("provenance", dict(self.provenance or {}))

    # ------------------------------------------------------------------ queries
    @property
    def is_empty(self) -> bool:
        """True when the spec cannot change any output."""
        return not self.block and (not self.amplify or self.coefficient == 1.0)

    @property
    def acts_on_decode(self) -> bool:
        return self.decode or self.scope == "all"

    def head_coefficients(self) -> dict[Head, float]:
        """Multiplier per touched head (0 for blocked, `coefficient` for amplified)."""
        out = {h: 0.0 for h in self.block}
        if self.amplify and self.coefficient != 1.0:
            out.update({h: float(self.coefficient) for h in self.amplify})
        return out

    def validate_for(self, num_layers: int, num_heads: int, model_name: str = "the model",
                     head_layers: Sequence[int] | None = None) -> None:
        """Raise `SpecError` if a head is outside ``num_layers`` x ``num_heads``, or (hybrid decoders such
        as Qwen3.5) in a layer that is not one of ``head_layers``, the layers that have heads."""
        for what, heads in (("block", self.block), ("amplify", self.amplify)):
            for h in heads:
                if h.layer >= num_layers:
                    raise SpecError(
                        f"{what}: head {h} is out of range: {model_name} has {num_layers} layers "
                        f"(layer must be 0..{num_layers - 1})"
                    )
                if head_layers is not None and h.layer not in head_layers:
                    raise SpecError(
                        f"{what}: head {h} names layer {h.layer}, which has no attention heads in {model_name} "
                        f"(a linear-attention layer of a hybrid decoder, or a KV-shared layer, which reuses an earlier "
                        f"layer's keys and values); the layers with heads are "
                        f"{', '.join(map(str, head_layers))}"
                    )
                if h.head >= num_heads:
                    raise SpecError(
                        f"{what}: head {h} is out of range: {model_name} has {num_heads} heads per layer "
                        f"(head must be 0..{num_heads - 1})"
                    )

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "block": [str(h) for h in self.block],
            "amplify": [str(h) for h in self.amplify],
            "coefficient": self.coefficient,
            "scope": self.scope,
            "decode": self.decode,
        }
        if self.provenance:
            d["provenance"] = dict(self.provenance)
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InterventionSpec":
        if not isinstance(d, Mapping):
            raise SpecError(f"a spec must be a JSON object, got {type(d).__name__}")
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpecError(f"unsupported spec schema_version {version!r}; this mf-harness reads {SCHEMA_VERSION}")
        allowed = {"schema_version", "name", "block", "amplify", "coefficient", "scope", "decode", "provenance"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise SpecError(f"unknown spec field(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(
            block=d.get("block") or (),
            amplify=d.get("amplify") or (),
            coefficient=d.get("coefficient"),
            scope=d.get("scope", "instruction"),
            decode=d.get("decode", False),
            name=d.get("name", "") or "",
            provenance=d.get("provenance") or {},
        )

    @classmethod
    def from_json(cls, text: str, source: str = "spec JSON") -> "InterventionSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{source} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> "InterventionSpec":
        p = Path(path).expanduser()
        if not p.is_file():
            raise SpecError(f"intervention file not found: {str(path)!r}")
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            raise SpecError(f"intervention file {str(p)!r} is not a UTF-8 JSON text file ({type(e).__name__})") from None
        spec = cls.from_json(text, source=str(p))
        return spec if spec.name else spec.replace(name=p.stem)

    def save(self, path: str | Path) -> Path:
        """Write the spec's JSON atomically (a reader never sees half a file)."""
        return atomic_write_text(path, self.to_json() + "\n")

    def replace(self, **changes: Any) -> "InterventionSpec":
        d = {
            "block": self.block,
            "amplify": self.amplify,
            "coefficient": self.coefficient,
            "scope": self.scope,
            "decode": self.decode,
            "name": self.name,
            "provenance": self.provenance,
        }
        d.update(changes)
        return InterventionSpec(**d)

    @property
    def spec_hash(self) -> str:
        """Stable hash of what the spec does (name and provenance excluded)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("provenance", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        if self.is_empty:
            return "no intervention"
        parts = []
        if self.block:
            parts.append(f"block {len(self.block)} head(s)")
        if self.amplify:
            parts.append(f"amplify {len(self.amplify)} head(s) x{self.coefficient:g}")
        where = self.scope + (" + generated tokens" if self.decode and self.scope != "all" else "")
        label = f"{self.name}: " if self.name else ""
        return f"{label}{', '.join(parts)} at {where}"


def spec_from_model_args(args: Mapping[str, Any]) -> tuple[InterventionSpec, dict[str, Any]]:
    """Split lmms-eval ``model_args`` into the spec and the remaining model kwargs.

    ``intervention=path.json`` loads a file; the inline keys ``block``, ``amplify``,
    ``coefficient``, ``scope``, ``decode`` and ``spec_name`` override its fields.
    """
    rest = {k: v for k, v in args.items() if k not in SPEC_KEYS}
    if "intervention" in args and args["intervention"] not in (None, ""):
        base = InterventionSpec.load(str(args["intervention"]))
    else:
        base = InterventionSpec()
    changes: dict[str, Any] = {}
    for key in ("block", "amplify"):
        if key in args:
            v = args[key]
            changes[key] = parse_heads("" if v is None else (v if isinstance(v, (list, tuple)) else str(v)), key)
            if not changes[key]:
                raise SpecError(f"{key}= names no heads; name at least one (e.g. {key}=L14H3+L20H0), or leave the "
                                f"key out for the unmodified model")
    if "coefficient" in args:
        changes["coefficient"] = args["coefficient"]
    if "scope" in args:
        changes["scope"] = str(args["scope"])
    if "decode" in args:
        changes["decode"] = args["decode"]
    if "spec_name" in args:
        changes["name"] = str(args["spec_name"])
    return (base.replace(**changes) if changes else base), rest
