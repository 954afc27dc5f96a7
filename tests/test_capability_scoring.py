"""Capability scores equal the upstream scorers' on the same predictions (real evaluator, real Java).

One lmms-eval run of the six fixture tasks with a scripted model (fixed answers and
log-likelihoods, so the expected scores can be worked out by hand), then the same
predictions through the upstream scorers called directly: lmms-eval's TextVQA and
Flickr30k code, pycocoevalcap, lm-eval's IFEval functions and its multiple-choice task.
"""

from __future__ import annotations

import copy
import math
import types

import numpy as np
import pytest

from mf_harness.tasks.capability import FIXTURE_TASKS, fixtures, flickr, textvqa
from test_capability_tasks import shared_task_manager  # one TaskManager for the capability tests

TEXTVQA_PRED = ["42", "Stop sign", "dont", "ACME Co.", "3.15", "Two."]
# hand-worked VQA accuracy: k of the 10 answers match -> (k min(1,(k-1)/3) + (10-k) min(1,k/3)) / 10
TEXTVQA_ACC = [1.0, 0.3, 1.0, 0.3, 0.3, 1.0]
FLICKR_PRED = [
    "A red circle next to a blue square.",  # a reference, verbatim
    "a green ball",
    "",  # an empty caption
    "Two purple squares, side by side!",
    "Three yellow circles\u2028in a row",  # a line separator: must score as a space
]
MMLU_GEN_PRED = ["D", "C. Z_5", "b", " B ", "A", "Pacific", "C", "B"]  # gold: D C B B A D C A
IFEVAL_RESP = [
    "The sea is wide and blue\nIt sings all night",
    "the sky turns pink and gold as the sun rises slowly over the quiet hills while birds wake and sing and the "
    "cool air warms a little with every minute until the whole valley glows with soft morning light and the day "
    "begins again for everyone who lives here",
    "* Better sleep\n* Stronger heart\n* More energy",
    "<<Tomato Time>>\nGrow them in full sun. Is there anything else I can help with?**",
    "Plants catch sunlight with every leaf and turn it into food.\nP.S. Water them often.",
    "Bonjour Marie, veux-tu venir dîner chez nous samedi soir ? Nous préparons une grande soupe de légumes et "
    "un gâteau au chocolat.",
]


def _mmlu_lls(doc_id: int) -> list[float]:
    rng = np.random.default_rng(doc_id)
    lls = list(-rng.uniform(0.5, 6.0, size=4))
    if doc_id == 5:
        lls[0] = lls[3] = max(lls) + 1.0  # a tie: lm-eval's argmax takes the first
    return lls


def _ppl_ll(caption_index: int, caption: str) -> float:
    return -(1.0 + caption_index) * len(caption.split())


def _scripted():
    from lmms_eval.api.model import lmms

    class Scripted(lmms):
        def generate_until(self, requests):
            out = []
            for req in requests:
                ctx, _, _, doc_id, task, split = req.args
                doc = self.task_dict[task][split][doc_id]
                assert (doc["instruction"] if isinstance(doc["instruction"], str) else doc["instruction"][0]) in ctx
                answers = {"mf_textvqa_val_fixture": TEXTVQA_PRED, "mf_flickr30k_test_fixture": FLICKR_PRED,
                           "mf_mmlu_generative_fixture": MMLU_GEN_PRED, "mf_ifeval_fixture": IFEVAL_RESP}[task]
                out.append(answers[doc_id])
            return out

        def loglikelihood(self, requests):
            out = []
            for req in requests:
                ctx, cont, _, doc_id, task, split = req.args
                doc = self.task_dict[task][split][doc_id]
                if task == "mf_mmlu_fixture":
                    out.append((_mmlu_lls(doc_id)["ABCD".index(cont.strip())], False))
                else:
                    out.append((_ppl_ll(list(doc["caption"]).index(cont), cont), False))
            return out

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    return Scripted()


@pytest.fixture(scope="module")
def run():
    from lmms_eval.evaluator import simple_evaluate

    return simple_evaluate(model=_scripted(), tasks=list(FIXTURE_TASKS), task_manager=shared_task_manager(),
                           bootstrap_iters=0, log_samples=True)


def _fixture_docs(name):
    return fixtures.build(name).to_list()


# ---------------------------------------------------------------------------- TextVQA


def test_textvqa_through_the_evaluator_matches_hand_and_upstream(run):
    from lmms_eval.tasks.textvqa.utils import textvqa_process_results

    docs = _fixture_docs("textvqa_val_fixture")
    upstream = [textvqa_process_results(copy.deepcopy(d), [p])["exact_match"] for d, p in zip(docs, TEXTVQA_PRED)]
    assert upstream == pytest.approx(TEXTVQA_ACC)
    assert run["results"]["mf_textvqa_val_fixture"]["exact_match,none"] == pytest.approx(np.mean(TEXTVQA_ACC))
    per_doc = [s["exact_match"] for s in sorted(run["samples"]["mf_textvqa_val_fixture"], key=lambda s: s["doc_id"])]
    assert per_doc == pytest.approx(TEXTVQA_ACC)


@pytest.mark.parametrize("answers, pred, expected", [
    (["yes"] * 3 + ["no"] * 7, "Yes", 0.9),
    (["yes"] * 2 + ["no"] * 8, "yes.", 0.6),
    (["ten"] * 4 + ["10"] * 6, "10", 1.0),  # number words
    (["an apple"] + ["pear"] * 9, "apple", 0.3),  # articles
    (["can't"] * 10, "cant", 1.0),  # contractions
    (["coca-cola"] * 3 + ["coke"] * 7, "coca cola", 0.9),  # punctuation: this "-" reads as a space
])
def test_textvqa_normalisation_cases(answers, pred, expected):
    from lmms_eval.tasks.textvqa.utils import textvqa_process_results

    doc = {"question_id": 1, "answers": list(answers)}
    got = textvqa.process_results(doc, [pred])["exact_match"]
    assert got == pytest.approx(expected)
    assert got == pytest.approx(textvqa_process_results(copy.deepcopy(doc), [pred])["exact_match"])
    assert doc["answers"] == answers  # upstream normalises in place; ours leaves the doc alone


# ---------------------------------------------------------------------------- Flickr30k


def _flickr_items(preds):
    from lmms_eval.tasks.flickr30k.utils import flickr_process_result

    docs = _fixture_docs("flickr30k_test_fixture")
    return [flickr_process_result(d, [p])["flickr_CIDEr"] for d, p in zip(docs, preds)]


@pytest.mark.parametrize("metric", ["METEOR", "CIDEr", "Bleu_4", "ROUGE_L"])
def test_flickr_caption_metrics_equal_lmms_evals_pycocoevalcap_scores(run, metric, tmp_path):
    from lmms_eval.tasks.flickr30k.utils import flickr_aggregation_result

    cleaned = [p.replace("\u2028", " ") for p in FLICKR_PRED]
    args = types.SimpleNamespace(output_path=str(tmp_path))  # upstream writes a submission file there
    upstream = flickr_aggregation_result(_flickr_items(cleaned), metric, args)
    ours = run["results"]["mf_flickr30k_test_fixture"][f"flickr_{metric},none"]
    assert ours == pytest.approx(upstream, abs=1e-12)
    assert 0.0 < ours < 1.0 or metric == "CIDEr"


def test_flickr_cider_equals_pycocoevalcap_called_by_hand(run):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    docs = _fixture_docs("flickr30k_test_fixture")
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in d["caption"]] for i, d in enumerate(docs)})
    res = tok.tokenize({i: [{"caption": p.replace("\u2028", " ")}] for i, p in enumerate(FLICKR_PRED)})
    score, _ = Cider().compute_score(gts, res)
    assert run["results"]["mf_flickr30k_test_fixture"]["flickr_CIDEr,none"] == pytest.approx(score, abs=1e-12)
    assert score > 0


def test_flickr_perplexity_is_the_word_weighted_one(run):
    docs = _fixture_docs("flickr30k_test_fixture")
    total_ll = sum(_ppl_ll(j, c) for d in docs for j, c in enumerate(d["caption"]))
    total_words = sum(len(c.split()) for d in docs for c in d["caption"])
    assert run["results"]["mf_flickr30k_test_ppl_fixture"]["flickr_PPL,none"] == pytest.approx(
        math.exp(-total_ll / total_words), rel=1e-12)
    assert run["higher_is_better"]["mf_flickr30k_test_ppl_fixture"]["flickr_PPL"] is False


def test_spice_without_corenlp_is_nan_with_one_line(run, monkeypatch, tmp_path):
    from loguru import logger

    monkeypatch.delenv(flickr.CORENLP_ENV, raising=False)
    if all((flickr._pycocoevalcap_spice_dir() / "lib" / j).is_file() for j in flickr.CORENLP_JARS):
        pytest.skip("CoreNLP is installed in pycocoevalcap here")
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    try:
        value = flickr.aggregate_spice(_flickr_items(FLICKR_PRED))
    finally:
        logger.remove(sink)
    assert math.isnan(value)
    assert len(lines) == 1 and lines[0].count("\n") == 1  # one line
    assert "CoreNLP not found" in lines[0] and "MF_HARNESS_CORENLP_DIR" in lines[0]
    assert math.isnan(run["results"]["mf_flickr30k_test_fixture"]["flickr_SPICE,none"])


def test_spice_runs_pycocoevalcaps_code_from_our_folder_and_a_failure_is_one_line(monkeypatch, tmp_path, capfd):
    from loguru import logger

    corenlp = tmp_path / "corenlp"
    corenlp.mkdir()
    for name in flickr.CORENLP_JARS:  # not real jars: SPICE starts, then fails to load CoreNLP's classes
        (corenlp / name).write_bytes(b"")
    home = tmp_path / "spice"
    monkeypatch.setenv(flickr.CORENLP_ENV, str(corenlp))
    monkeypatch.setenv(flickr.SPICE_HOME_ENV, str(home))
    monkeypatch.setenv("JDK_JAVA_OPTIONS", "-verbose:class")  # Java lists where each class came from
    assert flickr.corenlp_jars() == tuple(corenlp / n for n in flickr.CORENLP_JARS)
    package_dir = flickr._pycocoevalcap_spice_dir()
    before = sorted(p.name for p in package_dir.iterdir())
    with pytest.raises(flickr.SpiceUnavailable, match="the SPICE jar failed"):
        flickr.spice_score({0: ["a red circle"]}, {0: ["a red ball"]})
    java_log = capfd.readouterr()
    # SPICE's jar found its lib/ in our folder, where the CoreNLP jars are linked
    assert f"file:{home.resolve()}/lib/json-simple-1.1.1.jar" in java_log.out + java_log.err
    assert "SemgrexPattern" in java_log.err  # ... and then failed on the fake CoreNLP jar
    jar = home / "spice-1.0.jar"  # a real file here (hard link or copy): Java resolves lib/ next to it
    assert not jar.is_symlink() and jar.read_bytes() == (package_dir / "spice-1.0.jar").read_bytes()
    assert (home / "lib" / flickr.CORENLP_JARS[1]).resolve() == (corenlp / flickr.CORENLP_JARS[1]).resolve()
    assert (home / "lib" / "SceneGraphParser-1.0.jar").resolve() == (package_dir / "lib" / "SceneGraphParser-1.0.jar")
    assert (home / "tmp").is_dir() and (home / "cache").is_dir()  # SPICE's files went to our folder ...
    assert sorted(p.name for p in package_dir.iterdir()) == before  # ... not into site-packages
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    try:
        assert math.isnan(flickr.aggregate_spice(_flickr_items(FLICKR_PRED[:2])))
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and "SPICE jar failed" in lines[0]


def test_flickr_tokeniser_guard_keeps_captions_on_their_images():
    items = _flickr_items(["a red circle\rand a blue square", "one green\u2028ball", "a\x0bb"])
    memo = flickr.tokenized_split(items)
    assert memo["res"] == {0: ["a red circle and a blue square"], 1: ["one green ball"], 2: ["a b"]}


# ---------------------------------------------------------------------------- MMLU


def test_mmlu_acc_equals_lm_evals_multiple_choice_on_the_same_loglikelihoods(run):
    from lm_eval.api.task import ConfigurableTask

    lm_task = ConfigurableTask(config={
        "task": "mmlu_parity", "dataset_path": "parquet", "test_split": "test", "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"test": str(fixtures.fixture_path("mmlu_fixture"))}},
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. "
                       "{{choices[3]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer", "metric_list": [{"metric": "acc"}],
    })
    docs = list(lm_task.test_docs())
    upstream = [lm_task.process_results(d, [(ll, False) for ll in _mmlu_lls(i)])["acc"] for i, d in enumerate(docs)]
    hand = [float(int(np.argmax(_mmlu_lls(i))) == d["answer"]) for i, d in enumerate(docs)]
    assert upstream == hand and 0 < sum(hand) < len(hand)
    samples = sorted(run["samples"]["mf_mmlu_fixture"], key=lambda s: s["doc_id"])
    assert [s["acc"] for s in samples] == upstream
    assert run["results"]["mf_mmlu_fixture"]["acc,none"] == pytest.approx(np.mean(upstream))


def test_mmlu_generative_is_lmms_evals_exact_match(run):
    # gold letters D C B B A D C A; the evaluator strips " B "
    assert run["results"]["mf_mmlu_generative_fixture"]["exact_match,none"] == pytest.approx(4 / 8)


# ---------------------------------------------------------------------------- IFEval


def test_ifeval_equals_lm_evals_own_functions(run):
    from lm_eval.tasks.ifeval import utils as lm_ifeval

    docs = _fixture_docs("ifeval_fixture")
    strict, loose = [], []
    for doc, resp in zip(docs, IFEVAL_RESP):
        inp = lm_ifeval.InputExample(key=doc["key"], instruction_id_list=doc["instruction_id_list"],
                                     prompt=doc["prompt"], kwargs=doc["kwargs"])
        strict.append(lm_ifeval.test_instruction_following_strict(inp, resp))
        loose.append(lm_ifeval.test_instruction_following_loose(inp, resp))
    res = run["results"]["mf_ifeval_fixture"]
    assert res["prompt_level_strict_acc,none"] == pytest.approx(np.mean([o.follow_all_instructions for o in strict]))
    assert res["prompt_level_loose_acc,none"] == pytest.approx(np.mean([o.follow_all_instructions for o in loose]))
    flat = lambda outs: [x for o in outs for x in o.follow_instruction_list]  # noqa: E731
    assert res["inst_level_strict_acc,none"] == pytest.approx(np.mean(flat(strict)))
    assert res["inst_level_loose_acc,none"] == pytest.approx(np.mean(flat(loose)))
    # by hand: only the title/end-phrase response fails, and only strictly (it ends with "**")
    assert len(IFEVAL_RESP[1].split()) >= 40
    assert (res["prompt_level_strict_acc,none"], res["prompt_level_loose_acc,none"]) == pytest.approx((5 / 6, 1.0))
    assert (res["inst_level_strict_acc,none"], res["inst_level_loose_acc,none"]) == pytest.approx((8 / 9, 1.0))
