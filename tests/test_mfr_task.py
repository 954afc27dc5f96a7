"""The mfr tasks: matching, prompts, instructions, and lmms-eval's real TaskManager/evaluator."""

from __future__ import annotations

import collections
import copy
import math
import os
from pathlib import Path

import pytest
from PIL import Image

from mf_harness.tasks.mfr import mfr
from mf_harness.errors import DataError, MfHarnessError

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
SHARED = Path(os.environ.get("MF_HARNESS_SHARED", REPO.parent / "shared"))
MC2_JSON = SHARED / "data" / "mc2" / "evaluate_final.json"
needs_mc2 = pytest.mark.skipif(not MC2_JSON.is_file(), reason=f"MC2 file not found at {MC2_JSON} (set MF_HARNESS_SHARED)")
ENV = (
    "MF_HARNESS_INSTRUCTION",
    "MF_HARNESS_INSTRUCTION_TEXT",
    "MF_HARNESS_INSTRUCTION_VISION",
    "MF_HARNESS_MC2_FILE",
    "MF_HARNESS_COCO_ROOT",
)
MC2_KINDS = [
    "activity_recognition",
    "attribute",
    "color",
    "counting",
    "object_recognition",
    "positional_reasoning",
    "sentiment_understanding",
    "sport_recognition",
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def tm():
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS))


def _subtasks(task_dict) -> dict:
    out = {}
    for key, value in task_dict.items():
        out.update(_subtasks(value) if isinstance(value, dict) else {key: value})
    return out


# ---------------------------------------------------------------------------- normalisation and matching


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  The Two!  ", "2"),
        ("two", "2"),
        ("2", "2"),
        ("Twenty", "20"),
        ("**Gray**", "gray"),
        ('"Blue"', "blue"),
        ("\u2018red\u2019", "red"),
        ("Answer: a dog.", "answer dog"),
        ("T-shirt", "t shirt"),
        ("red,blue", "red blue"),
        ("1,000", "1000"),
        ("2.5", "2.5"),
        ("U.S.", "u s"),
        ("Blue\n\nThe image", "blue image"),
        ("None", "0"),
        ("", ""),
        (None, ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert mfr.normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "pred, compliant, competing, expected",
    [
        ("Two.", ["two", "2"], ["one", "1"], "compliant"),
        ("2", ["two"], ["one"], "compliant"),
        ("There are 4.", ["three"], ["four", "4"], "competing"),
        ("Grey", ["gray", "grey"], ["red"], "compliant"),
        ("The answer is grey.", ["gray", "grey"], ["red"], "compliant"),
        ("reddish", ["red"], ["blue"], "none"),  # whole words only
        ("red and blue", ["red"], ["blue"], "both"),
        ("dark blue", ["dark blue"], ["blue"], "compliant"),  # a longer form of the other side wins
        ("blue", ["dark blue"], ["blue"], "competing"),
        ("not eating", ["not eating"], ["eating"], "compliant"),
        ("not red, blue", ["blue"], ["red"], "both"),  # negation is not parsed
        ("playing", ["playing in a field"], ["eating"], "none"),  # the form must occur in the prediction
        ("Playing in a field.", ["playing in a field"], ["eating"], "compliant"),
        ("", ["red"], ["blue"], "none"),
        ("blue", ["blue"], ["blue"], "both"),
    ],
)
def test_classify(pred, compliant, competing, expected):
    assert mfr.classify(pred, compliant, competing) == expected


def _doc(kind="color", comp=("gray", "grey"), other=("red",), kinds=("color", "counting")):
    return {
        "mc2_task": kind,
        "compliant_answers": list(comp),
        "competing_answers": list(other),
        "mfr_kinds": list(kinds),
    }


@pytest.mark.parametrize(
    "doc, pred, expected",
    [
        (_doc(), "Grey.", {"mfr": 1, "competing": 0, "neither": 0, "mfr_color": 1, "mfr_counting": None}),
        (_doc(), "red", {"mfr": 0, "competing": 1, "neither": 0, "mfr_color": 0, "mfr_counting": None}),
        (_doc(), "gray or red", {"mfr": 0, "competing": 0, "neither": 1, "mfr_color": 0, "mfr_counting": None}),
        (
            _doc("counting", ["two", "2"], ["three", "3"]),
            "2",
            {"mfr": 1, "competing": 0, "neither": 0, "mfr_color": None, "mfr_counting": 1},
        ),
        (_doc("other", kinds=()), "purple", {"mfr": 0, "competing": 0, "neither": 1}),
    ],
)
def test_process_results(doc, pred, expected):
    before = copy.deepcopy(doc)
    assert mfr.process_results(doc, [pred]) == expected
    assert doc == before


def test_aggregate_kind_mean():
    assert mfr.aggregate_kind_mean([1, None, 0, None, 1]) == pytest.approx(2 / 3)
    assert mfr.aggregate_kind_mean([0, 0]) == 0
    assert math.isnan(mfr.aggregate_kind_mean([None, None]))


# ---------------------------------------------------------------------------- instruction and prompt


def test_instruction_sentences_are_the_sources():
    assert mfr.INSTRUCTIONS["paper"]["text"] == "You should follow the textual context rather than the visual content."
    assert mfr.INSTRUCTIONS["mc2"]["text"] == (
        "In case there is an inconsistency between the Text Context and the input image content, "
        "you must rely on the text context rather than the input image content."
    )
    assert mfr.INSTRUCTIONS["mc2"]["vision"] == (
        "In case there is an inconsistency between the text context and the image content, "
        "you should follow the image content rather than the text context."
    )
    assert mfr.INSTRUCTIONS["focus"]["text"] == "Focus on the textual context; ignore visual content."
    assert mfr.INSTRUCTIONS["prioritize"]["text"].startswith("Prioritize the information in the text over any visual elements")
    for pair in mfr.INSTRUCTIONS.values():
        assert pair["text"] != pair["vision"]


def test_prompt_layout():
    doc = {
        "context": " The cat is black. ",
        "question": "What color is the cat?",
        "instruction": "Follow the text.",
        "format_instruction": "Answer the question with a single word.",
    }
    assert mfr.doc_to_text(doc) == (
        "Text context: The cat is black.\nFollow the text. What color is the cat?\nAnswer the question with a single word."
    )
    assert mfr.doc_to_text(doc, {"pre_prompt": "<", "post_prompt": ">"}) == (
        "<Text context: The cat is black.\nFollow the text. What color is the cat?\nAnswer the question with a single word.>"
    )


def test_resolve_instruction_precedence():
    env = {}
    assert mfr.resolve_instruction("text", None, env) == ("paper", mfr.INSTRUCTIONS["paper"]["text"])
    assert mfr.resolve_instruction("vision", "focus", env) == ("focus", mfr.INSTRUCTIONS["focus"]["vision"])
    env = {"MF_HARNESS_INSTRUCTION": "mc2"}
    assert mfr.resolve_instruction("vision", "focus", env) == ("mc2", mfr.INSTRUCTIONS["mc2"]["vision"])
    env = {"MF_HARNESS_INSTRUCTION": "mc2", "MF_HARNESS_INSTRUCTION_VISION": "Trust the picture, not the words."}
    assert mfr.resolve_instruction("vision", None, env) == ("custom", "Trust the picture, not the words.")
    assert mfr.resolve_instruction("text", None, env) == ("mc2", mfr.INSTRUCTIONS["mc2"]["text"])


def test_unknown_phrasing_lists_the_valid_ones():
    with pytest.raises(MfHarnessError, match=r"MF_HARNESS_INSTRUCTION: unknown instruction phrasing 'mc3'.*paper, mc2, prioritize, focus"):
        mfr.resolve_instruction("text", None, {"MF_HARNESS_INSTRUCTION": "mc3"})
    with pytest.raises(MfHarnessError, match="follow must be one of"):
        mfr.resolve_instruction("audio")


def _datasets():
    import datasets

    synth = datasets.load_dataset(
        "parquet", data_files={"test": str(TASKS / "mfr" / "data" / "mfr_synthetic.parquet")}, split="test"
    ).remove_columns("image")
    out = {"synthetic": synth}
    if MC2_JSON.is_file():
        out["mc2"] = datasets.load_dataset("json", data_files={"test": str(MC2_JSON)}, split="test")
    return out


CUSTOM = "Answer from what the picture shows."


@pytest.mark.parametrize("phrasing", [*mfr.INSTRUCTIONS, "custom"])
def test_instruction_is_verbatim_in_every_prompt(phrasing, monkeypatch):
    for name, ds in _datasets().items():
        for follow in mfr.FOLLOW:
            if phrasing == "custom":
                monkeypatch.setenv(f"MF_HARNESS_INSTRUCTION_{follow.upper()}", CUSTOM)
                expected = CUSTOM
                fn = getattr(mfr, f"process_docs_{follow}")
            else:
                expected = mfr.INSTRUCTIONS[phrasing][follow]
                fn = getattr(mfr, f"process_docs_{follow}_{phrasing}")
            docs = fn(ds)
            assert len(docs) == len(ds)
            for doc in docs:
                assert doc["instruction"] == expected
                text = mfr.doc_to_text(doc, {"pre_prompt": "", "post_prompt": ""})
                assert f"\n{expected} {doc['question'].strip()}\n" in text, (name, doc["sample_id"])
                assert text.endswith("\nAnswer the question with a single word.")


# ---------------------------------------------------------------------------- through lmms-eval


def test_task_manager_finds_our_tasks(tm):
    for name, kind in [("mfr", "group"), ("mfr_mc2", "group")] + [
        (f"{p}_{f}", "task") for p in ("mfr", "mfr_mc2") for f in mfr.FOLLOW
    ]:
        entry = tm.task_index[name]
        assert entry["type"] == kind
        assert Path(entry["yaml_path"]).parent == TASKS / "mfr"  # not shadowed by a built-in task


def test_bundled_tasks_build_with_the_contract(tm, tmp_path, monkeypatch):
    from lmms_eval.tasks import get_task_dict

    monkeypatch.chdir(tmp_path)  # data_files resolve against the YAML's folder, not the cwd
    tasks = _subtasks(get_task_dict(["mfr"], tm))
    assert set(tasks) == {"mfr_text", "mfr_vision"}
    ids = {}
    for name, task in tasks.items():
        follow = name.split("_")[-1]
        docs = task.test_docs()
        assert len(docs) == 240
        ids[follow] = docs["sample_id"]
        for doc in docs.select(range(0, 240, 37)):
            assert doc["follow"] == follow
            assert doc["instruction"] == mfr.INSTRUCTIONS["paper"][follow]
            assert doc["instruction"] in task.doc_to_text(doc)
            own, other = (doc["answer_text"], doc["answer_vision"]) if follow == "text" else (doc["answer_vision"], doc["answer_text"])
            assert doc["compliant_answers"][0] == own and doc["competing_answers"][0] == other
            assert task.doc_to_target(doc) == own
            assert doc["mc2_task"] == doc["task"]
            (img,) = task.doc_to_visual(doc)
            assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (84, 84)
    assert ids["text"] == ids["vision"] and len(set(ids["text"])) == 240


def test_own_parquet_through_an_including_yaml(tm, tmp_path):
    import datasets
    from lmms_eval.tasks import TaskManager, get_task_dict

    src = datasets.load_dataset(
        "parquet", data_files={"test": str(TASKS / "mfr" / "data" / "mfr_synthetic.parquet")}, split="test"
    )
    src.select(range(12)).remove_columns(["sample_id", "answer_text_synonyms"]).to_parquet(str(tmp_path / "mine.parquet"))
    (tmp_path / "my_mfr.yaml").write_text(
        f"include: {TASKS / 'mfr' / 'mfr_vision.yaml'}\n"
        "task: my_mfr_vision\n"
        "dataset_kwargs:\n  data_files:\n    test: mine.parquet\n"
        "process_docs: !function mf_harness.tasks.mfr.mfr.process_docs_vision_focus\n"
    )
    mine = TaskManager(include_path=[str(TASKS), str(tmp_path)], include_defaults=False)
    task = _subtasks(get_task_dict(["my_mfr_vision"], mine))["my_mfr_vision"]
    docs = task.test_docs()
    assert len(docs) == 12
    assert docs[0]["instruction"] == mfr.INSTRUCTIONS["focus"]["vision"]
    assert docs[3]["sample_id"] == f"{docs[3]['image_id']}:{docs[3]['task']}:3"


@pytest.fixture(scope="module")
def mc2_tasks(tm):
    from lmms_eval.tasks import get_task_dict

    if not MC2_JSON.is_file():
        pytest.skip(f"MC2 file not found at {MC2_JSON}")
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV:
            mp.delenv(var, raising=False)
        mp.setenv("MF_HARNESS_MC2_FILE", str(MC2_JSON))
        return _subtasks(get_task_dict(["mfr_mc2"], tm))


def test_mc2_file_parses_as_it_is_and_builds_prompts(mc2_tasks):
    assert set(mc2_tasks) == {"mfr_mc2_text", "mfr_mc2_vision"}
    for name, task in mc2_tasks.items():
        docs = task.test_docs()
        assert len(docs) == 2000
        assert collections.Counter(docs["mc2_task"]) == {k: 250 for k in MC2_KINDS}
        assert len(set(docs["sample_id"])) == 2000
        for doc in docs:
            assert doc["mfr_kinds"] == MC2_KINDS
            assert doc["instruction"] in task.doc_to_text(doc)


def test_mc2_task_without_file_is_clear(tm):
    from lmms_eval.tasks import get_task_dict

    with pytest.raises(Exception) as err:
        get_task_dict(["mfr_mc2_text"], tm)
    chain, exc = [], err.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__
    assert any(isinstance(e, MfHarnessError) and "MF_HARNESS_MC2_FILE is not set" in str(e) for e in chain)


def test_mc2_images_come_from_coco(mc2_tasks, tmp_path, monkeypatch):
    task = mc2_tasks["mfr_mc2_vision"]
    doc = task.test_docs()[0]
    image_id = doc["image_id"]
    with pytest.raises(DataError, match=rf"{image_id}.*MF_HARNESS_COCO_ROOT is not set"):
        task.doc_to_visual(doc)
    monkeypatch.setenv("MF_HARNESS_COCO_ROOT", str(tmp_path))
    with pytest.raises(DataError) as err:
        task.doc_to_visual(doc)
    assert image_id in str(err.value) and str(tmp_path / "val2014" / f"COCO_val2014_{image_id}.jpg") in str(err.value)
    path = tmp_path / "train2014" / f"COCO_train2014_{image_id}.jpg"
    path.parent.mkdir()
    Image.new("L", (40, 30), 7).save(path)
    (img,) = task.doc_to_visual(doc)
    assert img.mode == "RGB" and img.size == (40, 30)


NUMBERS = {"one": "1", "two": "2", "three": "3", "four": "4"}


def _scripted_model():
    from lmms_eval.api.model import lmms

    class Scripted(lmms):
        """Answers from the raw data fields: on mfr_text, colour docs follow the text
        (bold, capitalised), counting docs the image (as a digit sentence), shape docs
        the text on even ids and nothing usable on odd ones; on mfr_vision, "Not sure."."""

        def generate_until(self, requests):
            out = []
            for req in requests:
                ctx, _, doc_to_visual, doc_id, task, split = req.args
                doc = self.task_dict[task][split][doc_id]
                assert doc["instruction"] in ctx
                (img,) = doc_to_visual(doc)
                assert img.mode == "RGB"
                index = int(doc["sample_id"].split("-")[1])
                if task == "mfr_vision":
                    out.append("Not sure.")
                elif doc["task"] == "color":
                    out.append(f"**{doc['answer_text'].capitalize()}**")
                elif doc["task"] == "counting":
                    out.append(f"There are {NUMBERS[doc['answer_vision']]}.")
                else:
                    out.append(doc["answer_text"] if index % 2 == 0 else "a hexagon")
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    return Scripted()


def test_evaluate_gives_hand_computed_scores(tm):
    from lmms_eval.evaluator import simple_evaluate

    out = simple_evaluate(model=_scripted_model(), tasks=["mfr"], task_manager=tm, bootstrap_iters=100)
    res = out["results"]
    # mfr_text, 80 docs per kind: colour 80 compliant, counting 80 competing, shapes 40 compliant + 40 neither.
    text = res["mfr_text"]
    assert text["mfr,none"] == pytest.approx(120 / 240)
    assert text["competing,none"] == pytest.approx(80 / 240)
    assert text["neither,none"] == pytest.approx(40 / 240)
    assert text["mfr_color,none"] == 1.0
    assert text["mfr_counting,none"] == 0.0
    assert text["mfr_object_recognition,none"] == pytest.approx(0.5)
    assert "mfr_sport_recognition,none" not in text  # kinds absent from the data are not reported
    # per-kind CLT stderr over that kind's 80 docs only: sqrt(80/79 * 0.25) / sqrt(80)
    assert text["mfr_object_recognition_stderr_clt,none"] == pytest.approx(math.sqrt(0.25 / 79))
    vision = res["mfr_vision"]
    assert (vision["mfr,none"], vision["competing,none"], vision["neither,none"]) == (0.0, 0.0, 1.0)
    group = res["mfr"]  # both subtasks have 240 docs, so the pooled value is the plain mean
    assert group["mfr,none"] == pytest.approx(0.25)
    assert group["competing,none"] == pytest.approx(1 / 6)
    assert group["neither,none"] == pytest.approx(7 / 12)
    assert group["mfr_color,none"] == pytest.approx(0.5)
    assert group["mfr_object_recognition,none"] == pytest.approx(0.25)
    assert out["higher_is_better"]["mfr_text"]["mfr"] is True
    assert out["higher_is_better"]["mfr_text"]["competing"] is False


def test_doc_to_visual_accepts_image_structs():
    import io

    buf = io.BytesIO()
    Image.new("P", (9, 7)).save(buf, format="PNG")
    (img,) = mfr.doc_to_visual({"image": {"bytes": buf.getvalue(), "path": None}})
    assert img.mode == "RGB" and img.size == (9, 7)
    with pytest.raises(DataError, match="unusable 'image'"):
        mfr.doc_to_visual({"image": 3, "sample_id": "x"})
