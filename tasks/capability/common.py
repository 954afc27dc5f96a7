"""Helpers shared by the capability tasks: instruction text, seeded subsets, columns, images."""

from __future__ import annotations

import ast
import io
import os
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mf_harness.errors import DataError, MfHarnessError

__all__ = ["SUBSET_SEED", "SUBSET_SIZE", "instruction_text", "loglikelihood_result", "seeded_indices", "seeded_subset",
           "with_column",
           "require_columns", "to_rgb"]

# The fixed-seed subsets (`*_1k` tasks): SUBSET_SIZE docs drawn without replacement
# with random.Random(SUBSET_SEED) from the split in its hub order, kept in that order.
SUBSET_SEED = 1234
SUBSET_SIZE = 1000


def instruction_text(env: str, default: str) -> str:
    """``$env`` if set (stripped, non-empty), else ``default``."""
    value = os.environ.get(env)
    if value is None:
        return default
    value = value.strip()
    if not value:
        raise MfHarnessError(f"{env} is set but empty: unset it to use the default instruction {default!r}")
    return value


def seeded_indices(n: int, k: int = SUBSET_SIZE, seed: int = SUBSET_SEED) -> list[int]:
    """Sorted indices of ``k`` of ``range(n)`` drawn with ``random.Random(seed)``; all of them if n <= k."""
    if n <= k:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


def seeded_subset(dataset, k: int = SUBSET_SIZE, seed: int = SUBSET_SEED):
    """The fixed-seed subset of a `datasets.Dataset` (see `seeded_indices`)."""
    n = len(dataset)
    return dataset if n <= k else dataset.select(seeded_indices(n, k, seed))


def with_column(dataset, name: str, values: Sequence[Any]):
    """``dataset`` with column ``name`` set to ``values`` (replacing one of that name)."""
    if name in dataset.column_names:
        dataset = dataset.remove_columns(name)
    return dataset.add_column(name, list(values))


def require_columns(dataset, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(f"{what} data lacks column(s) {', '.join(missing)}; it has {', '.join(dataset.column_names)}")


def to_rgb(image: Any, label: str):
    """A PIL RGB image from a decoded image or a ``{bytes, path}`` struct."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, Mapping) and (image.get("bytes") or image.get("path")):
        from mf_harness.lmms.images import open_rgb

        src = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
        return open_rgb(src, label)
    raise DataError(f"{label}: unusable 'image' value of type {type(image).__name__}")


_NUMPY_REPR = re.compile(r"np\.\w+\(([^()]*)\)")


def loglikelihood_result(resp: Any) -> tuple[float, bool]:
    """``(log-likelihood, is_greedy)`` from one loglikelihood response.

    lmms-eval 0.7.3 hands ``process_results`` the *string* ``"(-12.5, False)"``: its
    ``unwrap_generation_output`` (api/instance.py) returns ``str(output)`` for anything
    that is not text. ``repr`` of a float round-trips exactly, so parsing it back loses
    nothing. Tuples and lists (other lmms-eval versions, the response cache) pass as is.
    """
    value = resp
    if isinstance(resp, str):
        try:  # numpy scalars print as np.float64(-1.5) / np.True_
            value = ast.literal_eval(_NUMPY_REPR.sub(r"\1", resp.strip()).replace("np.True_", "True")
                                     .replace("np.False_", "False"))
        except (ValueError, SyntaxError):
            raise MfHarnessError(f"cannot read a loglikelihood response {resp[:80]!r}") from None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise MfHarnessError(f"a loglikelihood response must be (log-likelihood, is_greedy), got {resp!r}")
    return float(value[0]), bool(value[1])
