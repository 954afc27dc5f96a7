"""The mfr data: the bundled synthetic parquet, MC2's file as it is, COCO lookup."""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mf_harness.tasks.mfr import mfr_data
from mf_harness.errors import DataError, MfHarnessError

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "tasks" / "mfr" / "data" / "mfr_synthetic.parquet"
SHARED = Path(os.environ.get("MF_HARNESS_SHARED", REPO.parent / "shared"))
MC2_JSON = SHARED / "data" / "mc2" / "evaluate_final.json"
needs_mc2 = pytest.mark.skipif(not MC2_JSON.is_file(), reason=f"MC2 file not found at {MC2_JSON} (set MF_HARNESS_SHARED)")

MC2_KINDS = {
    "activity_recognition",
    "attribute",
    "color",
    "counting",
    "object_recognition",
    "positional_reasoning",
    "sentiment_understanding",
    "sport_recognition",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("MF_HARNESS_MC2_FILE", "MF_HARNESS_COCO_ROOT"):
        monkeypatch.delenv(var, raising=False)


def _load_parquet(path: Path):
    import datasets

    return datasets.load_dataset("parquet", data_files={"test": str(path)}, split="test")


@pytest.fixture(scope="module")
def bundled():
    return _load_parquet(BUNDLED)


# ---------------------------------------------------------------------------- synthetic set


def test_bundled_parquet_equals_a_fresh_generation(tmp_path, bundled):
    out = tmp_path / "regen.parquet"
    assert mfr_data.main(["--out", str(out)]) == 0
    fresh = _load_parquet(out)
    assert fresh.column_names == bundled.column_names
    assert len(fresh) == len(bundled)
    for a, b in zip(fresh, bundled):
        ia, ib = a.pop("image"), b.pop("image")
        assert a == b
        assert ia.size == ib.size and np.array_equal(np.asarray(ia.convert("RGB")), np.asarray(ib.convert("RGB"))), a["sample_id"]


def test_dev_split_is_a_fresh_generation_and_shares_no_image_with_the_test_split(tmp_path, bundled):
    out = tmp_path / "dev.parquet"
    assert mfr_data.main(["--split", "dev", "--out", str(out)]) == 0
    dev = _load_parquet(mfr_data.bundled_synthetic_path("dev"))
    fresh = _load_parquet(out)
    assert len(fresh) == len(dev)
    for a, b in zip(fresh, dev):
        ia, ib = a.pop("image"), b.pop("image")
        assert a == b and np.array_equal(np.asarray(ia.convert("RGB")), np.asarray(ib.convert("RGB")))
    assert len(dev) == mfr_data.DEV_PER_KIND * len(mfr_data.SYNTHETIC_KINDS)
    assert dev.column_names == bundled.column_names
    pixels = lambda ds: {np.asarray(r["image"].convert("RGB")).tobytes() for r in ds}  # noqa: E731
    assert not pixels(dev) & pixels(bundled)
    with pytest.raises(MfHarnessError, match="split"):
        mfr_data.bundled_synthetic_path("train")


def test_generator_is_seeded():
    def strip(rows):
        return [{k: v for k, v in r.items() if k != "image"} | {"png": r["image"]["bytes"]} for r in rows]

    assert strip(mfr_data.synthetic_rows(7, 4)) == strip(mfr_data.synthetic_rows(7, 4))
    assert strip(mfr_data.synthetic_rows(7, 4)) != strip(mfr_data.synthetic_rows(8, 4))


def test_bundled_schema_and_size(bundled):
    import datasets

    assert BUNDLED.stat().st_size < 500_000
    assert set(bundled.column_names) == {
        "sample_id",
        "image_id",
        "task",
        "question",
        "answer_vision",
        "answer_text",
        "context",
        "answer_vision_synonyms",
        "answer_text_synonyms",
        "image",
    }
    assert isinstance(bundled.features["image"], datasets.Image)
    assert len(bundled) >= 200
    assert collections.Counter(bundled["task"]) == {"color": 80, "counting": 80, "object_recognition": 80}
    assert set(bundled["task"]) <= MC2_KINDS
    assert len(set(bundled["sample_id"])) == len(bundled)
    for row in bundled.remove_columns("image"):
        assert row["answer_vision"] != row["answer_text"]
        assert row["question"].endswith("?")


def _foreground(img: Image.Image) -> np.ndarray:
    a = np.asarray(img.convert("RGB")).astype(int)
    return np.abs(a - a[0, 0]).sum(-1) > 40


def _components(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return count


# Reference colours (CSS names; brown = saddlebrown), independent of the generator's palette.
REFERENCE = {
    "red": (255, 0, 0),
    "orange": (255, 165, 0),
    "yellow": (255, 255, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
    "purple": (128, 0, 128),
    "pink": (255, 192, 203),
    "brown": (139, 69, 19),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
WORDS = {"one": 1, "two": 2, "three": 3, "four": 4}


def _shape_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    # square 1, circle pi/4, plus sign ~0.6, triangle 1/2
    return "square" if fill > 0.9 else "circle" if fill > 0.7 else "cross" if fill > 0.54 else "triangle"


def test_images_show_the_vision_answer(bundled):
    for row in bundled:
        img, mask = row["image"], _foreground(row["image"])
        assert img.size == (84, 84)
        if row["task"] == "color":
            mean = np.asarray(img.convert("RGB")).astype(int)[mask].mean(0)
            nearest = min(REFERENCE, key=lambda k: ((np.array(REFERENCE[k]) - mean) ** 2).sum())
            assert nearest == row["answer_vision"], row["sample_id"]
        elif row["task"] == "counting":
            assert _components(mask) == WORDS[row["answer_vision"]], row["sample_id"]
        else:
            assert _shape_of(mask) == row["answer_vision"], row["sample_id"]


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text.lower()) is not None


def test_context_states_the_text_answer_and_contradicts_the_image(bundled):
    for row in bundled.remove_columns("image"):
        assert _has_word(row["context"], row["answer_text"]), row["sample_id"]
        assert not _has_word(row["context"], row["answer_vision"]), row["sample_id"]


def test_synonym_columns():
    rows = {r["answer_vision"]: r for r in mfr_data.synthetic_rows()}
    assert rows["gray"]["answer_vision_synonyms"] == ["grey"]
    assert rows["two"]["answer_vision_synonyms"] == ["2"]
    assert rows["red"]["answer_vision_synonyms"] == []


# ---------------------------------------------------------------------------- MC2


@needs_mc2
def test_load_mc2_as_it_is():
    ds = mfr_data.load_mc2(MC2_JSON)
    assert len(ds) == 2000
    assert set(ds.column_names) == set(mfr_data.MC2_FIELDS)
    assert collections.Counter(ds["task"]) == {k: 250 for k in MC2_KINDS}
    assert all(isinstance(i, str) and len(i) == 12 and i.isdigit() for i in ds["image_id"])


@needs_mc2
def test_mc2_data_files_come_from_the_environment(monkeypatch, tmp_path):
    with pytest.raises(MfHarnessError, match="MF_HARNESS_MC2_FILE is not set"):
        mfr_data.MC2_DATA_FILES
    monkeypatch.setenv("MF_HARNESS_MC2_FILE", str(tmp_path / "nope.json"))
    with pytest.raises(MfHarnessError, match="no such file"):
        mfr_data.MC2_DATA_FILES
    monkeypatch.chdir(MC2_JSON.parent)
    monkeypatch.setenv("MF_HARNESS_MC2_FILE", MC2_JSON.name)  # relative to the working directory
    assert mfr_data.MC2_DATA_FILES == {"test": str(MC2_JSON.resolve())}
    assert mfr_data.load_mc2().num_rows == 2000


# ---------------------------------------------------------------------------- COCO

ID = "000000046962"


def _jpg(path: Path, size=(32, 24), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path, format="JPEG")
    return path


@pytest.mark.parametrize(
    "layout",
    [
        "val2014/COCO_val2014_{id}.jpg",
        "train2014/COCO_train2014_{id}.jpg",
        "COCO_val2014_{id}.jpg",
        "COCO_train2014_{id}.jpg",
        "val2017/{id}.jpg",
        "train2017/{id}.jpg",
        "{id}.jpg",
    ],
)
def test_coco_layouts(tmp_path, layout):
    expected = _jpg(tmp_path / layout.format(id=ID))
    assert mfr_data.coco_image_path(ID, tmp_path) == expected
    assert mfr_data.coco_image_path(46962, tmp_path) == expected  # ids are zero-padded to 12 digits


def test_coco_root_from_environment_and_several_roots(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    expected = _jpg(b / "train2014" / f"COCO_train2014_{ID}.jpg", mode="L")
    monkeypatch.setenv("MF_HARNESS_COCO_ROOT", f"{a}{os.pathsep}{b}")
    assert mfr_data.coco_image_path(ID) == expected
    img = mfr_data.load_coco_image(ID)
    assert img.mode == "RGB" and img.size == (32, 24)


def test_missing_coco_image_names_id_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MF_HARNESS_COCO_ROOT", str(tmp_path))
    with pytest.raises(DataError) as err:
        mfr_data.coco_image_path(ID)
    msg = str(err.value)
    assert ID in msg
    assert str(tmp_path / "val2014" / f"COCO_val2014_{ID}.jpg") in msg
    assert str(tmp_path / "train2014" / f"COCO_train2014_{ID}.jpg") in msg
    assert str(tmp_path / f"{ID}.jpg") in msg


def test_unset_coco_root_is_clear():
    with pytest.raises(DataError, match=rf"{ID}.*MF_HARNESS_COCO_ROOT is not set.*val2014/COCO_val2014_{ID}\.jpg"):
        mfr_data.coco_image_path(ID)


def test_bad_image_id():
    with pytest.raises(DataError, match="not a COCO image id"):
        mfr_data.coco_image_path("syn-0001", "/nonexistent")
