"""The embedded world's capability tasks (mf_shapes_*): data, prompts, and scores equal to the upstream scorers."""

from __future__ import annotations

import pytest

from mf_harness.tasks.capability import shapes
from mf_harness.tasks.mfr.mfr import normalize_answer
from test_capability_tasks import _build, _docs, shared_task_manager

TASKS = [f"mf_shapes_{t}" for t in shapes.TASKS]


@pytest.fixture(scope="module")
def built():
    return _build(shared_task_manager(), TASKS)


def test_tasks_and_group_are_indexed_without_include_path():
    tm = shared_task_manager()
    for name in TASKS + ["mf_shapes_capability"]:
        assert name in tm.all_tasks, name


def test_prompts_images_and_instruction_per_task(built):
    for task in shapes.TASKS:
        obj = built[f"mf_shapes_{task}"]
        docs = _docs(obj)
        assert len(docs) == shapes.PER_KIND * len(shapes.KINDS) == 48
        assert {d["task"] for d in docs} == {task}
        for d in docs:
            text = obj.doc_to_text(d)
            assert d["instruction"] in text  # the instruction scope can find its tokens
            visuals = obj.doc_to_visual(d)
            if task == "text":
                assert visuals == [] and text.startswith("Text context: ")
            else:
                assert len(visuals) == 1 and visuals[0].size == (84, 84) and visuals[0].mode == "RGB"
            if task == "image":
                assert "Text context" not in text and text == f"{d['question']}\n{shapes.QA_INSTRUCTION}"
            if task == "agree":  # the context states the answer: nothing to arbitrate
                assert d["answer"] in d["context"] or d["answer"] in ("one", "two", "three", "four")
            if task == "caption":
                assert text == shapes.CAPTION_INSTRUCTION and d["answer"] == d["captions"][0]
                assert len(d["captions"]) == 3


def test_bundled_data_equals_a_fresh_generation(tmp_path):
    import datasets

    fresh = shapes.write_bundled(tmp_path / "s.parquet")
    load = lambda p: datasets.load_dataset("parquet", data_files={"test": str(p)}, split="test")  # noqa: E731
    a, b = load(shapes.bundled_path()), load(fresh)
    assert a.features == b.features and len(a) == len(b) == 192
    for x, y in zip(a, b):
        for col in a.column_names:
            if col == "image" and x[col] is not None:
                assert x[col].tobytes() == y[col].tobytes()
            else:
                assert x[col] == y[col], col


def test_items_are_held_out_of_the_trainers_stream():
    """No bundled image is a training image: the generator's seed is not the trainer's (pixels differ)."""
    from mf_harness.embedded.train import synth

    train = list(synth.training_rows(0, 400, synth.Mix(capability=1.0)))
    assert {r["capability"] for r in train} == set(shapes.TASKS)
    train_pixels = {r["image"].tobytes() for r in train if r["image"] is not None}
    import datasets

    ds = datasets.load_dataset("parquet", data_files={"test": str(shapes.bundled_path())}, split="test")
    assert not any(d["image"] is not None and d["image"].convert("RGB").tobytes() in train_pixels for d in ds)
    # the trainer renders its capability rows as the tasks do
    row = next(r for r in train if r["capability"] == "image")
    assert synth.user_text(row) == shapes.user_text("image", row["question"], "", row["instruction"])


def _evaluate(preds: dict[str, list[str]]):
    """lmms-eval's evaluator on the four tasks with a scripted model (fixed answers per task and doc)."""
    from lmms_eval import evaluator
    from lmms_eval.api.model import lmms

    class Scripted(lmms):
        def generate_until(self, requests):
            return [preds[r.metadata["task"]][r.metadata["doc_id"]] for r in requests]

        def loglikelihood(self, requests):  # pragma: no cover - generate-only tasks
            raise NotImplementedError

        def generate_until_multi_round(self, requests):  # pragma: no cover
            raise NotImplementedError

    return evaluator.simple_evaluate(model=Scripted(), tasks=TASKS, task_manager=shared_task_manager(),
                                     verbosity="ERROR")


def test_scores_equal_hand_and_pycocoevalcap(built):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    docs = {t: _docs(built[t]) for t in TASKS}
    preds = {}
    for t in TASKS[:3]:  # right on even docs ("Red." style and digits count), wrong on odd ones
        preds[t] = [(f" {d['answer'].capitalize()}." if i % 2 == 0 else " purple-ish") for i, d in enumerate(docs[t])]
    caps = docs["mf_shapes_caption"]
    preds["mf_shapes_caption"] = [d["captions"][i % 3] if i % 4 else "a shape" for i, d in enumerate(caps)]
    res = _evaluate(preds)
    for t in TASKS[:3]:
        want = sum(normalize_answer(p) == normalize_answer(d["answer"]) for p, d in zip(preds[t], docs[t])) / 48
        assert want == 0.5
        assert res["results"][t]["exact_match,none"] == pytest.approx(want)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in d["captions"]] for i, d in enumerate(caps)})
    hyp = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds["mf_shapes_caption"])})
    score, per_image = Cider().compute_score(gts, hyp)
    assert res["results"]["mf_shapes_caption"]["shapes_CIDEr,none"] == pytest.approx(score, abs=1e-12)
    items = [shapes.process_results_caption(d, [p])["shapes_CIDEr"] for d, p in zip(caps, preds["mf_shapes_caption"])]
    assert shapes.per_image_cider(items) == pytest.approx(list(per_image), abs=1e-12)
    assert 0 < score


def test_per_sample_cider_is_kept_by_both_sweep_paths(built):
    """The fast engine's scorer keeps each image's CIDEr (their mean is the corpus score) for bootstraps."""
    from mf_harness.runs.lmms_layout import score_answers

    obj = built["mf_shapes_caption"]
    docs = _docs(obj)[:6]
    answers = {i: (d["captions"][0] if i % 2 else "two gray crosses") for i, d in enumerate(docs)}
    per_sample, metrics, _ = score_answers(obj, docs, answers)
    vals = [per_sample[str(i)]["shapes_CIDEr"] for i in range(6)]
    assert sum(vals) / 6 == pytest.approx(metrics["shapes_CIDEr"], abs=1e-12)
    assert vals[1] > vals[0]


def test_a_missing_image_is_a_clear_error():
    from mf_harness.errors import MfHarnessError

    with pytest.raises(MfHarnessError, match="has no image"):
        shapes.doc_to_visual({"task": "image", "image": None, "sample_id": "x"})
    with pytest.raises(MfHarnessError, match="unknown shapes task"):
        shapes.user_text("video", "q")
