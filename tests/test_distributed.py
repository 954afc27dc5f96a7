"""Scale: data parallel under accelerate (two CPU processes) and model sharding with device_map.

* Two processes (``accelerate launch --multi_gpu --num_processes 2`` with
  ``ACCELERATE_USE_CPU=true``: gloo on CPU) give the same samples and metrics as one
  process, for generation (``mfr_text``) and loglikelihood (``mf_mmlu_fixture``), with a
  spec, on a non-Qwen family; an odd ``--limit`` makes lmms-eval pad one rank.
* A multi-process launch that accelerate cannot see as one (CPU without
  ``ACCELERATE_USE_CPU``) is a clear error, not a silently unsharded run.
* ``device_map`` (``auto``, and a map that offloads decoder layers to disk so accelerate's
  own hooks load them on the fly) gives the same numbers as a plain load.
"""

import json
import os
import signal
from ast import literal_eval
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from lmms_eval.api.instance import Instance

BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
SPEC = "block=L0H1+L2H3+L3H0,scope=instruction"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("dp") / "internvl", TinyConfig(family="internvl", seed=3))


def _lmms_eval(prefix, ckpt, out, env=ENV):
    args = ["-m", "lmms_eval", "--model", "intervened_hf", "--model_args", f"pretrained={ckpt},{SPEC}",
            "--tasks", "mfr_text,mf_mmlu_fixture", "--limit", "5", "--batch_size", "2", "--output_path", str(out),
            "--log_samples"]
    return subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, timeout=600, cwd=out.parent)


def _read(out: Path):
    results = json.loads(sorted(out.rglob("*_results.json"))[-1].read_text())["results"]
    metrics = {t: {k: v for k, v in r.items() if "stderr" not in k} for t, r in results.items()}
    samples = {}
    for f in out.rglob("*_samples_*.jsonl"):
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        samples[f.name.split("_samples_")[1]] = sorted((r["doc_id"], r["filtered_resps"]) for r in rows)
    return metrics, samples


def test_two_cpu_processes_give_the_results_of_one(ckpt, tmp_path):
    one = _lmms_eval([str(BIN / "python")], ckpt, tmp_path / "one")
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_port())]
    two = _lmms_eval(launch, ckpt, tmp_path / "two", env=dict(ENV, ACCELERATE_USE_CPU="true"))
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert "rank 0/2" in two.stdout and "rank 1/2" in two.stdout  # both ranks loaded the model
    m1, s1 = _read(tmp_path / "one")
    m2, s2 = _read(tmp_path / "two")
    assert set(s1) == {"mfr_text.jsonl", "mf_mmlu_fixture.jsonl"}
    assert len(s1["mfr_text.jsonl"]) == 5 and len(s1["mf_mmlu_fixture.jsonl"]) == 5
    assert s2["mfr_text.jsonl"] == s1["mfr_text.jsonl"]  # generated text: identical
    for (d1, r1), (d2, r2) in zip(s1["mf_mmlu_fixture.jsonl"], s2["mf_mmlu_fixture.jsonl"]):
        # "(logprob, is_greedy)" per choice; rows batch with different neighbours on each rank
        a, b = [literal_eval(x) for x in r1], [literal_eval(x) for x in r2]
        assert d1 == d2 and [g for _, g in a] == [g for _, g in b]
        assert [x for x, _ in a] == pytest.approx([x for x, _ in b], abs=1e-5)
    assert m2 == m1


def test_a_launch_accelerate_cannot_shard_is_a_clear_error(ckpt):
    code = (f"from mf_harness.lmms.model import IntervenedHF\n"
            f"IntervenedHF(pretrained={str(ckpt)!r})\n")
    env = dict(ENV, WORLD_SIZE="2", RANK="0")  # as a launcher would set it, minus a rendezvous to wait on
    for k in ("ACCELERATE_USE_CPU", "LOCAL_RANK"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "accelerate sees a single process" in p.stderr and "ACCELERATE_USE_CPU=true" in p.stderr


def test_device_map_sharding_gives_the_same_numbers(ckpt):
    from mf_harness.lmms.model import IntervenedHF

    doc = {"instruction": "Follow the text.", "image": Image.new("RGB", (84, 56), (200, 30, 30))}
    ctx = "Text: it is red. Follow the text. What colour?"
    gen = Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1},
                   arguments=(ctx, {"max_new_tokens": 5}, lambda d: [d["image"]], 0, "t", "test"))
    ll = Instance(request_type="loglikelihood", idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1},
                  arguments=(ctx, " red", lambda d: [d["image"]], 0, "t", "test"))
    lm_layers = "model.language_model.layers"
    offload = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu",
               "model.language_model.embed_tokens": "cpu", "model.language_model.norm": "cpu",
               "model.language_model.rotary_emb": "cpu", "lm_head": "cpu",
               **{f"{lm_layers}.{i}": ("disk" if i in (1, 2) else "cpu") for i in range(4)}}
    got = {}
    for name, kw in (("plain", {}), ("clean", {}), ("auto", {"device_map": "auto"}), ("disk", {"device_map": offload})):
        spec = {} if name == "clean" else dict(block="L1H0+L2H3", scope="instruction")
        lm = IntervenedHF(pretrained=str(ckpt), **spec, **kw)
        lm.task_dict = {"t": {"test": [doc]}}
        if name == "disk":
            assert getattr(lm.model.model.language_model.layers[1], "_hf_hook", None) is not None
        got[name] = (lm.generate_until([gen]), lm.loglikelihood([ll]))
    assert got["auto"] == got["plain"] and got["disk"] == got["plain"]
    assert got["clean"][1] != got["plain"][1]  # the spec was applied in all three


def _sweep(prefix, out: Path, rankings: Path, env=ENV, dry=False):
    args = ["-m", "mf_harness.cli", "sweep", "--model-args", "pretrained=embedded", "--rankings", str(rankings),
            "--k", "2", "--seeds", "2", "--controls", "random_any", "--follows", "text", "--limit", "7",
            "--capability-tasks", "mf_shapes_image,mf_mmlu_fixture", "--output-dir", str(out), "--no-progress"]
    cmd = [*prefix, *args]
    if dry:
        return None, cmd
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=out.parent), cmd


def test_two_cpu_processes_sweep_to_the_records_of_one(tmp_path, hang_after):
    """`mf-harness sweep` under accelerate (2 CPU processes): the fast engine shards the samples over the ranks
    (each rank's answers in its own log), lmms-eval shards the loglikelihood task, rank 0 merges; killed
    mid-way and run again, each rank resumes from its log, and the records equal one process's."""
    from mf_harness.runs.records import read_records

    rankings = tmp_path / "heads.csv"
    rankings.write_text("follow,layer,head,rank\ntext,0,1,1\ntext,0,6,2\n")
    one, _ = _sweep([str(BIN / "python")], tmp_path / "one", rankings)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    launch = lambda: [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",  # noqa: E731
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                      "--main_process_port", str(_port())]
    env = dict(ENV, ACCELERATE_USE_CPU="true")
    # killed mid-way (both ranks and the launcher, as a scheduler's kill would), then run again: each rank
    # resumes from its own log. A tiny model answers all 7 docs in a blink, so where the kill lands is made
    # deterministic: each rank answers one mfr_text doc, then hangs in its next one until the kill
    hook, hung = hang_after(tmp_path / "hook", "mfr_text", 1)
    out = tmp_path / "two"
    out.mkdir()
    _, cmd = _sweep(launch(), out, rankings, env=env, dry=True)
    proc = subprocess.Popen(cmd, env=dict(env, **hook), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    logs = [out / "fast" / f"mfr_text.rank{r}of2.jsonl" for r in (0, 1)]
    lines = lambda: [len(p.read_text().splitlines()) if p.exists() else 0 for p in logs]  # noqa: E731
    deadline = time.time() + 600
    while time.time() < deadline and len(hung()) < 2 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the killed run ended on its own"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(hung()) == 2, hung()  # both ranks reached the hang
    for pid in hung():  # accelerate starts the ranks in sessions of their own: the group kill misses them
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert lines() == [1, 1]  # killed with mfr_text part-answered: one doc per rank
    two, _ = _sweep(launch(), out, rankings, env=env)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    logs = sorted(p.name for p in (out / "fast").glob("*.jsonl"))
    assert logs == ["mf_shapes_image.rank0of2.jsonl", "mf_shapes_image.rank1of2.jsonl", "mfr_text.rank0of2.jsonl",
                    "mfr_text.rank1of2.jsonl"]
    docs = lambda p: sorted(json.loads(x)["doc_id"] for x in p.read_text().splitlines())  # noqa: E731
    assert docs(out / "fast" / "mfr_text.rank1of2.jsonl") == [1, 3, 5]  # each answered once over both runs
    assert docs(out / "fast" / "mfr_text.rank0of2.jsonl") == [0, 2, 4, 6]
    strip = lambda rs: [{k: v for k, v in r.to_dict().items() if k not in ("created", "git")} for r in rs]  # noqa: E731
    a, b = read_records(tmp_path / "one" / "records.jsonl")[1], read_records(tmp_path / "two" / "records.jsonl")[1]
    assert len(a) == len(b) > 0
    for x, y in zip(strip(a), strip(b)):
        if x["task"] == "mf_mmlu_fixture":  # loglikelihoods batch with other neighbours per rank
            assert x["value"] == pytest.approx(y["value"], abs=1e-6), (x, y)
            x, y = {**x, "value": None, "stderr": None, "ci_low": None, "ci_high": None}, \
                {**y, "value": None, "stderr": None, "ci_low": None, "ci_high": None}
        assert x == y
    assert {r.task for r in b} >= {"mfr_text", "mf_shapes_image", "mf_mmlu_fixture"}


def test_two_cpu_processes_discover_the_ranking_of_one(tmp_path):
    """`mf-harness discover` under accelerate (2 CPU processes): samples sharded, each rank's rows in its own
    file, rank 0 merges; the heads table equals one process's (float tolerance: batches differ)."""
    import pandas as pd

    def discover(prefix, out, env=ENV):
        args = ["-m", "mf_harness.cli", "discover", "--model-args", "pretrained=embedded", "--tasks",
                "mfr_dev_text,mfr_dev_vision", "--limit", "7", "--method", "ablation", "--k", "4",
                "--output-dir", str(out), "--no-progress"]
        return subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)

    one = discover([str(BIN / "python")], tmp_path / "one")
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_port())]
    two = discover(launch, tmp_path / "two", env=dict(ENV, ACCELERATE_USE_CPU="true"))
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two" / "ranks").iterdir()) == ["rank0of2.json", "rank1of2.json"]
    assert two.stdout.count("text-following top heads") == 1  # rank 0 reports
    a, b = pd.read_csv(tmp_path / "one" / "heads.csv"), pd.read_csv(tmp_path / "two" / "heads.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 64
    assert (a[["follow", "layer", "head", "n"]].values == b[["follow", "layer", "head", "n"]].values).all()
    for col in ("dla_mean", "ablation_mean", "ablation_std"):
        assert a[col].values == pytest.approx(b[col].values, abs=1e-4), col
