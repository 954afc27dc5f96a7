"""What produced a result: the code's git commit and the versions of the packages that score it."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["git_hash", "package_versions"]

PACKAGES = ("mf-harness", "lmms-eval", "lm-eval", "transformers", "torch")


def git_hash() -> str | None:
    """HEAD of the checkout mf_harness runs from, or None (installed wheel, no git)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except Exception:
        return None


def package_versions(packages=PACKAGES) -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
