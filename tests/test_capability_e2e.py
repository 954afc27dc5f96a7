"""The capability tasks end to end on the embedded tiny Qwen2.5-VL: CLI, spec effects, cache, scope errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mf_harness.tasks.capability.common import loglikelihood_result
from test_capability_tasks import shared_task_manager  # one TaskManager for the capability tests

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the fixture tasks the in-process runs use (the caption task's METEOR is left to the CLI run)
FAST_TASKS = ["mf_textvqa_val_fixture", "mf_flickr30k_test_ppl_fixture", "mf_mmlu_fixture",
              "mf_mmlu_generative_fixture", "mf_ifeval_fixture"]
LOGLIKELIHOOD_TASKS = ["mf_flickr30k_test_ppl_fixture", "mf_mmlu_fixture"]
BLOCK = "block=L0H1+L1H0+L2H3+L3H2"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tiny model is faster on one thread, and far faster on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tm():
    return shared_task_manager()


def _run(tm, model_args, tasks=FAST_TASKS, **kw):
    from lmms_eval.evaluator import simple_evaluate

    return simple_evaluate(model="intervened_qwen", model_args=model_args, tasks=tasks, task_manager=tm, limit=2,
                           gen_kwargs="max_new_tokens=6", bootstrap_iters=0, log_samples=True, **kw)


def _resps(out) -> dict:
    return {(task, s["doc_id"]): s["filtered_resps"] for task, samples in out["samples"].items() for s in samples}


def _values(resps: dict) -> dict:
    """Responses with log-likelihood strings parsed (lmms-eval 0.7.3 logs them as text)."""
    return {key: [loglikelihood_result(r) if key[0] in LOGLIKELIHOOD_TASKS else r for r in value]
            for key, value in resps.items()}


@pytest.fixture(scope="module")
def runs(tm):
    return {
        "plain": _run(tm, "pretrained=embedded"),
        "empty": _run(tm, "pretrained=embedded,amplify=L0H1+L3H2,coefficient=1,scope=instruction"),
    }


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The issue's command, from a folder outside the repo, no --include_path, with a non-empty spec."""
    cwd = tmp_path_factory.mktemp("cli")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")
    env.pop("MF_HARNESS_CORENLP_DIR", None)
    out = cwd / "out"
    p = subprocess.run([str(BIN / "lmms-eval"), "--model", "intervened_qwen", "--model_args",
                        f"pretrained=embedded,{BLOCK}", "--tasks", "mf_capability", "--limit", "2",
                        "--gen_kwargs", "max_new_tokens=6", "--output_path", str(out), "--log_samples"],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return p, out


def test_empty_spec_changes_no_capability_output(runs):
    plain, empty = _resps(runs["plain"]), _resps(runs["empty"])
    assert len(plain) == 2 * len(FAST_TASKS)
    assert plain == empty


def test_blocking_heads_at_instruction_tokens_changes_capability_outputs(runs, cli):
    p, out = cli
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    block = {}
    for task in FAST_TASKS:
        (path,) = out.rglob(f"*_samples_{task}.jsonl")
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            block[(task, sample["doc_id"])] = sample["filtered_resps"]
    plain, block = _values(_resps(runs["plain"])), _values(block)
    assert plain.keys() == block.keys()
    for task in LOGLIKELIHOOD_TASKS:  # the log-likelihoods move on every doc
        for doc_id in (0, 1):
            assert plain[(task, doc_id)] != block[(task, doc_id)], (task, doc_id)


def test_a_prompt_without_its_instruction_stops_with_a_clear_error(tmp_path):
    from lmms_eval.tasks import TaskManager

    from mf_harness.core.scopes import InstructionNotFound

    # a user's task that includes ours but drops the MMLU description from the prompt
    (tmp_path / "mmlu_plain.yaml").write_text(
        f"include: {REPO / 'tasks' / 'capability' / 'mf_mmlu_fixture.yaml'}\n"
        "task: tmp_mmlu_no_description\n"
        'doc_to_text: "{{question.strip()}}\\nAnswer:"\n'
    )
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)  # lmms-eval's own tasks not needed
    assert _run(tm, "pretrained=embedded", tasks=["tmp_mmlu_no_description"])["results"]  # no spec: fine
    with pytest.raises(InstructionNotFound, match=r"tmp_mmlu_no_description doc 0: instruction 'The following"):
        _run(tm, f"pretrained=embedded,{BLOCK}", tasks=["tmp_mmlu_no_description"])


def test_use_cache_reuses_a_specs_responses_and_keys_them_by_spec(tm, tmp_path, monkeypatch):
    from mf_harness.lmms.model import IntervenedHF

    calls: list[int] = []
    real = IntervenedHF.loglikelihood

    def counting(self, requests):
        calls.append(len(requests))
        return real(self, requests)

    monkeypatch.setattr(IntervenedHF, "loglikelihood", counting)
    cache = str(tmp_path / "cache")
    outs = []
    for run_id, spec in (("first", BLOCK), ("again", BLOCK), ("other", "block=L2H0")):
        monkeypatch.setenv("LMMS_CACHE_RUN_ID", run_id)
        calls.clear()
        outs.append((_run(tm, f"pretrained=embedded,{spec}", tasks=["mf_mmlu_fixture"], use_cache=cache), sum(calls)))
    (first, n_first), (again, n_again), (other, n_other) = outs
    assert n_first == 8 and n_again == 0 and n_other == 8  # 2 docs x 4 letters
    # lmms-eval hands back "(ll, greedy)" from the model and "[ll, greedy]" from the cache: compare values
    assert _values(_resps(first)) == _values(_resps(again)) != _values(_resps(other))
    assert first["results"]["mf_mmlu_fixture"]["acc,none"] == again["results"]["mf_mmlu_fixture"]["acc,none"]


def test_cli_runs_mf_capability_offline_with_a_spec(cli):
    p, out = cli
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    res = json.loads(sorted(out.rglob("*_results.json"))[-1].read_text())["results"]
    expected = {
        "mf_textvqa_val_fixture": ["exact_match"],
        "mf_flickr30k_test_fixture": ["flickr_METEOR", "flickr_CIDEr", "flickr_Bleu_4", "flickr_ROUGE_L"],
        "mf_flickr30k_test_ppl_fixture": ["flickr_PPL"],
        "mf_mmlu_fixture": ["acc"],
        "mf_mmlu_generative_fixture": ["exact_match"],
        "mf_ifeval_fixture": ["prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                              "inst_level_loose_acc"],
    }
    for task, metrics in expected.items():
        for m in metrics:
            value = res[task][f"{m},none"]
            assert isinstance(value, float) and math.isfinite(value), (task, m, value)
    assert res["mf_flickr30k_test_ppl_fixture"]["flickr_PPL,none"] > 1.0
    assert math.isnan(res["mf_flickr30k_test_fixture"]["flickr_SPICE,none"])
    spice_lines = [line for line in log.splitlines() if "CoreNLP not found" in line]
    assert len(spice_lines) == 1 and "MF_HARNESS_CORENLP_DIR" in spice_lines[0]
