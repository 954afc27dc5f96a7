"""Sweeps, controls, statistics, records, tables and the regression check."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mf_harness.runs.leaderboard import compare_records, cross_model_table, render_markdown, specificity_tables
from mf_harness.runs.records import build_records, read_records, write_records
from mf_harness.core.spec import Head
from mf_harness.runs.stats import paired_difference, summarize
from mf_harness.errors import MfHarnessError
from mf_harness.runs.sweep import SweepConfig, plan_cells, random_any, random_matched

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def test_summary_statistics_by_hand():
    s = summarize([1, 0, 1, 1])
    assert s.value == 0.75 and s.n == 4
    assert s.stderr == pytest.approx(math.sqrt(0.25 / 4))  # sample var 0.25 (ddof=1), / n
    assert 0.0 <= s.ci_low <= 0.75 <= s.ci_high <= 1.0
    assert summarize([1, 1, 1]).ci_low == 1.0 == summarize([1, 1, 1]).ci_high
    d = paired_difference([1, 1, 0, 1], [0, 1, 0, 0])
    assert d.value == 0.5 and d.n == 4
    # pairing: identical offsets have zero spread
    p = paired_difference([0.2, 0.5, 0.9], [0.1, 0.4, 0.8])
    assert p.value == pytest.approx(0.1) and p.stderr == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])


def test_bootstrap_ci_covers_the_true_mean():
    rng = np.random.default_rng(3)
    hits = 0
    for i in range(60):
        x = rng.binomial(1, 0.3, size=200)
        s = summarize(x, n_boot=500, seed=i)
        hits += s.ci_low <= 0.3 <= s.ci_high
    assert hits >= 50  # ~95% nominal coverage


def test_random_controls_match_layers_avoid_targets_and_are_reproducible():
    targeted = [Head(3, 1), Head(3, 2), Head(5, 0)]
    a = random_matched(targeted, num_heads=8, seed=0)
    assert a == random_matched(targeted, num_heads=8, seed=0)
    assert a != random_matched(targeted, num_heads=8, seed=1)
    assert sorted(h.layer for h in a) == [3, 3, 5]
    assert not set(a) & set(targeted)
    # a layer whose heads are all targeted falls back to the whole layer
    full = [Head(0, h) for h in range(4)]
    assert sorted(random_matched(full, num_heads=4, seed=2)) == full


def test_random_any_draws_from_every_layer_avoids_targets_and_is_reproducible():
    targeted = [Head(0, h) for h in range(8)]  # a whole layer: the layer-matched control would be the same set
    sets = [random_any(targeted, num_layers=4, num_heads=8, seed=s) for s in range(20)]
    assert sets[0] == random_any(targeted, num_layers=4, num_heads=8, seed=0)
    assert len(set(sets)) == 20
    for a in sets:
        assert len(a) == 8 and len(set(a)) == 8 and not set(a) & set(targeted)
        assert all(0 <= h.layer < 4 and 0 <= h.head < 8 for h in a)
    assert {h.layer for a in sets for h in a} == {1, 2, 3}
    # more targeted heads than the rest of the model: draw from all heads
    everything = [Head(l, h) for l in range(2) for h in range(2)]
    drawn = random_any(everything[:3], num_layers=2, num_heads=2, seed=1)
    assert len(drawn) == len(set(drawn)) == 3 and set(drawn) <= set(everything)


def test_plan_cells_random_any_and_unknown_controls():
    rank = {"text": [Head(0, 0), Head(0, 1)], "vision": [Head(1, 0)]}
    cfg = SweepConfig(ks=[2], seeds=3, controls=["random_any"])
    cells = plan_cells(cfg, rank, num_layers=2, num_heads=2)
    rnd = [c for c in cells if c.head_set == "random_any"]
    assert len(rnd) == 2 * 3 and not [c for c in cells if c.head_set == "random"]
    t = next(c for c in rnd if c.follow == "text")
    assert set(t.heads) <= {Head(1, 0), Head(1, 1)} and len(t.heads) == 2
    with pytest.raises(MfHarnessError, match="unknown control.*random_any"):
        plan_cells(SweepConfig(controls=["randm"]), rank, num_layers=2, num_heads=2)


def test_plan_cells_grid():
    rank = {"text": [Head(3, 1), Head(2, 0), Head(3, 3), Head(1, 1)], "vision": [Head(3, 1), Head(0, 0), Head(1, 2)]}
    cfg = SweepConfig(ks=[1, 2, 99], seeds=5, coefficients=[8.0], scopes=["instruction", "last"])
    cells = plan_cells(cfg, rank, num_layers=4, num_heads=4)
    assert cells[0].head_set == "original" and cells[0].tasks == ("mfr_text", "mfr_vision")
    tgt = [c for c in cells if c.head_set == "targeted"]
    # 2 scopes x 2 actions x 2 follows x 3 ks (99 capped at 16)
    assert len(tgt) == 24 and {c.k for c in tgt} == {1, 2, 16}
    assert len([c for c in cells if c.head_set == "random"]) == 24 * 5
    shared = [c for c in cells if c.head_set == "shared"]
    assert shared and all(c.heads == (Head(0, 0), Head(1, 1), Head(1, 2), Head(2, 0), Head(3, 1), Head(3, 3))
                          or set(c.heads) == set(rank["text"]) & set(rank["vision"]) for c in shared)
    t1 = next(c for c in tgt if c.follow == "text" and c.k == 1 and c.intervention == "block")
    assert t1.heads == (Head(3, 1),) and t1.tasks == ("mfr_text",)
    assert t1.model_args() == f"block=L3H1,scope=instruction,spec_name={t1.label}"
    amp = next(c for c in tgt if c.intervention == "amplify")
    assert amp.spec.coefficient == 8.0 and "coefficient=8" in amp.model_args()
    assert len({c.cell_id for c in cells}) == len(cells)


def _result(meta, per_doc, task="mfr_text"):
    samples = {str(i): {"mfr": v, "competing": 1 - v, "neither": 0} for i, v in enumerate(per_doc)}
    return {"cell_id": meta["spec_name"], "meta": meta,
            "tasks": {task: {"metrics": {"mfr": float(np.mean(per_doc))}, "stderr": {}, "samples": samples,
                             "n": len(per_doc)}}}


def _meta(head_set, k=None, seed=None, hash_=None, intervention="block"):
    return {"head_set": head_set, "follow": None if head_set == "original" else "text", "k": k, "seed": seed,
            "intervention": "none" if head_set == "original" else intervention, "coefficient": None,
            "scope": None if head_set == "original" else "instruction", "spec_name": f"{head_set}{k}{seed}",
            "spec_hash": hash_ or f"h-{head_set}-{k}-{seed}", "heads": []}


def _records():
    orig = [1, 1, 1, 1, 0, 0]  # followed: docs 0-3, failed: 4-5
    results = [
        _result(_meta("original"), orig),
        _result(_meta("targeted", 2), [0, 0, 1, 0, 0, 0]),
        _result(_meta("random", 2, 0), [1, 1, 1, 0, 0, 0]),
        _result(_meta("random", 2, 1), [1, 1, 1, 1, 0, 1]),
    ]
    manifest = {"config": SweepConfig(model_args="pretrained=m1").to_dict(), "created": "2026-01-01T00:00:00+00:00",
                "versions": {}, "git": None}
    return build_records(results, manifest)


def test_records_protocol_subsets_pooled_random_and_paired_difference():
    recs = _records()
    get = lambda **kw: [r for r in recs if all(getattr(r, k) == v for k, v in kw.items())]  # noqa: E731
    (o,) = get(head_set="original", metric="mfr", subset="followed")
    assert o.value == 1.0 and o.n == 4
    (t,) = get(head_set="targeted", metric="mfr", subset="followed")
    assert t.value == 0.25 and t.n == 4  # docs 0-3: [0, 0, 1, 0]
    (tf,) = get(head_set="targeted", metric="mfr", subset="full")
    assert tf.value == pytest.approx(1 / 6) and tf.n == 6
    (pooled,) = get(head_set="random", seed=None, metric="mfr", subset="followed")
    # per doc over seeds: [1, 1, 1, 0.5] -> 0.875; seed means 0.75 and 1.0 -> sd 0.1768
    assert pooled.value == pytest.approx(0.875) and pooled.n_seeds == 2
    assert pooled.seed_sd == pytest.approx(np.std([0.75, 1.0], ddof=1))
    (diff,) = get(head_set="targeted-random", subset="followed")
    # [0-1, 0-1, 1-1, 0-0.5] -> mean -0.625
    assert diff.value == pytest.approx(-0.625) and diff.n == 4
    assert diff.ci_high <= 0.0
    (fail,) = get(head_set="targeted", metric="mfr", subset="failed")
    assert fail.value == 0.0 and fail.n == 2


def test_records_pair_each_random_control_separately():
    orig = [1, 1, 1, 1]
    results = [
        _result(_meta("original"), orig),
        _result(_meta("targeted", 2), [0, 0, 1, 0]),
        _result(_meta("random", 2, 0), [0, 1, 1, 0]),
        _result(_meta("random_any", 2, 0), [1, 1, 1, 1]),
        _result(_meta("random_any", 2, 1), [1, 1, 1, 0]),
    ]
    manifest = {"config": SweepConfig(model_args="pretrained=m1").to_dict(), "created": "2026-01-01T00:00:00+00:00",
                "versions": {}, "git": None}
    recs = build_records(results, manifest)
    get = lambda **kw: [r for r in recs if all(getattr(r, k) == v for k, v in kw.items())]  # noqa: E731
    (m,) = get(head_set="targeted-random", subset="followed")
    (a,) = get(head_set="targeted-random_any", subset="followed")
    assert m.value == pytest.approx(-0.25) and m.n_seeds == 1  # [0, -1, 0, 0]
    assert a.value == pytest.approx(-0.625) and a.n_seeds == 2  # [-1, -1, 0, -0.5]
    (pa,) = get(head_set="random_any", seed=None, subset="followed")
    assert pa.value == pytest.approx(0.875)
    (table,) = specificity_tables(recs)
    assert "vs random (layer-matched) [95% CI]" in table["columns"] and "vs random (any layer) [95% CI]" in table["columns"]
    tgt = next(r for r in table["rows"] if r[0] == "targeted")
    i = table["columns"].index("vs random (any layer) [95% CI]")
    assert tgt[i].startswith("-62.5")
    assert any(r[0] == "random (any layer) (pooled, 2 seeds)" for r in table["rows"])


def test_tables_and_round_trip(tmp_path):
    recs = _records()
    p = write_records(recs, tmp_path / "r.jsonl", header={"config": {"name": "x"}})
    header, back = read_records(p)
    assert header["type"] == "sweep" and back == recs
    assert [r.to_dict() for r in back] == json.loads(json.dumps([r.to_dict() for r in recs]))
    (tab,) = specificity_tables(back)
    md = render_markdown([tab])
    assert "| original |  | 100.0 (n=4) | 66.7 |" in md
    assert "| targeted | 2 | 25.0 [" in md and "-62.5 [" in md
    cm = cross_model_table([back, [dataclasses.replace(r, model="m2") for r in back]])
    assert [c for c in cm["columns"] if "mfr_text" in c] == ["m1 mfr_text", "m2 mfr_text"]


def test_compare_flags_moves_beyond_tolerance():
    recs = _records()
    assert compare_records(recs, recs, 0.0) == ([], [])
    i = next(i for i, r in enumerate(recs) if r.head_set == "targeted" and r.subset == "followed" and r.metric == "mfr")
    target = dataclasses.replace(recs[i], value=recs[i].value + 0.05)
    edited = recs[:i] + [target] + recs[i + 1:]
    fails, missing = compare_records(edited, recs, 0.02)
    assert len(fails) == 1 and fails[0]["delta"] == pytest.approx(-0.05) and not missing
    assert compare_records(edited, recs, 0.06) == ([], [])
    # CI mode: the new value 0.25 lies inside the baseline's wide bootstrap CI (n=4), so it passes ...
    assert target.ci_low <= 0.25 <= target.ci_high
    assert compare_records(edited, recs, 0.0, mode="ci") == ([], [])
    # ... unless the baseline's CI is moved away from it
    edited[i] = dataclasses.replace(target, ci_low=0.5, ci_high=0.6)
    fails, _ = compare_records(edited, recs, 0.0, mode="ci")
    assert len(fails) == 1 and fails[0]["allowed"] == "[0.5000, 0.6000]"
    fails, missing = compare_records(recs, recs[:-1], 0.02)
    assert len(missing) == 1


def _sweep_cmd(out, rankings, engine="fast", limit=6):
    return [str(BIN / "mf-harness"), "sweep", "--rankings", str(rankings), "--follows", "text", "--k", "1,2",
            "--seeds", "2", "--controls", "random", "--limit", str(limit), "--batch-size", "6", "--output-dir",
            str(out), "--no-progress", "--name", "t", "--engine", engine]


def _strip(rs):
    return [{k: v for k, v in r.to_dict().items() if k not in ("created", "git")} for r in rs]


@pytest.fixture(scope="module")
def rankings(tmp_path_factory):
    p = tmp_path_factory.mktemp("rank") / "heads.csv"
    p.write_text("follow,layer,head,rank\ntext,3,1,1\ntext,2,0,2\ntext,1,3,3\nvision,0,0,1\n")
    return p


@pytest.mark.parametrize("engine", ["lmms", "fast"])
def test_sweep_resumes_after_kill_with_identical_records(tmp_path, rankings, engine, hang_after):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    limit = 6 if engine == "lmms" else 24
    fresh = subprocess.run(_sweep_cmd(tmp_path / "fresh", rankings, engine, limit), capture_output=True, text=True,
                           env=env, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "model forwards:" in fresh.stdout
    # interrupted run: kill it mid-way (lmms: two cells on disk, each a whole lmms-eval run; fast: four samples
    # answered, then the run hangs in the fifth until the kill, since a tiny model answers 24 in a blink)
    out = tmp_path / "killed"
    hook, hung = hang_after(tmp_path / "hook", "mfr_text", 4)
    proc = subprocess.Popen(_sweep_cmd(out, rankings, engine, limit), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(env, **hook) if engine == "fast" else env)
    log = out / "fast" / "mfr_text.jsonl"
    progress = (lambda: len(list((out / "cells").glob("*.json")))) if engine == "lmms" else \
        (lambda: len(log.read_text().splitlines()) if log.exists() else 0)
    deadline = time.time() + 300
    while time.time() < deadline and (progress() < 2 if engine == "lmms" else not hung()) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the killed run ended on its own"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = progress()
    resumed = subprocess.run(_sweep_cmd(out, rankings, engine, limit), capture_output=True, text=True, env=env,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if engine == "lmms":
        assert 2 <= done_before < 7
        assert f"({7 - done_before} run, {done_before} resumed from disk)" in resumed.stdout
    else:
        assert done_before == 4, done_before
        ids = [json.loads(line)["doc_id"] for line in log.read_text().splitlines() if line.strip()]
        assert sorted(ids) == list(range(limit))  # every sample answered exactly once across both runs
    assert _strip(read_records(out / "records.jsonl")[1]) == \
        _strip(read_records(tmp_path / "fresh" / "records.jsonl")[1])
    # one lmms-eval results directory per cell
    assert len({p.parent.parent for p in (out / "runs").glob("*/*/*_results*.json")}) == 7


def test_fast_engine_gives_the_lmms_engine_records(tmp_path, rankings):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for engine in ("lmms", "fast"):
        r = subprocess.run(_sweep_cmd(tmp_path / engine, rankings, engine, 8), capture_output=True, text=True,
                           env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    a = read_records(tmp_path / "lmms" / "records.jsonl")[1]
    b = read_records(tmp_path / "fast" / "records.jsonl")[1]
    assert len(a) == len(b) > 0 and _strip(a) == _strip(b)


def test_compare_cli_passes_then_fails_on_an_edited_baseline(tmp_path, rankings):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run(_sweep_cmd(tmp_path / "base", rankings), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    base = tmp_path / "base" / "records.jsonl"
    # the rankings live outside the working directory: compare re-runs with them only when named
    ok = subprocess.run([str(BIN / "mf-harness"), "compare", "--baseline", str(base), "--no-progress",
                         "--rankings", str(rankings)], capture_output=True, text=True, env=env, timeout=600)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stdout + ok.stderr[-2000:]
    lines = base.read_text().splitlines()
    for i, line in enumerate(lines):
        d = json.loads(line)
        if d.get("head_set") == "targeted" and d.get("metric") == "neither" and d.get("subset") == "full":
            d["value"] = d["value"] + 0.5 if d["value"] < 0.5 else d["value"] - 0.5
            lines[i] = json.dumps(d)
            break
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(lines) + "\n")
    bad = subprocess.run([str(BIN / "mf-harness"), "compare", "--baseline", str(edited), "--no-progress",
                          "--rankings", str(rankings)], capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 1
    assert "REGRESSION" in bad.stdout and "neither" in bad.stdout


def test_sweep_on_another_mfr_task_family(tmp_path, rankings):
    """`--mfr-task mfr_dev` scores every cell on mfr_dev_<follow> (same docs as lmms-eval's own run of it),
    and the records, pooled controls and tables follow that task."""
    out = tmp_path / "dev"
    p = subprocess.run([str(BIN / "mf-harness"), "sweep", "--rankings", str(rankings), "--k", "1", "--seeds", "2",
                        "--follows", "text", "--controls", "random,random_any", "--limit", "6",
                        "--mfr-task", "mfr_dev", "--output-dir", str(out), "--name", "dev", "--no-progress"],
                       capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    _, recs = read_records(out / "records.jsonl")
    assert {r.task for r in recs} == {"mfr_dev_text"}
    assert {r.head_set for r in recs} >= {"original", "targeted", "random", "random_any", "targeted-random",
                                             "targeted-random_any"}
    # the original cell's per-sample answers are lmms-eval's own on mfr_dev_text
    from mf_harness.lmms.run import run_mfr

    direct = run_mfr("pretrained=embedded", tasks=("mfr_dev_text",), limit=6)["mfr_dev_text"]
    (o,) = [r for r in recs if r.head_set == "original" and r.metric == "mfr" and r.subset == "full"]
    assert o.value == pytest.approx(direct["mfr"]) and o.n == 6
    (table,) = specificity_tables(recs)
    followed = round(o.value * 6)  # the blocking table is read on the samples the original model follows
    assert table["rows"][0][2].endswith(f"(n={followed})")
    bad = subprocess.run([str(BIN / "mf-harness"), "sweep", "--rankings", str(rankings), "--mfr-task", "textvqa",
                          "--output-dir", str(tmp_path / "bad")], capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)
    assert bad.returncode == 2 and "mfr_task must name an MFR task family" in bad.stderr


def with_cap(res, acc):
    """A result with a capability task "cap" of 10 samples whose accuracy is ``acc``."""
    res["tasks"]["cap"] = {"metrics": {"acc": acc}, "stderr": {"acc": 0.01}, "n": 10,
                           "samples": {str(i): {"acc": float(i < round(acc * 10))} for i in range(10)}}
    return res


def _cap_records():
    """Original, targeted and two random seeds, each with MFR on 4 samples and capability accuracy on 10."""
    results = [
        with_cap(_result(_meta("original"), [1, 1, 1, 1]), 0.8),
        with_cap(_result(_meta("targeted", 2), [0, 0, 1, 0]), 0.7),
        with_cap(_result(_meta("random", 2, 0), [1, 1, 1, 0]), 0.6),
        with_cap(_result(_meta("random", 2, 1), [1, 1, 1, 1]), 0.9),
    ]
    manifest = {"config": SweepConfig(model_args="pretrained=m1").to_dict(), "created": "2026-01-01T00:00:00+00:00",
                "versions": {}, "git": None}
    return build_records(results, manifest)


def test_random_controls_pool_capability_metrics_over_seeds():
    recs = _cap_records()
    (pooled,) = [r for r in recs if r.head_set == "random" and r.seed is None and r.task == "cap"]
    assert pooled.value == pytest.approx(0.75) and pooled.n_seeds == 2
    assert pooled.seed_sd == pytest.approx(np.std([0.6, 0.9], ddof=1))
    (table,) = specificity_tables(recs)
    row = next(r for r in table["rows"] if r[0].startswith("random (layer-matched)"))
    cell = row[table["columns"].index("cap/acc")]
    assert cell.startswith("75.0") and "-5.0" in cell, cell


def test_card_intervals_against_hand_computations():
    """The intervals the embedded model's card reports live in runs.stats (no copies in the trainer)."""
    from mf_harness.runs.stats import paired_bootstrap_interval, t_interval, wilson_interval

    # Wilson, p = 0.5, n = 100: 0.5 -+ 1.96 sqrt(0.25/100 + 1.96^2/40000) / (1 + 1.96^2/100)
    half = 1.96 * math.sqrt(0.0025 + 1.96 ** 2 / 40000) / (1 + 1.96 ** 2 / 100)
    assert wilson_interval(0.5, 100) == (round(0.5 - half, 4), round(0.5 + half, 4)) == (0.4038, 0.5962)
    assert wilson_interval(1.0, 20)[1] == 1.0 and math.isnan(wilson_interval(0.3, 0)[0])
    # t, n = 3: 2 -+ 4.303 * 1 / sqrt(3)
    assert t_interval([1.0, 2.0, 3.0]) == (round(2 - 4.303 / math.sqrt(3), 4), round(2 + 4.303 / math.sqrt(3), 4))
    assert paired_bootstrap_interval([0, 0, 0, 0], [[1, 1, 1, 1], [1, 1, 1, 1]]) == (1.0, 1.0)
    lo, hi = paired_bootstrap_interval([1, 0, 1, 0, 1, 0], [[1, 1, 1, 1, 1, 1]])
    assert 0.0 <= lo < 0.5 < hi <= 1.0


def test_specificity_records_by_hand():
    """Specificity = |MFR change| x100 on the protocol subset - mean |capability change| x100, per head set; a
    random control pooled per sample over its seeds, with the seeds' spread."""
    recs = _cap_records()
    spec = {(r.head_set, r.seed): r for r in recs if r.metric == "specificity"}
    assert set(spec) == {("targeted", None), ("random", 0), ("random", 1), ("random", None)}
    t = spec[("targeted", None)]
    assert t.value == pytest.approx(75.0 - 10.0) and t.subset == "followed" and t.task == "mfr_text" and t.n == 4
    assert t.ci_low <= t.value <= t.ci_high
    assert spec[("random", 0)].value == pytest.approx(25.0 - 20.0)
    assert spec[("random", 1)].value == pytest.approx(0.0 - 10.0)
    pooled = spec[("random", None)]
    # per sample over seeds: MFR [1, 1, 1, .5] -> effect 12.5; accuracy (0.6 + 0.9) / 2 = 0.75 -> 5 points
    assert pooled.value == pytest.approx(12.5 - 5.0) and pooled.n_seeds == 2
    assert pooled.seed_sd == pytest.approx(np.std([5.0, -10.0], ddof=1))
    (table,) = specificity_tables(recs)
    rows = {r[0]: r for r in table["rows"]}
    assert rows["targeted"][-1].startswith("65.0 [")
    assert rows["random (layer-matched) (pooled, 2 seeds)"][-1].startswith("7.5 [") and "seed sd 10.6" in \
        rows["random (layer-matched) (pooled, 2 seeds)"][-1]


def test_specificity_interval_is_a_paired_bootstrap():
    from mf_harness.runs.stats import Paired, metric_scale, specificity

    effect = Paired("mfr", [1] * 10, [0] * 6 + [1] * 4)
    same = Paired("cap", [1, 0, 1, 1], [1, 0, 1, 1])
    s = specificity(effect, [same], n_boot=4000, seed=1)
    assert s.value == pytest.approx(60.0)
    # collateral is 0 on every resample (paired: the same samples for both), so the interval is the effect's
    lo, hi = np.quantile([abs(np.random.default_rng(i).choice([1] * 6 + [0] * 4, 10).mean()) for i in range(4000)],
                         [0.025, 0.975])
    assert abs(s.ci_low - 100 * lo) <= 10.0 and abs(s.ci_high - 100 * hi) <= 10.0
    assert math.isnan(specificity(effect, []).value)  # no capability: the collateral is not known
    assert metric_scale("flickr_PPL") == 1.0 and metric_scale("shapes_CIDEr") == 100.0
    with pytest.raises(ValueError, match="paired samples"):
        specificity(effect, [Paired("cap", [1, 0], [1])])


def test_random_controls_of_a_hybrid_decoder_draw_from_layers_with_heads():
    targeted = [Head(1, 0), Head(3, 2)]
    for s in range(10):
        drawn = random_any(targeted, (1, 3), 4, seed=s)
        assert {h.layer for h in drawn} <= {1, 3} and not set(drawn) & set(targeted) and len(drawn) == 2
    # a count and the same layers as a tuple draw the same heads (the CI baselines' random sets do not move)
    assert random_any(targeted, 4, 4, seed=3) == random_any(targeted, (0, 1, 2, 3), 4, seed=3)
