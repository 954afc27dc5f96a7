"""The locked install: the lock covers what the package needs, pins exactly, and the demo checks itself."""

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, list[str]]:
    pins: dict[str, list[str]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            name = _norm(m.group(1))
            pins[name] = []
        elif "--hash=sha256:" in line and name:
            pins[name].append(line.split("--hash=sha256:")[1].strip(" \\"))
    return pins


def test_lock_pins_every_requirement_with_hashes():
    pins = _lock()
    assert len(pins) > 50
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for hs in pins.values() for h in hs)
    assert not [n for n, hs in pins.items() if not hs], "every pin needs at least one hash"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {_norm(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in deps}
    missing = sorted(names - set(pins))
    assert not missing, f"pyproject dependencies absent from the lock: {missing} (run `make lock`)"
    for also in ("setuptools", "wheel", "filelock", "numpy", "tokenizers", "huggingface-hub"):
        assert also in pins  # the build backend and transitive dependencies are locked too
    assert "torchvision" not in pins  # CUDA-linked on PyPI: breaks next to CPU torch


def test_lean_and_no_deps_requirements_are_in_pyproject():
    """requirements/*.txt (what the lock resolves) and pyproject (what users install) name the same ranges."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = {_norm(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]): d.replace(" ", "") for d in deps}
    for f in ("lean.txt", "no-deps.txt"):
        for line in (REPO / "requirements" / f).read_text().splitlines():
            line = line.split("#")[0].strip()
            if not line or _norm(line.split(">")[0].split("=")[0]) == "pytest":
                continue
            name = _norm(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0])
            assert name in spec and spec[name].lower() == line.replace(" ", "").lower(), (f, line, spec.get(name))


def _rec(head_set, task, value, subset="full", metric="mfr"):
    from mf_harness.runs.records import Record

    return Record(head_set=head_set, task=task, value=value, subset=subset, metric=metric)


def test_demo_flags_interventions_that_changed_nothing():
    from mf_harness.demo import plausibility_problems

    recs = [_rec("original", "mfr_text", 1.0), _rec("original", "mfr_vision", 1.0),
            _rec("targeted", "mfr_text", 1.0), _rec("targeted", "mfr_vision", 1.0),
            _rec("random", "mfr_text", 1.0)]
    problems = plausibility_problems(recs)
    assert len(problems) == 1 and "all 2 targeted cells equal the original" in problems[0]
    recs[3] = _rec("targeted", "mfr_vision", 0.487)
    assert plausibility_problems(recs) == []


def test_demo_flags_a_model_that_does_not_follow_instructions():
    from mf_harness.demo import plausibility_problems

    recs = [_rec("original", "mfr_text", 0.02), _rec("original", "mfr_vision", 0.9),
            _rec("targeted", "mfr_text", 0.0), _rec("original", "mfr_text", 1.0, subset="followed")]
    problems = plausibility_problems(recs)
    assert len(problems) == 1 and "mfr_text is 2.0%" in problems[0]


@pytest.mark.parametrize("broken", [False, True])
def test_demo_exits_nonzero_when_its_numbers_are_implausible(tmp_path, monkeypatch, capsys, broken):
    """The demo's exit status follows the check (a tiny sweep on the embedded model, 2 docs per task)."""
    import mf_harness.demo as demo

    if broken:  # what a broken install looks like: hooks that multiply nothing, and no coverage check
        import torch

        import mf_harness.core.hooks as hooks

        def no_op(self, start, T, x):
            return torch.ones(x.shape[0], T, x.shape[2] // self.head_dim, dtype=x.dtype), 0

        monkeypatch.setattr(hooks._LayerHooks, "factor", no_op)
        monkeypatch.setattr(hooks._Tracker, "check", lambda self: None)
    rc = demo.main(limit=12, out=tmp_path / "demo")
    err = capsys.readouterr().err
    assert rc == (1 if broken else 0)
    assert ("cannot come from a working install" in err) == broken
