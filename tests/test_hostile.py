"""Hostile input: a table of bad inputs through ``mf-harness`` and ``lmms-eval``, each asserting the exit code,
one ``mf-harness: error:`` line naming the problem, no traceback, and nothing written that must be taken back.
The remote-code cases use a checkpoint whose own Python would drop a marker file if it ever ran."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the cases point at: a binary spec, a spec with a negative head, a non-JSON config, a corrupt
    and an unknown-schema records file, an empty one, a checkpoint with remote code, a BERT checkpoint."""
    d = tmp_path_factory.mktemp("hostile")
    (d / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")
    (d / "neg.json").write_text(json.dumps({"schema_version": 1, "block": [{"layer": 0, "head": -1}]}))
    (d / "notjson.txt").write_text("ks: [1, 2]\n")
    (d / "corrupt.jsonl").write_text('{"type": "sweep", "config": {}}\n{"head_set": "orig\n')
    (d / "schema9.jsonl").write_text(json.dumps({"schema_version": 9, "head_set": "original", "task": "t",
                                                 "metric": "m", "subset": "full"}) + "\n")
    (d / "empty.jsonl").write_text("")
    (d / "a_file").write_text("not a folder")
    evil = d / "evil_ckpt"
    evil.mkdir()
    marker = d / "REMOTE_CODE_RAN"
    (evil / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig"},
                                                  "architectures": ["EvilModel"]}))
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                  "from transformers import PretrainedConfig\n"
                                  "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    bert = d / "bert_ckpt"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2,
                                                  "num_hidden_layers": 1, "intermediate_size": 64}))
    header = {"type": "sweep", "config": {"model_args": "pretrained=embedded", "rankings": "heads.csv", "ks": [1],
                                          "seeds": 1, "controls": ["random"], "follows": ["text"], "limit": 2}}
    rec = {"schema_version": 1, "head_set": "original", "task": "mfr_text", "metric": "mfr", "subset": "full",
           "value": 1.0}

    def baseline(name, **cfg):
        p = d / name
        p.write_text(json.dumps({**header, "config": {**header["config"], **cfg}}) + "\n" + json.dumps(rec) + "\n")
        return p

    baseline("remote.jsonl", model_args=f"pretrained={evil},trust_remote_code=true")
    baseline("remote_no.jsonl", model_args=f"pretrained={evil},trust_remote_code=no")
    baseline("other_model.jsonl", model_args="pretrained=Qwen/Qwen2.5-VL-7B-Instruct")
    baseline("spec_file.jsonl", model_args=f"pretrained=embedded,intervention={d / 'neg.json'}")
    baseline("far_rankings.jsonl", rankings="/etc/passwd")
    baseline("dotdot_rankings.jsonl", rankings="../../heads.csv")
    return d, marker


# (name, argv with {d} for the world folder, exit code, words the one line must contain)
MF_CASES = [
    ("binary spec file", ["spec", "{d}/binary.json"], 2, ["not a UTF-8 JSON"]),
    ("empty --block", ["spec", "--block", ""], 2, ["--block names no heads"]),
    ("negative head", ["spec", "{d}/neg.json"], 2, ["head must be a non-negative integer, got -1"]),
    ("coefficient without amplify", ["spec", "--block", "L0H1", "--coefficient", "5"], 2,
     ["coefficient 5 applies to amplified heads"]),
    ("--decode not a boolean", ["spec", "--block", "L0H1", "--decode", "maybe"], 2, ["--decode", "true/false"]),
    ("bad --model", ["spec", "--block", "L0H1", "--model", "{d}/nope"], 2, ["cannot load checkpoint"]),
    ("-o is a directory", ["spec", "--block", "L0H1", "-o", "{d}"], 2, ["is a directory"]),
    ("--k 0", ["sweep", "--k", "0", "--output-dir", "{d}/o1"], 2, ["--k", "integer >= 1", "'0'"]),
    ("--k -1", ["sweep", "--k", "-1", "--output-dir", "{d}/o1"], 2, ["--k", "integer >= 1", "'-1'"]),
    ("--k abc", ["sweep", "--k", "abc", "--output-dir", "{d}/o1"], 2, ["--k", "'abc'"]),
    ("--seeds 0 with random controls", ["sweep", "--k", "1", "--seeds", "0", "--rankings", "x",
                                       "--output-dir", "{d}/o1"], 2, ["seeds must be an integer >= 1", "0"]),
    ("--limit 0", ["sweep", "--limit", "0", "--output-dir", "{d}/o1"], 2, ["--limit", "integer >= 1"]),
    ("--limit -236", ["sweep", "--limit", "-236", "--output-dir", "{d}/o1"], 2, ["--limit", "'-236'"]),
    ("--batch-size 0", ["sweep", "--batch-size", "0", "--output-dir", "{d}/o1"], 2, ["--batch-size", "integer >= 1"]),
    ("--name escapes the output dir", ["sweep", "--name", "../../x", "--output-dir", "{d}/o1"], 2, ["--name", "'../../x'"]),
    ("config not JSON", ["sweep", "--config", "{d}/notjson.txt", "--output-dir", "{d}/o1"], 2, ["not a JSON file"]),
    ("output dir is a file", ["sweep", "--k", "1", "--rankings", "x", "--output-dir", "{d}/a_file"], 2, ["is a file"]),
    ("--tolerance nan", ["compare", "--baseline", "{d}/empty.jsonl", "--tolerance", "nan"], 2,
     ["--tolerance must be a finite number >= 0"]),
    ("missing records", ["compare", "--baseline", "{d}/missing.jsonl"], 2, ["does not exist"]),
    ("corrupt records", ["compare", "--baseline", "{d}/corrupt.jsonl"], 2, ["corrupt.jsonl:2", "not a JSON record"]),
    ("unknown record schema", ["leaderboard", "{d}/schema9.jsonl", "--out", "{d}/lb"], 2, ["schema_version 9"]),
    ("empty records", ["leaderboard", "{d}/empty.jsonl", "--out", "{d}/lb"], 2, ["holds no records"]),
    ("header asks for remote code", ["compare", "--baseline", "{d}/remote.jsonl"], 2,
     ["trust_remote_code", "may not make mf-harness run a checkpoint's own code"]),
    ("header asks for remote code (as 'no')", ["compare", "--baseline", "{d}/remote_no.jsonl"], 2,
     ["trust_remote_code"]),
    ("header names another model", ["compare", "--baseline", "{d}/other_model.jsonl"], 2,
     ["names the model 'Qwen/Qwen2.5-VL-7B-Instruct'", "--model-args"]),
    ("header carries a spec file", ["compare", "--baseline", "{d}/spec_file.jsonl"], 2, ["['intervention']"]),
    ("header rankings outside", ["compare", "--baseline", "{d}/far_rankings.jsonl"], 2,
     ["'/etc/passwd' outside the working directory", "--rankings"]),
    ("header rankings via ..", ["compare", "--baseline", "{d}/dotdot_rankings.jsonl"], 2, ["outside the working"]),
    ("--model-args names another model", ["compare", "--baseline", "{d}/other_model.jsonl", "--model-args",
                                          "pretrained=embedded"], 2, ["was measured on 'Qwen/Qwen2.5-VL-7B-Instruct'"]),
    ("missing --extra-forms", ["lens", "--extra-forms", "{d}/nope.json", "--output-dir", "{d}/o2", "--limit", "1"], 2,
     ["--extra-forms: file not found"]),
    ("remote code as 'no' in a sweep", ["sweep", "--k", "1", "--rankings", "x", "--model-args",
                                        "pretrained={d}/evil_ckpt,trust_remote_code=no", "--output-dir", "{d}/o3"], 2,
     ["cannot load checkpoint"]),
    ("remote code as 'off'", ["sweep", "--k", "1", "--rankings", "x", "--model-args",
                              "pretrained={d}/evil_ckpt,trust_remote_code=off", "--output-dir", "{d}/o3"], 2,
     ["trust_remote_code must be one of true/false/1/0/yes/no; got 'off'"]),
]


def _one_line_error(p, code, words, where):
    err = p.stderr.strip().splitlines()
    assert p.returncode == code, f"{where}: exit {p.returncode}\n{p.stderr[-2000:]}"
    assert "Traceback" not in p.stderr, f"{where}: traceback\n{p.stderr[-3000:]}"
    lines = [line for line in err if line.startswith("mf-harness: error:")]
    assert len(lines) == 1, f"{where}: {err[-5:]}"
    for w in words:
        assert w in lines[0], f"{where}: {w!r} not in {lines[0]!r}"


@pytest.mark.parametrize("name,argv,code,words", MF_CASES, ids=[c[0] for c in MF_CASES])
def test_mf_harness_rejects(world, tmp_path, name, argv, code, words):
    d, marker = world
    argv = [a.replace("{d}", str(d)) for a in argv]
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    p = subprocess.run([str(BIN / "mf-harness"), *argv], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=300)
    _one_line_error(p, code, words, name)
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before, f"{name}: wrote or removed files"
    assert not marker.exists(), f"{name}: the checkpoint's own code ran"
    assert not list(tmp_path.iterdir()), f"{name}: wrote into the working directory"


LMMS_CASES = [
    ("empty block=", "pretrained=embedded,block=", [], ["block= names no heads"]),
    ("heads joined with ','", "pretrained=embedded,block=L0H1,L1H2", [], ["join heads with '+'"]),
    ("remote code as 'no'", "pretrained={d}/evil_ckpt,trust_remote_code=no", [], ["cannot load checkpoint"]),
    ("device=bogus", "pretrained=embedded,device=bogus", [], ["device must be a torch device", "'bogus'"]),
    ("max_new_tokens=abc", "pretrained=embedded,max_new_tokens=abc", [], ["max_new_tokens must be an integer"]),
    ("binary spec file", "pretrained=embedded,intervention={d}/binary.json", [], ["not a UTF-8 JSON"]),
    ("a BERT checkpoint", "pretrained={d}/bert_ckpt", [], ["'bert' is not in mf-harness's architecture table"]),
    ("unknown task", "pretrained=embedded", ["--tasks", "no_such_task"], ["Tasks not found: no_such_task"]),
    ("--limit -2", "pretrained=embedded", ["--limit", "-2"], ["--limit must be -1 or non-negative"]),
    ("--limit 0", "pretrained=embedded", ["--limit", "0"], ["no docs to evaluate", "--limit >= 1"]),
    ("--batch_size 0", "pretrained=embedded", ["--batch_size", "0"], ["batch_size must be an integer >= 1"]),
]


@pytest.mark.parametrize("name,margs,extra,words", LMMS_CASES, ids=[c[0] for c in LMMS_CASES])
def test_lmms_eval_rejects(world, tmp_path, name, margs, extra, words):
    d, marker = world
    args = ["--model", "intervened_qwen", "--model_args", margs.replace("{d}", str(d)), "--tasks", "mfr_text",
            "--limit", "2", *extra]
    p = subprocess.run([str(BIN / "lmms-eval"), *args], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=300)
    _one_line_error(p, 1, words, name)
    assert not marker.exists(), f"{name}: the checkpoint's own code ran"


def test_corrupt_image_names_the_doc(tmp_path):
    """A truncated image file is an error that names the doc (lmms-eval would decode it grey and score it)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="PNG")
    png = buf.getvalue()
    from PIL import ImageFile

    from mf_harness.errors import DataError
    from mf_harness.lmms.images import open_rgb

    was = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # what importing lmms-eval sets
    try:
        assert open_rgb(io.BytesIO(png), "doc 3").size == (64, 64)
        with pytest.raises(DataError, match=r"doc 3: the image is truncated or corrupt"):
            open_rgb(io.BytesIO(png[: len(png) // 2]), "doc 3")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for everyone else
        Image.open(io.BytesIO(png[: len(png) // 2])).convert("RGB")  # upstream's setting: decodes without a word
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = was


def test_demo_never_deletes_without_overwrite(tmp_path):
    keep = tmp_path / "mine" / "thesis.tex"
    keep.parent.mkdir()
    keep.write_text("years of work")
    p = subprocess.run([str(BIN / "mf-harness"), "demo", "--output-dir", str(keep.parent)], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=300)
    _one_line_error(p, 2, ["exists", "--overwrite"], "demo")
    assert keep.read_text() == "years of work"


def test_a_failed_sweep_does_not_poison_its_output_dir(tmp_path):
    """A sweep that fails validation writes nothing, so the corrected command runs in the same folder; and a
    one-doc sweep (no standard error defined) completes."""
    rank = tmp_path / "heads.csv"
    rank.write_text("follow,layer,head,rank\ntext,0,1,1\ntext,1,2,2\n")
    out = tmp_path / "sweep"
    base = [str(BIN / "mf-harness"), "sweep", "--follows", "text", "--k", "1", "--seeds", "1", "--controls", "random",
            "--limit", "1", "--no-progress", "--output-dir", str(out)]
    bad = subprocess.run(base + ["--rankings", str(tmp_path / "missing.csv")], env=ENV, capture_output=True,
                         text=True, timeout=600)
    _one_line_error(bad, 2, ["rankings not found"], "sweep")
    assert not (out / "sweep.json").exists()
    good = subprocess.run(base + ["--rankings", str(rank)], env=ENV, capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stderr[-3000:]
    assert (out / "records.jsonl").is_file()


def test_trust_remote_code_is_parsed_strictly():
    from mf_harness.checks import parse_bool
    from mf_harness.errors import MfHarnessError

    for v, want in (("no", False), ("NO", False), ("0", False), ("false", False), (False, False), (0, False),
                    ("yes", True), ("1", True), ("True", True), (True, True)):
        assert parse_bool(v, "x") is want
    for v in ("off", "none", "", "n", 2, None, "tru"):
        with pytest.raises(MfHarnessError, match="x must be one of true/false/1/0/yes/no"):
            parse_bool(v, "x")


def test_no_hook_leaks_when_registration_fails_half_way(tiny_qwen25_dir, monkeypatch):
    import torch

    from conftest import load
    from mf_harness.core.arch import geometry, resolve
    from mf_harness.core.hooks import HeadPlan, active_handles, intervene
    from mf_harness.core.spec import InterventionSpec

    model, _ = load(tiny_qwen25_dir)
    geo = geometry(model)
    count = lambda: sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())  # noqa: E731
    before = count()
    plan = HeadPlan.build([InterventionSpec(block=["L0H0", "L2H1"])], torch.ones(1, 5, dtype=torch.bool),
                          geo.num_layers, geo.num_heads)
    oproj = resolve(model)[3][2]

    def refuse(*a, **k):
        raise RuntimeError("registration refused")

    monkeypatch.setattr(oproj, "register_forward_pre_hook", refuse)  # layer 2's second hook cannot register
    with pytest.raises(RuntimeError, match="registration refused"):
        with intervene(model, plan):
            pass
    assert count() == before and active_handles() == 0


def test_truncated_coco_image_through_lmms_eval_names_the_image(tmp_path):
    """The real MC2 file with COCO images that are cut short: one line naming the image, exit 1, no score."""
    import io

    from PIL import Image

    mc2 = Path(os.environ.get("MF_HARNESS_SHARED", REPO.parent / "shared")) / "data" / "mc2" / "evaluate_final.json"
    items = json.loads(mc2.read_text())[:40]
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (10, 120, 200)).save(buf, format="JPEG", quality=90)
    cut = buf.getvalue()[: len(buf.getvalue()) // 3]
    for it in items:
        (tmp_path / f"COCO_val2014_{it['image_id']}.jpg").write_bytes(cut)
    env = dict(ENV, MF_HARNESS_MC2_FILE=str(mc2), MF_HARNESS_COCO_ROOT=str(tmp_path))
    p = subprocess.run([str(BIN / "lmms-eval"), "--model", "intervened_qwen", "--model_args", "pretrained=embedded",
                        "--tasks", "mfr_mc2_text", "--limit", "2", "--output_path", str(tmp_path / "o")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    _one_line_error(p, 1, ["COCO image COCO_val2014_", "truncated or corrupt"], "truncated COCO image")
    assert not list((tmp_path / "o").rglob("*_results.json"))  # nothing scored


def test_corrupt_sweep_manifest_is_one_line_and_kept(tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text("{not json")
    rank = tmp_path / "heads.csv"
    rank.write_text("follow,layer,head,rank\ntext,0,1,1\n")
    p = subprocess.run([str(BIN / "mf-harness"), "sweep", "--rankings", str(rank), "--follows", "text", "--k", "1",
                        "--seeds", "1", "--controls", "random", "--output-dir", str(out)], env=ENV,
                       capture_output=True, text=True, timeout=300)
    _one_line_error(p, 2, ["sweep.json is not a sweep manifest", "another --output-dir"], "corrupt sweep.json")
    assert (out / "sweep.json").read_text() == "{not json" and sorted(x.name for x in out.iterdir()) == ["sweep.json"]
