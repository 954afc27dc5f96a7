"""The real lmms-eval CLI (and mf-harness's) on the embedded checkpoint, as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def _lmms_eval(args, cwd, timeout=300):
    return subprocess.run([str(BIN / "lmms-eval"), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _results(out_dir: Path) -> dict:
    files = sorted(out_dir.rglob("*_results.json"))
    assert files, f"no results under {out_dir}"
    return json.loads(files[-1].read_text())


def _samples(out_dir: Path, task: str) -> list[dict]:
    files = sorted(out_dir.rglob(f"*_samples_{task}.jsonl"))
    assert files, f"no samples for {task} under {out_dir}"
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run without and one with a spec file, from a folder outside the repo, no --include_path."""
    cwd = tmp_path_factory.mktemp("cwd")
    spec = REPO / "interventions" / "embedded_block_demo.json"
    out = {}
    for name, margs in (("clean", "pretrained=embedded"), ("spec", f"pretrained=embedded,intervention={spec}")):
        od = cwd / name
        p = _lmms_eval(["--model", "intervened_qwen", "--model_args", margs, "--tasks", "mfr", "--limit", "12",
                        "--batch_size", "4", "--output_path", str(od), "--log_samples"], cwd)
        out[name] = (p, od)
    return out


def test_cli_runs_mfr_without_include_path(runs):
    p, od = runs["clean"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = _results(od)["results"]
    for task in ("mfr_text", "mfr_vision"):
        r = res[task]
        assert 0.0 <= r["mfr,none"] <= 1.0
        assert r["mfr,none"] + r["competing,none"] + r["neither,none"] == pytest.approx(1.0)


def test_cli_spec_changes_the_answers_at_instruction_tokens(runs):
    (pc, oc), (ps, os_) = runs["clean"], runs["spec"]
    assert ps.returncode == 0, ps.stdout[-3000:] + ps.stderr[-3000:]
    clean = {s["doc_id"]: s["filtered_resps"] for s in _samples(oc, "mfr_text")}
    spec = {s["doc_id"]: s["filtered_resps"] for s in _samples(os_, "mfr_text")}
    assert clean.keys() == spec.keys() and len(clean) == 12
    assert any(clean[k] != spec[k] for k in clean), "blocking 4 of 16 heads changed no answer"


def test_out_of_range_head_is_one_clear_message_and_nonzero_exit(tmp_path):
    p = _lmms_eval(["--model", "intervened_qwen", "--model_args", "pretrained=embedded,block=L2H0+L9H1",
                    "--tasks", "mfr", "--limit", "2"], tmp_path)
    assert p.returncode != 0
    err = p.stderr
    assert "head L9H1 is out of range" in err and "layer must be 0..3" in err
    assert "Traceback" not in err + p.stdout


def test_malformed_spec_file_fails_loudly(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "block": ["L1H1", "L1H1"]}')
    p = _lmms_eval(["--model", "intervened_qwen", "--model_args", f"pretrained=embedded,intervention={bad}",
                    "--tasks", "mfr_text", "--limit", "2"], tmp_path)
    assert p.returncode != 0 and "head L1H1 is listed twice" in p.stderr


def test_include_path_still_works(tmp_path):
    p = _lmms_eval(["--model", "intervened_qwen", "--model_args", "pretrained=embedded", "--tasks", "mfr_text",
                    "--limit", "2", "--include_path", str(REPO / "tasks"), "--output_path", str(tmp_path / "o")],
                   tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "mfr_text" in _results(tmp_path / "o")["results"]


def test_mf_harness_commands(tmp_path):
    p = subprocess.run([str(BIN / "mf-harness"), "embedded-path"], capture_output=True, text=True, env=ENV)
    assert p.returncode == 0 and (Path(p.stdout.strip()) / "config.json").is_file()
    p = subprocess.run([str(BIN / "mf-harness"), "spec", "--block", "L0H1+L3H3", "--scope", "last", "--model",
                        "embedded", "-o", str(tmp_path / "s.json")], capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "s.json").read_text())["block"] == ["L0H1", "L3H3"]
    p = subprocess.run([str(BIN / "mf-harness"), "spec", "--block", "L0H8", "--model", "embedded"],
                       capture_output=True, text=True, env=ENV)
    assert p.returncode == 2 and p.stderr.strip() == (
        "mf-harness: error: block: head L0H8 is out of range: embedded has 8 heads per layer (head must be 0..7)")


def test_missing_coco_image_is_one_clear_message(tmp_path):
    mc2 = Path(os.environ.get("MF_HARNESS_SHARED", REPO.parent / "shared")) / "data" / "mc2" / "evaluate_final.json"
    env = dict(ENV, MF_HARNESS_MC2_FILE=str(mc2), MF_HARNESS_COCO_ROOT=str(tmp_path))
    p = subprocess.run([str(BIN / "lmms-eval"), "--model", "intervened_qwen", "--model_args", "pretrained=embedded",
                        "--tasks", "mfr_mc2_text", "--limit", "2"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("mf-harness: error:")]
    assert len(lines) == 1, p.stderr[-2000:]
    assert "COCO image 0000" in lines[0] and "not found under MF_HARNESS_COCO_ROOT" in lines[0]
    assert "Traceback" not in p.stderr


def test_unknown_phrasing_inside_process_docs_is_unwrapped(tmp_path):
    p = subprocess.run([str(BIN / "lmms-eval"), "--model", "intervened_qwen", "--model_args", "pretrained=embedded",
                        "--tasks", "mfr_text", "--limit", "2"], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(ENV, MF_HARNESS_INSTRUCTION="bogus"), timeout=300)
    assert p.returncode == 1
    assert "mf-harness: error: MF_HARNESS_INSTRUCTION: unknown instruction phrasing 'bogus'" in p.stderr
    assert "Traceback" not in p.stderr


def test_train_embedded_help_is_the_trainers():
    p = subprocess.run([str(BIN / "mf-harness"), "train-embedded", "--help"], capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr
    assert "--eval-only" in p.stdout and "--route-prob" in p.stdout and "discover" not in p.stdout
