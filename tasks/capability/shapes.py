"""General capability in the embedded model's world: the ``mf_shapes_*`` tasks (no conflict).

The ``mfr`` tasks measure modality following on conflicts. To score a head set for
*specificity* on the embedded model (``pretrained=embedded``), the same world has tasks
with nothing to arbitrate, run through the same wrapper and spec:

=====================  =====================================================  ==========================
task                   prompt (user text; image first where there is one)      metric
=====================  =====================================================  ==========================
``mf_shapes_image``    ``{question}\\n{instruction}`` with the image only       ``exact_match``
``mf_shapes_text``     ``Text context: {context}\\n{question}\\n{instruction}``  ``exact_match``
                       with no image
``mf_shapes_agree``    the same text with the image, context and image agree   ``exact_match``
``mf_shapes_caption``  ``{instruction}`` with the image                        ``shapes_CIDEr``
=====================  =====================================================  ==========================

Group ``mf_shapes_capability`` runs the four. The QA tasks' ``instruction`` is the
format line "Answer the question with a single word." (the ``mfr`` tasks' own format
line); the caption task's is "Describe the image in a few words." (the whole user text,
as in lmms-eval's Flickr30k). A spec's ``instruction`` scope reads that doc field.

Scoring. ``exact_match``: the prediction and the answer, each normalised by the ``mfr``
tasks' normaliser (lmms-eval's EvalAI answer processor, number words as digits), are
equal. ``shapes_CIDEr``: pycocoevalcap's PTBTokenizer and ``Cider`` over the split's
captions against three reference captions each (``a red circle``, ``one red circle``,
``a circle that is red``; for several shapes ``three red circles``, ``3 red circles``,
``three circles that are red``), corpus-level as lmms-eval's Flickr30k scores it.
pycocoevalcap's corpus CIDEr is the mean of its per-image scores (document frequencies
come from the references only), so ``aggregate_cider.per_sample`` gives each image's
score and the sweep keeps them per sample: bootstrap intervals and paired comparisons
resample them with the references' document frequencies held fixed.

Data: ``data/shapes_capability.parquet`` (bundled, 48 rows per task: 16 per question
kind; written by ``python -m mf_harness.tasks.capability.shapes``, a pure function of
`SEED`), drawn like the ``mfr`` sets (84x84, one shape or one to four for counting, ten
colours) with its own seed.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mf_harness.errors import MfHarnessError
from mf_harness.tasks.capability.common import require_columns, to_rgb
from mf_harness.tasks.mfr.mfr import FORMAT_INSTRUCTION, normalize_answer
from mf_harness.tasks.mfr.mfr_data import COLORS, IMAGE_SIZE, NUMBER_WORDS, PLURAL, SHAPES, draw_shape

__all__ = ["TASKS", "KINDS", "SEED", "PER_KIND", "QA_INSTRUCTION", "CAPTION_INSTRUCTION", "user_text", "caption",
           "references", "question_row", "shapes_rows", "bundled_path", "process_docs_image", "process_docs_text",
           "process_docs_agree", "process_docs_caption", "doc_to_visual", "doc_to_text", "doc_to_target",
           "process_results", "process_results_caption", "aggregate_cider", "per_image_cider"]

TASKS = ("image", "text", "agree", "caption")
KINDS = ("color", "counting", "object_recognition")
SEED = 20261201
PER_KIND = 16
QA_INSTRUCTION = FORMAT_INSTRUCTION
CAPTION_INSTRUCTION = "Describe the image in a few words."
_CELLS = ((21, 21), (63, 21), (21, 63), (63, 63))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def user_text(task: str, question: str = "", context: str = "", instruction: str | None = None) -> str:
    """The user text of a ``mf_shapes_<task>`` doc (the trainer renders its capability rows with this too)."""
    if task == "image":
        return f"{question}\n{instruction or QA_INSTRUCTION}"
    if task in ("text", "agree"):
        return f"Text context: {context}\n{question}\n{instruction or QA_INSTRUCTION}"
    if task == "caption":
        return instruction or CAPTION_INSTRUCTION
    raise MfHarnessError(f"unknown shapes task {task!r}; one of {', '.join(TASKS)}")


def caption(shape: str, color: str, count: int) -> str:
    """The caption the model is trained to write: ``a red circle`` / ``three red circles``."""
    if count == 1:
        return f"{_article(color)} {color} {shape}"
    return f"{NUMBER_WORDS[count - 1]} {color} {PLURAL[shape]}"


def references(shape: str, color: str, count: int) -> list[str]:
    """Three reference captions (see the module docstring)."""
    if count == 1:
        return [caption(shape, color, 1), f"one {color} {shape}", f"{_article(shape)} {shape} that is {color}"]
    n = NUMBER_WORDS[count - 1]
    return [caption(shape, color, count), f"{count} {color} {PLURAL[shape]}", f"{n} {PLURAL[shape]} that are {color}"]


def question_row(kind: str, shape: str, color: str, count: int) -> tuple[str, str, str]:
    """(question, agreeing text context, answer) about a drawing."""
    if kind == "color":
        return f"What color is the {shape}?", f"The {shape} in the picture is {color}.", color
    if kind == "counting":
        n = NUMBER_WORDS[count - 1]
        noun = shape if count == 1 else PLURAL[shape]
        return (f"How many {PLURAL[shape]} are there?", f"There {'is' if count == 1 else 'are'} {n} {noun} in the "
                f"picture.", n)
    if kind == "object_recognition":
        return "What shape is shown in the picture?", f"The picture shows {_article(shape)} {shape}.", shape
    raise MfHarnessError(f"unknown question kind {kind!r}; one of {', '.join(KINDS)}")


def _png(shape: str, color: str, count: int, single: bool, rng: random.Random) -> bytes:
    bg = tuple(rng.randint(238, 255) for _ in range(3))
    im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), bg)
    draw = ImageDraw.Draw(im)
    fill = tuple(min(255, max(0, c + rng.randint(-10, 10))) for c in COLORS[color])
    if single:
        mid = IMAGE_SIZE // 2
        draw_shape(draw, shape, mid + rng.randint(-8, 8), mid + rng.randint(-8, 8), rng.randint(18, 26), fill)
    else:
        for x, y in rng.sample(_CELLS, count):
            draw_shape(draw, shape, x + rng.randint(-4, 4), y + rng.randint(-4, 4), rng.randint(10, 14), fill)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def shapes_rows(seed: int = SEED, per_kind: int = PER_KIND) -> Iterator[dict[str, Any]]:
    """The bundled rows: for each task, ``per_kind`` rows of each kind, kinds interleaved."""
    rng = random.Random(seed)
    for task in TASKS:
        for i in range(per_kind * len(KINDS)):
            kind = KINDS[i % len(KINDS)]
            shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            counting = kind == "counting"
            count = rng.randint(1, len(NUMBER_WORDS)) if counting else 1
            question, context, answer = question_row(kind, shape, color, count)
            image = None if task == "text" else {"bytes": _png(shape, color, count, not counting, rng), "path": None}
            if task == "caption":
                question, context, answer = "", "", caption(shape, color, count)
            elif task == "image":
                context = ""
            yield {"sample_id": f"shapes-{task}-{i:03d}", "task": task, "kind": "caption" if task == "caption" else kind,
                   "question": question, "context": context, "answer": answer,
                   "captions": references(shape, color, count) if task == "caption" else [],
                   "instruction": CAPTION_INSTRUCTION if task == "caption" else QA_INSTRUCTION,
                   "shape": shape, "color": color, "count": count, "image": image}


def _features():
    import datasets

    s = datasets.Value("string")
    return datasets.Features({"sample_id": s, "task": s, "kind": s, "question": s, "context": s, "answer": s,
                              "captions": datasets.List(s), "instruction": s, "shape": s, "color": s,
                              "count": datasets.Value("int64"), "image": datasets.Image()})


def bundled_path() -> Path:
    return Path(__file__).resolve().parent / "data" / "shapes_capability.parquet"


def write_bundled(path: str | os.PathLike | None = None, seed: int = SEED, per_kind: int = PER_KIND) -> Path:
    import datasets

    p = Path(path) if path else bundled_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(list(shapes_rows(seed, per_kind)), features=_features()).to_parquet(str(p))
    return p


# ---------------------------------------------------------------------------- lmms-eval hooks

_COLUMNS = ("sample_id", "task", "question", "context", "answer", "captions", "instruction", "image")


def _only(task: str):
    def fn(dataset):
        require_columns(dataset, _COLUMNS, "mf_shapes")
        out = dataset.filter(lambda t: t == task, input_columns="task")
        if len(out) == 0:
            raise MfHarnessError(f"the mf_shapes data has no {task!r} rows")
        return out

    fn.__name__ = fn.__qualname__ = f"process_docs_{task}"
    fn.__doc__ = f"The ``{task}`` rows of the bundled set."
    return fn


process_docs_image = _only("image")
process_docs_text = _only("text")
process_docs_agree = _only("agree")
process_docs_caption = _only("caption")


def doc_to_visual(doc: Mapping[str, Any]) -> list:
    if doc["task"] == "text":
        return []
    if doc.get("image") is None:
        raise MfHarnessError(f"mf_shapes doc {doc.get('sample_id')} ({doc['task']}) has no image")
    return [to_rgb(doc["image"], f"mf_shapes doc {doc.get('sample_id')}")]


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    body = user_text(doc["task"], doc["question"], doc["context"], doc["instruction"])
    return f"{kw.get('pre_prompt', '')}{body}{kw.get('post_prompt', '')}"


def doc_to_target(doc: Mapping[str, Any]) -> str:
    return doc["answer"]


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """``exact_match``: normalised prediction == normalised answer."""
    pred = results[0] if results else ""
    return {"exact_match": float(normalize_answer(pred) == normalize_answer(doc["answer"]))}


def process_results_caption(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, dict]:
    pred = results[0] if results else ""
    return {"shapes_CIDEr": {"image_id": doc["sample_id"], "pred": str(pred),
                             "answer": [str(c) for c in doc["captions"]]}}


def per_image_cider(items: Sequence[Mapping[str, Any]]) -> list[float]:
    """pycocoevalcap's per-image CIDEr of each item (PTB-tokenised once per split, as the Flickr30k task does:
    `mf_harness.tasks.capability.flickr.tokenized_split`); their mean is the corpus CIDEr."""
    if not items:
        return []
    from pycocoevalcap.cider.cider import Cider

    from mf_harness.tasks.capability.flickr import tokenized_split

    memo = tokenized_split(items)
    if "cider_per_image" not in memo:
        _, scores = Cider().compute_score(memo["gts"], memo["res"])
        memo["cider_per_image"] = [float(x) for x in scores]  # in item order (gts keys inserted 0..n-1)
    return list(memo["cider_per_image"])


def aggregate_cider(items: Sequence[Mapping[str, Any]]) -> float:
    """lmms-eval aggregation: corpus CIDEr (pycocoevalcap), the mean of `per_image_cider`."""
    scores = per_image_cider(items)
    return sum(scores) / len(scores) if scores else math.nan


aggregate_cider.per_sample = per_image_cider  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mf_harness.tasks.capability.shapes",
                                description="Write the bundled mf_shapes capability set.")
    p.add_argument("--out", type=Path, default=None, help="parquet to write (default: the bundled file)")
    args = p.parse_args(argv)
    out = write_bundled(args.out)
    print(f"wrote {out} ({out.stat().st_size} bytes, {PER_KIND * len(KINDS) * len(TASKS)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
