"""Head sets from other tools and papers, as specs: ``mf-harness spec import SOURCE``.

Formats (``--format auto`` picks by content):

* ``csv``: a table with ``layer`` and ``head`` columns and a score (``--by`` names it: ``score`` by
  default, else ``rank`` ascending; ``--follow`` picks a direction when there is a ``follow``
  column, as in ``mf-harness discover``'s ``heads.csv``); the top ``--k`` rows by score;
* ``names``: head names, one per line or comma-separated: ``L14H3``; TransformerLens hook names with
  a head index, ``blocks.14.attn.hook_z:3``, ``blocks.14.attn.hook_z[3]`` or
  ``blocks.14.attn.hook_z head 3`` (``hook_z`` / ``hook_result``: the per-head output before
  ``W_O``, the same site as ours); ``(14, 3)`` pairs;
* ``layer-head``: the JSON configs of "How Do Vision-Language Models Process Conflicting Information
  Across Modalities?" (arXiv 2507.01790, github.com/ethahtz/vlm_conflicting_info_processing):
  parallel lists ``layer_idx`` / ``head_idx`` (or ``layer_ids`` / ``head_ids``) and the multiplier
  ``alpha``, which becomes an amplification coefficient (``alpha`` < 0 is refused: a spec multiplies
  by a coefficient >= 0);
* ``spec``: an mf-harness spec file (a round trip).

The result is an `InterventionSpec` whose ``provenance`` records the source file, its format and the
selection (k, score column), so a head set found elsewhere is scored as data, with its origin.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mf_harness.core.spec import Head, InterventionSpec, SpecError

__all__ = ["FORMATS", "parse_head_name", "heads_from_names", "heads_from_csv", "heads_from_layer_head",
           "import_spec"]

FORMATS = ("auto", "csv", "names", "layer-head", "spec")
_TL = re.compile(r"^\s*blocks\.(\d+)\.attn\.hook_(?:z|result)\s*(?::|\[|\s+head\s+)\s*(\d+)\s*\]?\s*$")
_PAIR = re.compile(r"^\s*\(?\s*(\d+)\s*,\s*(\d+)\s*\)?\s*$")


def parse_head_name(name: str) -> Head:
    """``L14H3``, ``blocks.14.attn.hook_z:3`` (also ``[3]`` or `` head 3``; ``hook_result`` too) or ``(14, 3)``."""
    m = _TL.match(name) or _PAIR.match(name)
    if m:
        return Head(int(m.group(1)), int(m.group(2)))
    try:
        return Head.parse(name.strip())
    except SpecError:
        raise SpecError(f"cannot read head name {name!r}: use L14H3, blocks.14.attn.hook_z:3 or (14, 3)") from None


def heads_from_names(text: str) -> list[Head]:
    items = [x for x in re.split(r"[\n;+]+|,(?![^()]*\))", text) if x.strip() and not x.strip().startswith("#")]
    heads = [parse_head_name(x) for x in items]
    if not heads:
        raise SpecError("no head names found")
    return heads


def heads_from_csv(path: Path, k: int | None, by: str | None = None, follow: str | None = None) -> tuple[list[Head], dict]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise SpecError(f"{path} is not a CSV file ({type(e).__name__})") from None
    missing = {"layer", "head"} - set(df.columns)
    if missing:
        raise SpecError(f"{path}: needs columns 'layer' and 'head' (and a score); missing {sorted(missing)}")
    if "follow" in df.columns:
        follows = sorted(df["follow"].astype(str).unique())
        if follow is None and len(follows) > 1:
            raise SpecError(f"{path} ranks heads for {follows}: pick one with --follow")
        if follow is not None:
            if follow not in follows:
                raise SpecError(f"{path} has no rows for follow={follow!r}; it has {follows}")
            df = df[df["follow"].astype(str) == follow]
    by = by or ("score" if "score" in df.columns else "rank" if "rank" in df.columns else None)
    if by is None or by not in df.columns:
        raise SpecError(f"{path}: no score column {by!r}; columns are {list(df.columns)} (name one with --by)")
    df = df.sort_values(by, ascending=(by == "rank"), kind="stable")
    if k is not None:
        if k > len(df):
            raise SpecError(f"{path} ranks {len(df)} heads; --k {k} asks for more")
        df = df.head(k)
    try:
        heads = [Head(int(r.layer), int(r.head)) for r in df.itertuples()]
    except (ValueError, TypeError) as e:
        raise SpecError(f"{path}: layer and head must be non-negative integers ({e})") from None
    return heads, {"score_column": by, "order": "ascending" if by == "rank" else "descending", "k": k,
                   "follow": follow}


def heads_from_layer_head(d: dict, where: str) -> tuple[list[Head], float | None]:
    for lk, hk in (("layer_idx", "head_idx"), ("layer_ids", "head_ids")):
        if lk in d or hk in d:
            layers, heads = d.get(lk), d.get(hk)
            if not isinstance(layers, list) or not isinstance(heads, list) or len(layers) != len(heads):
                raise SpecError(f"{where}: {lk} and {hk} must be lists of the same length; got {layers!r}, {heads!r}")
            alpha = d.get("alpha")
            if alpha is not None:
                try:
                    alpha = float(alpha)
                except (TypeError, ValueError):
                    raise SpecError(f"{where}: alpha must be a number; got {d.get('alpha')!r}") from None
                if alpha < 0:
                    raise SpecError(f"{where}: alpha {alpha:g} < 0 cannot be a spec coefficient (a spec multiplies "
                                    f"heads by a coefficient >= 0)")
            return [Head(int(a), int(b)) for a, b in zip(layers, heads)], alpha
    raise SpecError(f"{where}: no layer_idx/head_idx (or layer_ids/head_ids) lists")


def _detect(path: Path, text: str) -> str:
    if path.suffix.lower() == ".csv":
        return "csv"
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        return "names"
    if isinstance(d, dict) and ({"layer_idx", "head_idx"} <= set(d) or {"layer_ids", "head_ids"} <= set(d)):
        return "layer-head"
    if isinstance(d, dict) and ("block" in d or "amplify" in d or "schema_version" in d):
        return "spec"
    if isinstance(d, list):
        return "names"
    raise SpecError(f"{path}: cannot tell its format; pass --format ({', '.join(FORMATS[1:])})")


def import_spec(source: str | Path, fmt: str = "auto", *, k: int | None = None, by: str | None = None,
                follow: str | None = None, action: str | None = None, coefficient: float | None = None,
                scope: str = "instruction", name: str | None = None, provenance: dict | None = None,
                ) -> InterventionSpec:
    """Read ``source`` (a file, or inline names for ``names``) as an `InterventionSpec` (see the module doc)."""
    if fmt not in FORMATS:
        raise SpecError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    path = Path(source)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SpecError(f"{path} is not a UTF-8 text file") from None
    elif fmt in ("names", "auto") and not path.suffix:
        text, path = str(source), Path("inline")
        fmt = "names"
    else:
        raise SpecError(f"file not found: {str(source)!r}")
    if fmt == "auto":
        fmt = _detect(path, text)
    prov: dict[str, Any] = {"imported_from": str(source), "format": fmt}
    alpha = None
    if fmt == "spec":
        spec = InterventionSpec.from_json(text, source=str(path))
        return spec.replace(name=name) if name else spec
    if fmt == "csv":
        heads, sel = heads_from_csv(path, k, by, follow)
        prov.update(sel)
    elif fmt == "names":
        d = None
        try:
            d = json.loads(text)
        except json.JSONDecodeError:
            pass
        heads = [parse_head_name(str(x)) if not isinstance(x, (list, tuple)) else Head(int(x[0]), int(x[1]))
                 for x in d] if isinstance(d, list) else heads_from_names(text)
        if k is not None:
            heads = heads[:k]
            prov["k"] = k
    else:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path} is not JSON ({e.msg})") from None
        heads, alpha = heads_from_layer_head(d, str(path))
        prov["model_name"] = d.get("model_name")
    if coefficient is None and alpha is not None:
        coefficient = alpha
    if action is None:
        action = "amplify" if coefficient is not None else "block"
    if action not in ("block", "amplify"):
        raise SpecError(f"--action must be block or amplify; got {action!r}")
    prov.update(provenance or {})
    kw = {"block": heads} if action == "block" else {"amplify": heads, "coefficient": coefficient}
    return InterventionSpec(scope=scope, name=name or path.stem, provenance=prov, **kw)
