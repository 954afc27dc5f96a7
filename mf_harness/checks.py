"""Strict parsing of user values, and atomic writes: one place for the rules every entry point applies.

Values reach mf-harness as text (lmms-eval's ``--model_args``, our CLI flags, sweep configs and
records headers), so a boolean written ``no`` must never become ``bool("no") == True``, a count
of 0 must not quietly mean "nothing", and a name must not walk out of its output folder. Each
check raises `MfHarnessError` with one line that names the value and what is allowed.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mf_harness.errors import MfHarnessError

__all__ = ["parse_bool", "positive_int", "finite_nonnegative", "safe_name", "atomic_write_text",
           "atomic_write_bytes", "atomic_path", "save_figure", "TRUE_WORDS", "FALSE_WORDS"]

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_bool(value: Any, name: str) -> bool:
    """``True``/``False``, 1/0, or the words true/false/1/0/yes/no (any case); anything else is an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in TRUE_WORDS:
            return True
        if v in FALSE_WORDS:
            return False
    raise MfHarnessError(f"{name} must be one of true/false/1/0/yes/no; got {value!r}")


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (given as an int or its decimal text)."""
    given = value
    if isinstance(value, bool):
        raise MfHarnessError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise MfHarnessError(f"{name} must be an integer >= {minimum}; got {value!r}")
        value = int(text)
    if not isinstance(value, int) or value < minimum:
        raise MfHarnessError(f"{name} must be an integer >= {minimum}; got {given!r}")
    return value


def finite_nonnegative(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MfHarnessError(f"{name} must be a finite number >= 0; got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise MfHarnessError(f"{name} must be a finite number >= 0; got {value!r}")
    return v


def safe_name(value: Any, what: str) -> str:
    """A name that becomes a file or folder name: letters, digits, '.', '_', '-', starting with a letter or
    digit (so no path separators, no '..', nothing hidden)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise MfHarnessError(f"{what} must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or "
                             f"digit, no '..'); got {value!r}")
    return value


def atomic_path(path: str | Path):
    """(temporary path beside ``path`` with a unique name, finish) for writers that need a file name
    (``savefig``): write the temporary file, then call ``finish()`` to move it into place."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp" + p.suffix)
    os.close(fd)

    def finish() -> Path:
        os.replace(tmp, p)
        return p

    return Path(tmp), finish


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part: a unique
    temporary file in the same folder, then ``os.replace`` (two writers cannot collide)."""
    p = Path(path)
    if p.is_dir():
        raise MfHarnessError(f"{p} is a directory; give a file path")
    tmp, finish = atomic_path(p)
    try:
        tmp.write_bytes(data)
        return finish()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """``fig.savefig`` atomically (the format from ``path``'s suffix)."""
    p = Path(path)
    tmp, finish = atomic_path(p)
    try:
        fig.savefig(tmp, dpi=dpi, format=p.suffix.lstrip(".") or "png")
        return finish()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
