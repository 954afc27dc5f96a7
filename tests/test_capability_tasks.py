"""Capability tasks as lmms-eval builds them: names, prompts vs upstream, instructions, data sources, subsets."""

from __future__ import annotations

import functools
import random
import shutil
from pathlib import Path

import pytest

from mf_harness.tasks.capability import FIXTURE_TASKS, SUBSET_TASKS, TASKS, fixtures, mmlu, textvqa
from mf_harness.errors import MfHarnessError

REPO = Path(__file__).resolve().parents[1]
CAP = REPO / "tasks" / "capability"
UPSTREAM = Path(__import__("lmms_eval").__file__).resolve().parent / "tasks"
ENV = ("MF_HARNESS_TEXTVQA_DATA", "MF_HARNESS_FLICKR30K_DATA", "MF_HARNESS_MMLU_DATA", "MF_HARNESS_IFEVAL_DATA",
       "MF_HARNESS_TEXTVQA_INSTRUCTION", "MF_HARNESS_FLICKR30K_INSTRUCTION", "MF_HARNESS_MMLU_INSTRUCTION")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)


@functools.lru_cache(maxsize=1)
def shared_task_manager():
    """lmms-eval's TaskManager as the CLI builds it: no include_path (our plugin adds the folder).

    Shared with the other test_capability_* modules: indexing lmms-eval's ~2,000 YAMLs takes seconds."""
    import mf_harness.lmms.plugin as plugin
    from lmms_eval.tasks import TaskManager

    plugin.install()
    return TaskManager()


@pytest.fixture(scope="module")
def tm():
    return shared_task_manager()


def _build(tm, names):
    from lmms_eval.tasks import get_task_dict

    out = {}

    def walk(d):
        for k, v in d.items():
            walk(v) if isinstance(v, dict) else out.__setitem__(k, v)

    walk(get_task_dict(list(names), tm))
    return out


def _docs(task):
    return list(task.test_docs() if task.has_test_docs() else task.validation_docs())


@pytest.fixture(scope="module")
def fixture_tasks(tm):
    return _build(tm, FIXTURE_TASKS)


def test_every_name_is_indexed_without_include_path(tm):
    names = set(tm.all_tasks)
    expected = {*TASKS, *SUBSET_TASKS, *FIXTURE_TASKS, "mf_capability", "mf_capability_1k", "mf_capability_full"}
    assert expected <= names, sorted(expected - names)
    # the built-in tasks of the same benchmarks keep their own names
    assert {"textvqa_val", "flickr30k_test", "ifeval"} <= names


def test_fixture_group_lists_only_offline_tasks(tm):
    from lmms_eval.utils import load_yaml_config

    group = load_yaml_config(str(CAP / "mf_capability.yaml"), mode="simple")
    assert group["task"] and all(t.endswith("_fixture") for t in group["task"])
    assert {t.removesuffix("_fixture") for t in group["task"]} == set(TASKS)


def test_fixture_tasks_build_offline_with_the_instruction_in_every_prompt(fixture_tasks):
    sizes = {"mf_textvqa_val_fixture": 6, "mf_flickr30k_test_fixture": 5, "mf_flickr30k_test_ppl_fixture": 5,
             "mf_mmlu_fixture": 8, "mf_mmlu_generative_fixture": 8, "mf_ifeval_fixture": 6}
    assert set(fixture_tasks) == set(sizes)
    for name, task in fixture_tasks.items():
        docs = _docs(task)
        assert len(docs) == sizes[name], name
        for doc in docs:
            ctx = task.fewshot_context(doc, 0)
            needles = [doc["instruction"]] if isinstance(doc["instruction"], str) else doc["instruction"]
            assert needles and all(n.strip() and n in ctx for n in needles), (name, ctx)


def test_prompts_equal_lmms_evals_own(fixture_tasks):
    from lmms_eval.tasks.flickr30k.utils import flickr_doc_to_text
    from lmms_eval.tasks.textvqa.utils import textvqa_doc_to_text
    from lmms_eval.utils import apply_template, load_yaml_config

    tv = fixture_tasks["mf_textvqa_val_fixture"]
    upstream_kw = load_yaml_config(str(UPSTREAM / "textvqa" / "_default_template_textvqa_yaml"),
                                   mode="simple")["lmms_eval_specific_kwargs"]["default"]
    for doc in _docs(tv):
        assert tv.doc_to_text(doc) == textvqa_doc_to_text(doc, dict(upstream_kw))
        assert textvqa.doc_to_text(doc, {"ocr": True}) == textvqa_doc_to_text(doc, {**upstream_kw, "ocr": True})
    for name in ("mf_flickr30k_test_fixture", "mf_flickr30k_test_ppl_fixture"):
        for doc in _docs(fixture_tasks[name]):
            assert fixture_tasks[name].fewshot_context(doc, 0) == flickr_doc_to_text(doc)
    for name in ("mf_mmlu_fixture", "mf_mmlu_generative_fixture"):
        task = fixture_tasks[name]
        for doc in _docs(task):
            cfg = load_yaml_config(str(UPSTREAM / "mmlu" / "default" / f"mmlu_{doc['subject']}.yaml"), mode="simple")
            assert task.fewshot_context(doc, 0) == cfg["description"] + apply_template(cfg["doc_to_text"], doc)
    for doc in _docs(fixture_tasks["mf_ifeval_fixture"]):
        assert fixture_tasks["mf_ifeval_fixture"].fewshot_context(doc, 0) == doc["prompt"] == doc["instruction"]


def test_mmlu_instruction_is_description_and_answer_cue(fixture_tasks):
    doc = _docs(fixture_tasks["mf_mmlu_fixture"])[4]
    assert doc["subject"] == "high_school_geography"
    assert list(doc["instruction"]) == [
        "The following are multiple choice questions (with answers) about high school geography.", "Answer:"]
    assert fixture_tasks["mf_mmlu_fixture"].doc_to_choice(doc) == ["A", "B", "C", "D"]


def test_instruction_overrides_change_prompt_and_scope_together(tm, monkeypatch):
    monkeypatch.setenv("MF_HARNESS_TEXTVQA_INSTRUCTION", "Reply with one word.")
    monkeypatch.setenv("MF_HARNESS_MMLU_INSTRUCTION", "Questions on {subject}, pick a letter.")
    monkeypatch.setenv("MF_HARNESS_FLICKR30K_INSTRUCTION", "Describe the picture briefly.")
    tasks = _build(tm, ["mf_textvqa_val_fixture", "mf_mmlu_fixture", "mf_flickr30k_test_fixture"])
    doc = _docs(tasks["mf_textvqa_val_fixture"])[0]
    assert doc["instruction"] == "Reply with one word."
    assert tasks["mf_textvqa_val_fixture"].doc_to_text(doc) == "What number is on the sign?\nReply with one word."
    doc = _docs(tasks["mf_mmlu_fixture"])[0]
    assert list(doc["instruction"]) == ["Questions on abstract algebra, pick a letter.", "Answer:"]
    ctx = tasks["mf_mmlu_fixture"].fewshot_context(doc, 0)
    assert ctx.startswith("Questions on abstract algebra, pick a letter.\n\n")
    doc = _docs(tasks["mf_flickr30k_test_fixture"])[0]
    assert tasks["mf_flickr30k_test_fixture"].doc_to_text(doc) == doc["instruction"] == "Describe the picture briefly."
    monkeypatch.setenv("MF_HARNESS_TEXTVQA_INSTRUCTION", "  ")
    with pytest.raises(MfHarnessError, match="MF_HARNESS_TEXTVQA_INSTRUCTION is set but empty"):
        textvqa.process_docs(tasks["mf_textvqa_val_fixture"].dataset["validation"])


def test_real_tasks_read_a_local_file_or_folder(tm, monkeypatch, tmp_path):
    import datasets

    src = fixtures.fixture_path("mmlu_fixture")
    monkeypatch.setenv("MF_HARNESS_MMLU_DATA", str(src))  # one parquet file holding the test split
    task = _build(tm, ["mf_mmlu"])["mf_mmlu"]
    assert [d["question"] for d in _docs(task)] == [r["question"] for r in fixtures.mmlu_rows()]

    snap = tmp_path / "snapshot"  # a hub-snapshot-like folder of split files, without README
    (snap / "all").mkdir(parents=True)
    shutil.copy(src, snap / "all" / "test-00000-of-00001.parquet")
    monkeypatch.setenv("MF_HARNESS_MMLU_DATA", str(snap))
    assert len(_docs(_build(tm, ["mf_mmlu_generative"])["mf_mmlu_generative"])) == 8

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": fixtures.build("ifeval_fixture")}).save_to_disk(str(saved))
    monkeypatch.setenv("MF_HARNESS_IFEVAL_DATA", str(saved))
    keys = [d["key"] for d in _docs(_build(tm, ["mf_ifeval"])["mf_ifeval"])]
    assert keys == [r["key"] for r in fixtures.ifeval_rows()]

    monkeypatch.setenv("MF_HARNESS_TEXTVQA_DATA", str(tmp_path / "nowhere.parquet"))
    with pytest.raises(ImportError) as info:  # lmms-eval wraps errors of !function tags
        _build(tm, ["mf_textvqa_val"])
    assert isinstance(info.value.__cause__, MfHarnessError)
    assert "MF_HARNESS_TEXTVQA_DATA=" in str(info.value.__cause__) and "no such file" in str(info.value.__cause__)


def test_default_tasks_point_at_the_hub_datasets_lmms_eval_uses():
    from lmms_eval.utils import load_yaml_config

    from mf_harness.tasks.capability import sources

    assert sources.resolve("textvqa") == ("lmms-lab-encoder/textvqa", None, None)
    assert sources.resolve("mmlu") == ("hails/mmlu_no_train", "all", None)
    assert load_yaml_config(str(UPSTREAM / "textvqa" / "_default_template_textvqa_yaml"),
                            mode="simple")["dataset_path"] == sources.SOURCES["textvqa"].hub
    assert load_yaml_config(str(UPSTREAM / "flickr30k" / "flickr30k_test.yaml"),
                            mode="simple")["dataset_path"] == sources.SOURCES["flickr30k"].hub
    assert load_yaml_config(str(UPSTREAM / "mmlu" / "default" / "_default_template_yaml"),
                            mode="simple")["dataset_path"] == sources.SOURCES["mmlu"].hub
    lm_eval_ifeval = Path(__import__("lm_eval").__file__).resolve().parent / "tasks" / "ifeval" / "ifeval.yaml"
    assert "dataset_path: google/IFEval" in lm_eval_ifeval.read_text()


def test_subset_tasks_take_the_documented_seeded_draw(tm, monkeypatch, tmp_path):
    import datasets

    n = 1500
    rows = [{"question": f"q{i}?", "subject": ["anatomy", "virology"][i % 2], "choices": ["a", "b", "c", "d"],
             "answer": i % 4} for i in range(n)]
    path = tmp_path / "mmlu_1500.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    monkeypatch.setenv("MF_HARNESS_MMLU_DATA", str(path))
    tasks = _build(tm, ["mf_mmlu_1k", "mf_mmlu_generative_1k"])
    expected = [f"q{i}?" for i in sorted(random.Random(1234).sample(range(n), 1000))]
    assert [d["question"] for d in _docs(tasks["mf_mmlu_1k"])] == expected
    assert [d["question"] for d in _docs(tasks["mf_mmlu_generative_1k"])] == expected
    assert [d["question"] for d in _docs(_build(tm, ["mf_mmlu_1k"])["mf_mmlu_1k"])] == expected  # rebuilt: same draw
    # a split no larger than the subset is kept whole, in order
    assert [d["question"] for d in _docs(_build(tm, ["mf_mmlu_fixture"])["mf_mmlu_fixture"])] == \
        [r["question"] for r in fixtures.mmlu_rows()]


def test_bundled_fixtures_equal_a_fresh_generation(tmp_path):
    import datasets

    fixtures.write_all(tmp_path)
    for name, split in fixtures.FIXTURES.items():
        load = lambda p: datasets.load_dataset("parquet", data_files={split: str(p)}, split=split)  # noqa: E731
        committed, fresh = load(fixtures.fixture_path(name)), load(tmp_path / f"{name}.parquet")
        assert committed.features == fresh.features, name
        assert len(committed) == len(fresh) > 0
        for a, b in zip(committed, fresh):
            for col in committed.column_names:
                if col == "image":
                    assert a[col].size == b[col].size and a[col].tobytes() == b[col].tobytes(), name
                else:
                    assert a[col] == b[col], (name, col)


def test_fixture_schemas_match_the_hub_columns():
    # column lists as published on the hub dataset cards (lmms-lab textvqa / flickr30k, hails/mmlu_no_train)
    assert fixtures.build("textvqa_val_fixture").column_names == [
        "image_id", "question_id", "question", "question_tokens", "image", "image_width", "image_height",
        "flickr_original_url", "flickr_300k_url", "answers", "image_classes", "set_name", "ocr_tokens"]
    assert fixtures.build("flickr30k_test_fixture").column_names == [
        "image", "caption", "sentids", "img_id", "filename"]
    mm = fixtures.build("mmlu_fixture")
    assert mm.column_names == ["question", "subject", "choices", "answer"]
    assert mm.features["answer"].names == ["A", "B", "C", "D"]
    assert len({r["subject"] for r in mm}) == 4 and all(len(r["answers"]) == 10 for r in fixtures.textvqa_rows())
    ife = fixtures.build("ifeval_fixture")
    assert ife.column_names == ["key", "prompt", "instruction_id_list", "kwargs"]
    assert all(len(r["kwargs"]) == len(r["instruction_id_list"]) for r in ife)


def test_ifeval_without_punkt_tab_stops_with_one_message(monkeypatch, tmp_path):
    import nltk

    from mf_harness.tasks.capability import ifeval

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(MfHarnessError, match="IFEval needs NLTK's punkt_tab"):
        ifeval.process_docs(fixtures.build("ifeval_fixture"))


def test_mmlu_rejects_rows_without_four_choices():
    import datasets

    from mf_harness.errors import DataError

    ds = datasets.Dataset.from_list([{"question": "q", "subject": "anatomy", "choices": ["a", "b"], "answer": 0}])
    with pytest.raises(DataError, match="do not have 4 choices"):
        mmlu.process_docs(ds)
