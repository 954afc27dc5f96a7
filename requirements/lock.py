"""Build, lock and check the CPU install that `make setup` and CI use.

    python3 requirements/lock.py lock   [--out requirements/lock.txt]   # `make lock`
    python3 requirements/lock.py install --venv DIR [--skip torch]       # `make setup`
    python3 requirements/lock.py ranges --venv DIR                       # `make test-latest`'s venv
    python3 requirements/lock.py check  --venv DIR [--lock FILE]         # the venv is exactly the lock

Why this and not uv / pip-compile: lmms-eval 0.7.3's own requirements pull torchvision (CUDA-linked,
breaks next to CPU torch), wandb, yt-dlp and more, so the install that works installs lmms-eval and
lm-eval with ``--no-deps`` and then what they really import (requirements/lean.txt). No resolver can
express "this package without its declared requirements", so the lock is taken from a real install
instead: a fresh venv is built from the ranges exactly as a user would, its resolution is frozen
(every package, transitive ones included), and each pin gets the sha256 of every file PyPI has for
that version (PEP 691 JSON), so ``pip install --no-deps --require-hashes -r lock.txt`` reproduces it
on any machine and refuses a file that changed. uv would also fetch a CUDA torch here (it does not
look at the machine's local CPU wheel); pip does, and the local wheel's own hash is added to the pin.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LEAN = HERE / "lean.txt"
NO_DEPS = HERE / "no-deps.txt"
LOCK = HERE / "lock.txt"
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
BUILD = ["setuptools>=68", "wheel"]  # the build backend, installed first so sdists build without isolation
SKIP = {"pip"}  # the venv's own installer is not part of the resolution


def _run(*cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def _pip(venv: Path, *args, **kw):
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return _run(venv / "bin" / "python", "-m", "pip", *args, env=env, **kw)


def build_from_ranges(venv: Path) -> None:
    """A venv from the ranges, as `make setup` did before the lock: CPU torch, then lmms-eval and
    lm-eval without their declared requirements, then what they really import."""
    if venv.exists():
        shutil.rmtree(venv)
    _run(sys.executable, "-m", "venv", venv)
    _pip(venv, "install", "-q", *BUILD)
    _pip(venv, "install", "-q", TORCH_SPEC)
    out = subprocess.run([venv / "bin" / "python", "-c", "import torch; print(torch.__version__)"],
                         check=True, capture_output=True, text=True).stdout.strip()
    constraints = venv / "torch-constraint.txt"
    constraints.write_text(f"torch=={out}\n")
    _pip(venv, "install", "-q", "--no-deps", "-r", NO_DEPS)
    _pip(venv, "install", "-q", "-c", constraints, "-r", LEAN)


def freeze(venv: Path) -> list[tuple[str, str]]:
    out = subprocess.run([venv / "bin" / "python", "-m", "pip", "freeze", "--all", "--exclude-editable"],
                         check=True, capture_output=True, text=True).stdout
    pins = []
    for line in out.splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if not m:
            raise SystemExit(f"lock: cannot lock a requirement that is not a plain pin: {line!r}")
        if _norm(m.group(1)) not in SKIP:
            pins.append((m.group(1), m.group(2)))
    return sorted(pins, key=lambda p: _norm(p[0]))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pypi_hashes(name: str, version: str) -> list[str]:
    """sha256 of every file PyPI has for ``name==version`` (PEP 691 JSON simple API)."""
    req = urllib.request.Request(f"https://pypi.org/simple/{_norm(name)}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    from pip._vendor.packaging.utils import (InvalidSdistFilename, InvalidWheelFilename, canonicalize_version,
                                             parse_sdist_filename, parse_wheel_filename)
    from pip._vendor.packaging.version import InvalidVersion

    want = canonicalize_version(version)
    hashes = []
    for f in files:
        fn = f["filename"]
        try:
            v = parse_wheel_filename(fn)[1] if fn.endswith(".whl") else parse_sdist_filename(fn)[1]
        except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
            continue
        if canonicalize_version(str(v)) == want and "sha256" in f.get("hashes", {}):
            hashes.append(f["hashes"]["sha256"])
    return sorted(set(hashes))


def _local_hashes(venv: Path, name: str, version: str) -> list[str]:
    """sha256 of the file pip itself picks for the pin on this machine (e.g. the local CPU torch wheel)."""
    with tempfile.TemporaryDirectory() as d:
        _pip(venv, "download", "-q", "--no-deps", "-d", d, f"{name}=={version}")
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(d).iterdir()]


def lock(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mf-harness-lock-") as tmp:
        venv = Path(tmp) / "venv"
        build_from_ranges(venv)
        pins = freeze(venv)
        lines = []
        for name, version in pins:
            hashes = _pypi_hashes(name, version) if "+" not in version else []
            if not hashes:
                hashes = _local_hashes(venv, name, version)
            if not hashes:
                raise SystemExit(f"lock: no file found for {name}=={version}")
            lines.append(f"{name}=={version} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in hashes))
        py = subprocess.run([venv / "bin" / "python", "-c", "import platform; print(platform.python_version())"],
                            check=True, capture_output=True, text=True).stdout.strip()
    header = (
        "# mf-harness: the exact install that `make setup` and CI use. Generated by `make lock`\n"
        "# (python3 requirements/lock.py lock) from requirements/no-deps.txt + requirements/lean.txt and\n"
        f"# {TORCH_SPEC}; do not edit by hand. Resolved {dt.date.today().isoformat()} on Python {py}.\n"
        "# Install: pip install --no-deps --require-hashes -r requirements/lock.txt\n"
    )
    out.write_text(header + "\n".join(lines) + "\n")
    print(f"lock: wrote {out} ({len(pins)} packages)")


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def check(venv: Path, lock_path: Path, skip: set[str]) -> None:
    """Fail unless every locked package is installed at its locked version (``skip``: left to the env)."""
    want = {k: v for k, v in read_lock(lock_path).items() if k not in skip}
    have = {_norm(n): v for n, v in freeze(venv)}
    wrong = [f"{n}: locked {v}, installed {have.get(n, 'nothing')}" for n, v in want.items() if have.get(n) != v]
    if wrong:
        raise SystemExit("setup: the venv does not match the lock:\n  " + "\n  ".join(wrong))
    extra = sorted(set(have) - set(want) - skip)
    note = f" ({len(extra)} packages beyond the lock: {', '.join(extra)})" if extra else ""
    print(f"setup: {len(want)} packages exactly as locked in {lock_path.name}{note}")


def install(venv: Path, lock_path: Path, skip: set[str]) -> None:
    """Install exactly the lock into ``venv`` (created if missing): the build backend first, so packages
    that ship only an sdist build against the locked setuptools, then everything else, all with
    ``--no-deps --require-hashes``; then this project, editable; then `check`."""
    if not (venv / "bin" / "python").exists():
        _run(sys.executable, "-m", "venv", venv)
    entries = re.split(r"\n(?=[A-Za-z0-9])", "\n".join(l for l in lock_path.read_text().splitlines()
                                                      if not l.startswith("#")).strip())
    entries = [e for e in entries if _norm(e.split("==")[0]) not in skip]
    build = [e for e in entries if _norm(e.split("==")[0]) in ("setuptools", "wheel")]
    with tempfile.TemporaryDirectory() as d:
        for name, part in (("build.txt", build), ("rest.txt", entries)):
            f = Path(d) / name
            f.write_text("\n".join(part) + "\n")
            _pip(venv, "install", "-q", "--no-deps", "--require-hashes", "--no-build-isolation", "-r", f)
    _pip(venv, "install", "-q", "--no-deps", "--no-build-isolation", "-e", ROOT)
    check(venv, lock_path, skip)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("lock", help="resolve the ranges in a fresh venv and write the hashed lock")
    p.add_argument("--out", type=Path, default=LOCK)
    p = sub.add_parser("ranges", help="build a venv from the ranges (newest releases they allow)")
    p.add_argument("--venv", type=Path, required=True)
    p = sub.add_parser("install", help="install exactly the lock (and this project, editable) into a venv")
    p.add_argument("--venv", type=Path, required=True)
    p.add_argument("--lock", type=Path, default=LOCK)
    p.add_argument("--skip", default="", help="space-separated packages left to the environment (e.g. torch)")
    p = sub.add_parser("check", help="check that a venv holds exactly the locked versions")
    p.add_argument("--venv", type=Path, required=True)
    p.add_argument("--lock", type=Path, default=LOCK)
    p.add_argument("--skip", default="", help="space-separated packages left to the environment (e.g. torch)")
    a = ap.parse_args(argv)
    if a.cmd == "lock":
        lock(a.out)
    elif a.cmd == "install":
        install(a.venv, a.lock, {_norm(s) for s in a.skip.split()})
    elif a.cmd == "ranges":
        build_from_ranges(a.venv)
    else:
        check(a.venv, a.lock, {_norm(s) for s in a.skip.split()})


if __name__ == "__main__":
    main()
