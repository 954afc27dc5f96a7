"""Data for the modality-following (MFR) tasks: MC2 rows, COCO images, a synthetic set.

One row schema serves every source. MC2's public file (arXiv 2505.20977,
``evaluate_final.json``) is a JSON list of dicts with exactly the fields of
`MC2_FIELDS`; its images are COCO 2014 photos looked up by ``image_id``. The
parquet / `datasets` form adds an ``image`` column (a `datasets.Image` feature, so
docs carry PIL images) and may add ``answer_vision_synonyms`` /
``answer_text_synonyms`` (lists of extra surface forms for the answer entity
dictionaries) and a ``sample_id``. The bundled synthetic set is that form.

Where the files come from
-------------------------
* ``MF_HARNESS_MC2_FILE``: path of MC2's ``evaluate_final.json`` (the ``mfr_mc2_*``
  tasks read it through lmms-eval's ordinary ``dataset_path: json`` loading; the
  YAML takes ``data_files`` from `MC2_DATA_FILES`, read from the environment each
  time the task is built).
* ``MF_HARNESS_COCO_ROOT``: a COCO 2014 folder (several may be joined with
  ``os.pathsep``); `coco_image_path` tries, in order, the names of `COCO_LAYOUTS`.
* The synthetic set: ``tasks/mfr/data/mfr_synthetic.parquet``, written by
  ``python -m mf_harness.tasks.mfr.mfr_data`` from `synthetic_rows` (deterministic in the
  seed: 84x84 PIL drawings of one to four shapes; kinds ``color``, ``counting``,
  ``object_recognition``, each row's ``context`` contradicting its image).
"""

from __future__ import annotations

import argparse
import io
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mf_harness.errors import DataError, MfHarnessError

__all__ = [
    "MC2_FIELDS",
    "MC2_TASKS",
    "SYNONYM_COLUMNS",
    "COCO_LAYOUTS",
    "SYNTHETIC_SEED",
    "SYNTHETIC_PER_KIND",
    "DEV_SEED",
    "DEV_PER_KIND",
    "mc2_file",
    "load_mc2",
    "coco_image_path",
    "load_coco_image",
    "synthetic_rows",
    "synthetic_dataset",
    "write_synthetic",
    "bundled_synthetic_path",
    "draw_shape",
    "mfr_row",
    "main",
]

MC2_FIELDS: tuple[str, ...] = ("image_id", "task", "question", "answer_vision", "answer_text", "context")
MC2_TASKS: tuple[str, ...] = (
    "activity_recognition",
    "attribute",
    "color",
    "counting",
    "object_recognition",
    "positional_reasoning",
    "sentiment_understanding",
    "sport_recognition",
)
# Optional list[str] columns: extra surface forms of answer_vision / answer_text.
SYNONYM_COLUMNS: Mapping[str, str] = {"vision": "answer_vision_synonyms", "text": "answer_text_synonyms"}

MC2_FILE_ENV = "MF_HARNESS_MC2_FILE"
COCO_ROOT_ENV = "MF_HARNESS_COCO_ROOT"
# File names tried under each COCO root, {id} being the 12-digit COCO id.
# COCO 2017 re-splits the same images under <id>.jpg, so those layouts work too.
COCO_LAYOUTS: tuple[str, ...] = (
    "val2014/COCO_val2014_{id}.jpg",
    "train2014/COCO_train2014_{id}.jpg",
    "COCO_val2014_{id}.jpg",
    "COCO_train2014_{id}.jpg",
    "val2017/{id}.jpg",
    "train2017/{id}.jpg",
    "{id}.jpg",
)


# ---------------------------------------------------------------------------- MC2


def mc2_file() -> Path:
    """The MC2 JSON named by ``MF_HARNESS_MC2_FILE`` (must exist)."""
    value = os.environ.get(MC2_FILE_ENV, "").strip()
    if not value:
        raise MfHarnessError(
            f"{MC2_FILE_ENV} is not set: the mfr_mc2 tasks read MC2's evaluate_final.json from it "
            f"(e.g. export {MC2_FILE_ENV}=../shared/data/mc2/evaluate_final.json)"
        )
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise MfHarnessError(f"{MC2_FILE_ENV}={value!r}: no such file ({path})")
    return path


def __getattr__(name: str) -> Any:
    # `MC2_DATA_FILES` is read from the environment at each access: the mfr_mc2 YAMLs
    # say `data_files: !function mf_harness.tasks.mfr.mfr_data.MC2_DATA_FILES`, and lmms-eval
    # resolves that tag (a getattr) each time it builds the task, not at indexing.
    if name == "MC2_DATA_FILES":
        return {"test": str(mc2_file())}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_mc2(path: str | os.PathLike | None = None):
    """MC2's JSON as a `datasets.Dataset`, loaded as the mfr_mc2 tasks load it."""
    import datasets

    path = Path(path) if path is not None else mc2_file()
    return datasets.load_dataset("json", data_files={"test": str(path)}, split="test")


# ---------------------------------------------------------------------------- COCO


def _coco_id(image_id: Any) -> str:
    text = str(image_id).strip()
    if not text.isdigit():
        raise DataError(f"image_id {image_id!r} is not a COCO image id (digits expected)")
    return text.zfill(12)


def _coco_roots(root: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[Path]:
    if root is None:
        root = os.environ.get(COCO_ROOT_ENV, "")
    if isinstance(root, (str, os.PathLike)):
        root = [p for p in str(root).split(os.pathsep) if p.strip()]
    return [Path(p).expanduser() for p in root]


def coco_image_path(image_id: Any, root: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> Path:
    """Where COCO image ``image_id`` is under ``root`` (default: ``$MF_HARNESS_COCO_ROOT``).

    Raises one `DataError` naming the id and every path tried when it is nowhere.
    """
    cid = _coco_id(image_id)
    roots = _coco_roots(root)
    names = [layout.format(id=cid) for layout in COCO_LAYOUTS]
    if not roots:
        raise DataError(
            f"COCO image {cid}: the doc has no 'image' and {COCO_ROOT_ENV} is not set; set it to a COCO 2014 "
            f"folder, where these paths are tried: {', '.join(names)}"
        )
    tried = [r / n for r in roots for n in names]
    for path in tried:
        if path.is_file():
            return path
    raise DataError(
        f"COCO image {cid} not found under {COCO_ROOT_ENV}={os.pathsep.join(map(str, roots))!r}; "
        f"tried: {', '.join(map(str, tried))}"
    )


def load_coco_image(image_id: Any, root: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> Image.Image:
    from mf_harness.lmms.images import open_rgb

    path = coco_image_path(image_id, root)
    return open_rgb(path, f"COCO image {path.name}")


# ---------------------------------------------------------------------------- synthetic set

SYNTHETIC_SEED = 20260521
SYNTHETIC_PER_KIND = 80  # x 3 kinds = 240 rows, each usable for text- and vision-following
SYNTHETIC_KINDS: tuple[str, ...] = ("color", "counting", "object_recognition")
# The dev split (``mfr_dev_*`` tasks): the same generator with another seed, for discovering head sets
# (``mf-harness discover --tasks mfr_dev_text,mfr_dev_vision``) on rows the sweep does not score.
DEV_SEED = 20260522
DEV_PER_KIND = 32  # x 3 kinds = 96 rows
IMAGE_SIZE = 84

COLORS: Mapping[str, tuple[int, int, int]] = {
    "red": (225, 25, 25),
    "orange": (250, 150, 10),
    "yellow": (245, 230, 20),
    "green": (30, 150, 50),
    "blue": (30, 70, 225),
    "purple": (130, 40, 170),
    "pink": (245, 150, 200),
    "brown": (130, 75, 30),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
PLURAL: Mapping[str, str] = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses"}
NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "gray": ("grey",),
    "purple": ("violet",),
    "circle": ("disk", "disc"),
    "cross": ("plus sign", "plus"),
    **{w: (str(i + 1),) for i, w in enumerate(NUMBER_WORDS)},
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 10) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill) -> None:
    if shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        t = max(2, round(r * 0.35))
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def _render(
    shape: str, color: str, centres: Sequence[tuple[int, int]], radius: Sequence[int], rng: random.Random
) -> bytes:
    bg = tuple(rng.randint(238, 255) for _ in range(3))
    im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), bg)
    draw = ImageDraw.Draw(im)
    fill = _jitter(COLORS[color], rng)
    for (cx, cy), r in zip(centres, radius):
        draw_shape(draw, shape, cx, cy, r, fill)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _other(rng: random.Random, choices: Sequence[str], not_this: str) -> str:
    return rng.choice([c for c in choices if c != not_this])


def mfr_row(sample_id: str, image_id: str, kind: str, question: str, vision: str, text: str, context: str,
            image: Any) -> dict[str, Any]:
    """One row of the parquet form of the schema (MC2's fields, synonyms, the image)."""
    return {
        "sample_id": sample_id,
        "image_id": image_id,
        "task": kind,
        "question": question,
        "answer_vision": vision,
        "answer_text": text,
        "context": context,
        "answer_vision_synonyms": list(SYNONYMS.get(vision, ())),
        "answer_text_synonyms": list(SYNONYMS.get(text, ())),
        "image": image,
    }


def _synthetic_row(i: int, kind: str, rng: random.Random) -> dict[str, Any]:
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    mid = IMAGE_SIZE // 2
    if kind == "counting":
        n = rng.randint(1, len(NUMBER_WORDS))
        cells = rng.sample([(21, 21), (63, 21), (21, 63), (63, 63)], n)
        centres = [(x + rng.randint(-4, 4), y + rng.randint(-4, 4)) for x, y in cells]
        radius = [rng.randint(10, 14) for _ in cells]
    else:
        centres = [(mid + rng.randint(-8, 8), mid + rng.randint(-8, 8))]
        radius = [rng.randint(18, 26)]
    png = _render(shape, color, centres, radius, rng)

    if kind == "color":
        vision, text = color, _other(rng, list(COLORS), color)
        question = f"What color is the {shape}?"
        context = rng.choice(
            [
                f"The {shape} in the picture is {text}.",
                f"{_article(text).capitalize()} {text} {shape} is drawn on a light background.",
                f"This image shows a single {text} {shape}.",
            ]
        )
    elif kind == "counting":
        vision = NUMBER_WORDS[len(centres) - 1]
        text = _other(rng, NUMBER_WORDS, vision)
        noun = shape if text == "one" else PLURAL[shape]
        question = f"How many {PLURAL[shape]} are there?"
        context = rng.choice(
            [
                f"There {'is' if text == 'one' else 'are'} {text} {noun} in the picture.",
                f"The picture shows exactly {text} {color} {noun}.",
            ]
        )
    elif kind == "object_recognition":
        vision, text = shape, _other(rng, SHAPES, shape)
        question = "What shape is shown in the picture?"
        context = rng.choice(
            [
                f"The picture shows {_article(text)} {text}.",
                f"{_article(color).capitalize()} {color} {text} is drawn in the middle of the picture.",
            ]
        )
    else:  # pragma: no cover - SYNTHETIC_KINDS is closed
        raise ValueError(kind)

    return mfr_row(f"syn-{i:04d}-{kind}", f"syn-{i:04d}", kind, question, vision, text, context,
                   {"bytes": png, "path": None})


def synthetic_rows(seed: int = SYNTHETIC_SEED, per_kind: int = SYNTHETIC_PER_KIND) -> Iterator[dict[str, Any]]:
    """The synthetic rows, kinds interleaved (so ``--limit`` still covers every kind)."""
    rng = random.Random(seed)
    for i in range(per_kind * len(SYNTHETIC_KINDS)):
        yield _synthetic_row(i, SYNTHETIC_KINDS[i % len(SYNTHETIC_KINDS)], rng)


def _features():
    import datasets

    string, strings = datasets.Value("string"), datasets.List(datasets.Value("string"))
    return datasets.Features(
        {
            "sample_id": string,
            **{f: string for f in MC2_FIELDS},
            "answer_vision_synonyms": strings,
            "answer_text_synonyms": strings,
            "image": datasets.Image(),
        }
    )


def synthetic_dataset(seed: int = SYNTHETIC_SEED, per_kind: int = SYNTHETIC_PER_KIND):
    """The synthetic set as a `datasets.Dataset` with an ``image`` Image column."""
    import datasets

    rows = list(synthetic_rows(seed, per_kind))
    return datasets.Dataset.from_list(rows, features=_features())


def write_synthetic(path: str | os.PathLike, seed: int = SYNTHETIC_SEED, per_kind: int = SYNTHETIC_PER_KIND) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_dataset(seed, per_kind).to_parquet(str(path))
    return path


def bundled_synthetic_path(split: str = "test") -> Path:
    """The committed synthetic parquet of ``split`` (``test``: the ``mfr`` tasks; ``dev``: ``mfr_dev``)."""
    if split not in ("test", "dev"):
        raise MfHarnessError(f"split must be 'test' or 'dev', got {split!r}")
    name = "mfr_synthetic.parquet" if split == "test" else "mfr_synthetic_dev.parquet"
    return Path(__file__).resolve().parent / "data" / name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mf_harness.tasks.mfr.mfr_data", description="Write the bundled synthetic modality-following set."
    )
    parser.add_argument("--out", type=Path, default=None, help="parquet to write (default: the bundled file)")
    parser.add_argument("--split", choices=("test", "dev"), default="test",
                        help="which bundled split's seed and size to use (default: test)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--per-kind", type=int, default=None)
    args = parser.parse_args(argv)
    dev = args.split == "dev"
    args.seed = args.seed if args.seed is not None else (DEV_SEED if dev else SYNTHETIC_SEED)
    args.per_kind = args.per_kind if args.per_kind is not None else (DEV_PER_KIND if dev else SYNTHETIC_PER_KIND)
    out = write_synthetic(args.out or bundled_synthetic_path(args.split), args.seed, args.per_kind)
    print(f"wrote {out} ({out.stat().st_size} bytes, {args.per_kind * len(SYNTHETIC_KINDS)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
