"""`mf-harness score`: head sets scored for specificity, end to end on the embedded model (offline)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mf_harness.runs.records import read_records

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1")
# the embedded model's shipped text-following spec (its k is chosen by the trainer's card: top<k> in the name)
(SPEC,) = sorted((REPO / "interventions").glob("embedded_text_instruction_top*.json"))
NAME = SPEC.stem
K = len(json.loads(SPEC.read_text())["block"])


def _score(*args, timeout=900):
    return subprocess.run([str(BIN / "mf-harness"), "score", *map(str, args), "--no-progress"], cwd=REPO,
                          capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    out = tmp_path_factory.mktemp("score")
    r = _score(SPEC, "L1H3+L2H5", "--output-dir", out, "--limit", 8, "--seeds", 2, "--follows", "text")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r


def test_writes_a_card_per_set_a_table_and_records(scored):
    out, r = scored
    sets = sorted(p.name for p in (out / "sets").iterdir())
    assert sets == sorted([NAME, "inline"])
    for name in sets:
        card = (out / "sets" / name / "card.md").read_text()
        assert card.startswith(f"# Head set `{name}`") and "specificity" in card
    assert "embedded (qwen2_5_vl_tiny" in (out / "sets" / NAME / "card.md").read_text()  # the spec's provenance
    assert f"| {NAME} | text | block @ instruction | {K} |" in (out / "score.md").read_text()
    assert "wrote " + str(out / "score.csv") in r.stdout
    header, recs = read_records(out / "records.jsonl")
    assert header["score"]["sets"] == sets
    assert header["score"]["capability_tasks"] == ["mf_shapes_image", "mf_shapes_text", "mf_shapes_agree",
                                                   "mf_shapes_caption"]
    originals = [x for x in recs if x.head_set == "original" and x.metric == "mfr" and x.subset == "full"]
    assert len(originals) == 1  # measured per set, kept once
    assert {x.task for x in recs if x.is_capability} == set(header["score"]["capability_tasks"])
    # leaderboard reads the combined records
    lb = subprocess.run([str(BIN / "mf-harness"), "leaderboard", str(out / "records.jsonl"), "--out",
                         str(out / "lb")], capture_output=True, text=True, env=ENV, timeout=300)
    assert lb.returncode == 0, lb.stderr[-2000:]


def _cell(out: Path, name: str, head_set: str, seed=None) -> dict:
    for p in (out / "sets" / name / "cells").glob("*.json"):
        d = json.loads(p.read_text())
        if d["meta"]["head_set"] == head_set and d["meta"]["seed"] == seed:
            return d
    raise AssertionError(f"no {head_set} cell in {name}")


def test_specificity_in_the_table_is_recomputed_from_the_per_sample_cells(scored):
    """effect = |MFR change| on the followed samples, collateral = mean |capability change| (x100), from the
    cells' per-sample outcomes written to disk, computed here by hand."""
    out, _ = scored
    orig = _cell(out, NAME, "original")
    tgt = _cell(out, NAME, "targeted")
    followed = [i for i, s in orig["tasks"]["mfr_text"]["samples"].items() if s["mfr"] == 1]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    effect = abs(mean([tgt["tasks"]["mfr_text"]["samples"][i]["mfr"] for i in followed]) - 1.0) * 100
    deltas = []
    for task in ("mf_shapes_image", "mf_shapes_text", "mf_shapes_agree", "mf_shapes_caption"):
        for metric, value in orig["tasks"][task]["metrics"].items():
            deltas.append(abs(tgt["tasks"][task]["metrics"][metric] - value) * 100)
            # corpus CIDEr is the mean of the per-image scores kept per sample
            per = [s[metric] for s in tgt["tasks"][task]["samples"].values()]
            assert mean(per) == pytest.approx(tgt["tasks"][task]["metrics"][metric], abs=1e-9)
    want = effect - mean(deltas)
    with open(out / "score.csv") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["head set"] == NAME)
    got = row["specificity [95% CI]"]
    assert float(got.split(" [")[0]) == pytest.approx(want, abs=0.051), (got, want)
    lo, hi = (float(x) for x in got.split(" [")[1].rstrip("]").split(", "))
    assert lo <= float(got.split(" [")[0]) <= hi
    assert row["specificity random layer-matched"] and row["specificity random any layer"]


def test_rerun_resumes_every_cell(scored):
    out, _ = scored
    before = (out / "score.csv").read_text()
    r = _score(SPEC, "L1H3+L2H5", "--output-dir", out, "--limit", 8, "--seeds", 2, "--follows", "text")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in (NAME, "inline"):
        stats = json.loads((out / "sets" / name / "sweep_stats.json").read_text())
        assert stats["cells_run"] == 0 and stats["cells_skipped"] == stats["cells"] == 6  # original, targeted, 2 + 2 random
    assert (out / "score.csv").read_text() == before


@pytest.mark.parametrize("args, message", [
    (["L9H0"], "head L9H0 is out of range"),
    (["nonsense.json"], "file not found"),
    (["L0H0", "--seeds", "0"], "--seeds"),
])
def test_bad_head_sets_are_one_clear_line_and_exit_2(tmp_path, args, message):
    r = _score(*args, "--output-dir", tmp_path / "o", "--limit", 2, timeout=300)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-1000:]
    assert message in r.stderr and "Traceback" not in r.stderr


def test_a_spec_with_two_actions_is_refused(tmp_path):
    p = tmp_path / "both.json"
    p.write_text(json.dumps({"block": ["L0H0"], "amplify": ["L1H1"], "coefficient": 2.0}))
    r = _score(p, "--output-dir", tmp_path / "o", "--limit", 2, timeout=300)
    assert r.returncode == 2 and "give one action" in r.stderr, r.stderr[-2000:]
