"""Synthetic modality-conflict training data for the embedded model.

Rows have the ``mfr`` schema (MC2's fields ``image_id``, ``task``, ``question``,
``answer_vision``, ``answer_text``, ``context``, plus ``sample_id``, the synonym
columns and a PIL ``image``) and the same look as the bundled eval set
(`mf_harness.tasks.mfr.mfr_data`: 84x84 drawings of one shape, or one to four shapes for
counting, in one of ten colours), with wider jitter. A training row also carries
what the trainer needs: the direction to follow (``follow``), the instruction
sentence (the eval default ``paper`` for half of the rows), the target ``answer``,
and what is drawn (``image_color``, ``image_count``, ``image_shape``; `stated` gives
what either modality says).

What is held out of training (checked by ``tests/test_train.py``):

* **colour conflicts**: no training row has an ordered (image colour, text colour)
  pair in `HELDOUT_COLOR_PAIRS`, which contains every pair of the bundled eval set
  (55 of the 90 ordered pairs); training conflicts use the other 35;
* **items**: eval images come from `mfr_data`'s generator and seed; training images
  are fresh draws (``counting`` and ``object_recognition`` have only 12 ordered answer
  pairs each, all seen in training, on other images);
* **instruction phrasings**: `HELDOUT_INSTRUCTIONS` (the registered ``focus`` pair
  and one pair of our own) never occur in training; the eval default ``paper`` does.

Everything is a pure function of the seed: `training_rows(seed, n)` gives the same
rows (and the same image bytes) on every run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from mf_harness.tasks.capability import shapes
from mf_harness.tasks.mfr.mfr import FORMAT_INSTRUCTION, INSTRUCTIONS, render_prompt
from mf_harness.tasks.mfr.mfr_data import COLORS, IMAGE_SIZE, NUMBER_WORDS, PLURAL, SHAPES
from mf_harness.tasks.mfr.mfr_data import draw_shape as _draw  # the eval set's geometry
from mf_harness.tasks.mfr.mfr_data import mfr_row

__all__ = [
    "KINDS",
    "TRAIN_INSTRUCTIONS",
    "HELDOUT_INSTRUCTIONS",
    "HELDOUT_COLOR_PAIRS",
    "TRAIN_COLOR_PAIRS",
    "Mix",
    "make_row",
    "training_rows",
    "heldout_rows",
    "user_text",
    "answer_words",
    "stated",
    "capability_row",
    "capability_rows",
    "CAPABILITY_TASKS",
    "TRAIN_CAPTION_INSTRUCTIONS",
]

KINDS: tuple[str, ...] = ("color", "counting", "object_recognition")
FOLLOW = ("text", "vision")

# Instruction phrasings seen in training: the eval default ("paper", half of the rows), MC2's
# and the paper's "prioritize" pair, and one of our own.
TRAIN_INSTRUCTIONS: Mapping[str, tuple[str, ...]] = {
    "text": (
        INSTRUCTIONS["paper"]["text"],
        INSTRUCTIONS["mc2"]["text"],
        INSTRUCTIONS["prioritize"]["text"],
        "Answer from the text context, not from the image.",
    ),
    "vision": (
        INSTRUCTIONS["paper"]["vision"],
        INSTRUCTIONS["mc2"]["vision"],
        INSTRUCTIONS["prioritize"]["vision"],
        "Answer from the image, not from the text context.",
    ),
}
# Never in training: the registered "focus" pair (evaluate with MF_HARNESS_INSTRUCTION=focus)
# and one pair of our own.
HELDOUT_INSTRUCTIONS: Mapping[str, tuple[str, ...]] = {
    "text": (INSTRUCTIONS["focus"]["text"], "Go by what the text says, whatever the image looks like."),
    "vision": (INSTRUCTIONS["focus"]["vision"], "Go by what the image shows, whatever the text says."),
}

# Every (image colour, text colour) pair of the bundled eval set (tasks/mfr/data/mfr_synthetic.parquet).
_HELDOUT_PAIRS_TEXT = """
black:blue black:brown black:gray black:orange black:pink blue:brown blue:gray blue:orange blue:pink blue:red
blue:yellow brown:gray brown:green brown:orange brown:pink brown:red gray:black gray:blue gray:brown gray:green
gray:orange gray:purple gray:yellow green:blue green:gray green:purple green:red green:yellow orange:black
orange:blue orange:brown orange:gray orange:green orange:pink orange:yellow pink:blue pink:green pink:orange
pink:purple purple:blue purple:green purple:pink purple:red purple:yellow red:brown red:green red:orange
red:purple red:yellow yellow:black yellow:brown yellow:orange yellow:pink yellow:purple yellow:red
"""
HELDOUT_COLOR_PAIRS: frozenset[tuple[str, str]] = frozenset(
    tuple(p.split(":")) for p in _HELDOUT_PAIRS_TEXT.split()  # type: ignore[misc]
)
TRAIN_COLOR_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (a, b) for a in COLORS for b in COLORS if a != b and (a, b) not in HELDOUT_COLOR_PAIRS
)

# Templates: the eval set's own (first in each list) plus a few more.
_COLOR_CONTEXTS = (
    "The {shape} in the picture is {c}.",
    "{A} {c} {shape} is drawn on a light background.",
    "This image shows a single {c} {shape}.",
    "The picture contains {a} {c} {shape}.",
    "In the image, the {shape} is {c}.",
)
_COLOR_QUESTIONS = ("What color is the {shape}?", "What colour is the {shape}?", "Which color is the {shape}?")
_COUNT_CONTEXTS = (
    "There {be} {n} {noun} in the picture.",
    "The picture shows exactly {n} {color} {noun}.",
    "You can see {n} {color} {noun} here.",
    "The image has {n} {noun}.",
)
_COUNT_QUESTIONS = ("How many {plural} are there?", "How many {plural} are in the picture?",
                    "What is the number of {plural}?")
_OBJECT_CONTEXTS = (
    "The picture shows {a} {s}.",
    "{A} {color} {s} is drawn in the middle of the picture.",
    "The shape in the image is {a} {s}.",
    "There is {a} {s} in the picture.",
)
_OBJECT_QUESTIONS = ("What shape is shown in the picture?", "Which shape is in the picture?", "What shape is drawn?")

_CELLS = ((21, 21), (63, 21), (21, 63), (63, 63))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def answer_words() -> dict[str, tuple[str, ...]]:
    """Every answer word per kind (what the tokenizer must keep whole)."""
    return {"color": tuple(COLORS), "counting": tuple(NUMBER_WORDS), "object_recognition": tuple(SHAPES)}


# ---------------------------------------------------------------------------- images


def _image(shape: str, color: str, count: int | None, rng: random.Random) -> Image.Image:
    bg = tuple(rng.randint(232, 255) for _ in range(3))
    fill = tuple(min(255, max(0, c + rng.randint(-16, 16))) for c in COLORS[color])
    im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), bg)
    draw = ImageDraw.Draw(im)
    if count is None:
        mid = IMAGE_SIZE // 2
        _draw(draw, shape, mid + rng.randint(-10, 10), mid + rng.randint(-10, 10), rng.randint(16, 28), fill)
    else:
        for x, y in rng.sample(_CELLS, count):
            _draw(draw, shape, x + rng.randint(-5, 5), y + rng.randint(-5, 5), rng.randint(9, 15), fill)
    return im


# ---------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Mix:
    """Shares of the training rows. The rest of ``conflict`` agree (context matches image)."""

    conflict: float = 0.9
    kinds: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # color, counting, object_recognition
    # share of no-conflict capability rows (`capability_row`); 0 leaves the stream exactly as before
    capability: float = 0.0


def make_row(
    rng: random.Random,
    *,
    kind: str,
    follow: str,
    conflict: bool = True,
    instructions: Mapping[str, Sequence[str]] = TRAIN_INSTRUCTIONS,
    color_pairs: Sequence[tuple[str, str]] = TRAIN_COLOR_PAIRS,
    sample_id: str = "",
) -> dict[str, Any]:
    """One row: the mfr schema plus ``follow``, ``instruction`` and the target ``answer``."""
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    count = None
    if kind == "color":
        if conflict:
            color, text = rng.choice(list(color_pairs))
        else:
            text = color
        vision = color
        ctx = rng.choice(_COLOR_CONTEXTS).format(shape=shape, c=text, a=_article(text), A=_article(text).capitalize())
        question = rng.choice(_COLOR_QUESTIONS).format(shape=shape)
    elif kind == "counting":
        count = rng.randint(1, len(NUMBER_WORDS))
        vision = NUMBER_WORDS[count - 1]
        text = rng.choice([w for w in NUMBER_WORDS if w != vision]) if conflict else vision
        noun = shape if text == "one" else PLURAL[shape]
        ctx = rng.choice(_COUNT_CONTEXTS).format(be="is" if text == "one" else "are", n=text, color=color, noun=noun)
        question = rng.choice(_COUNT_QUESTIONS).format(plural=PLURAL[shape])
    elif kind == "object_recognition":
        vision = shape
        text = rng.choice([s for s in SHAPES if s != shape]) if conflict else shape
        ctx = rng.choice(_OBJECT_CONTEXTS).format(s=text, a=_article(text), A=_article(color).capitalize(), color=color)
        question = rng.choice(_OBJECT_QUESTIONS)
    else:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    image = _image(shape, color, count, rng)
    options = list(instructions[follow])
    # the eval default ("paper") is half of the training instructions when it is among the options
    weights = [len(options) - 1 if o == INSTRUCTIONS["paper"][follow] else 1 for o in options]
    instruction = rng.choices(options, weights=weights)[0]
    return {
        **mfr_row(sample_id, sample_id, kind, question, vision, text, ctx, image),
        "follow": follow,
        "instruction": instruction,
        "format_instruction": FORMAT_INSTRUCTION,
        "answer": vision if follow == "vision" else text,
        "conflict": conflict,
        # what is drawn (for auxiliary training signals and checks)
        "image_color": color,
        "image_shape": shape,
        "image_count": count or 1,
    }


def _pick(rng: random.Random, weights: Sequence[float], items: Sequence[str]) -> str:
    return rng.choices(list(items), weights=list(weights))[0]


def training_rows(seed: int, n: int, mix: Mix = Mix(), start: int = 0) -> Iterator[dict[str, Any]]:
    """Rows ``start .. start+n-1`` of the training stream of ``seed``; row i depends only on (seed, i)."""
    for i in range(start, start + n):
        rng = random.Random(f"mf-harness-train:{seed}:{i}")
        if mix.capability and random.Random(f"mf-harness-capability:{seed}:{i}").random() < mix.capability:
            yield capability_row(rng, task=rng.choice(CAPABILITY_TASKS), kind=_pick(rng, mix.kinds, KINDS),
                                 sample_id=f"train-{seed}-{i:07d}")
            continue
        kind = _pick(rng, mix.kinds, KINDS)
        follow = rng.choice(FOLLOW)
        conflict = rng.random() < mix.conflict
        yield make_row(rng, kind=kind, follow=follow, conflict=conflict, sample_id=f"train-{seed}-{i:07d}")


CAPABILITY_TASKS = shapes.TASKS  # image only, text only, agreeing, caption
# caption requests in training: the eval one (`shapes.CAPTION_INSTRUCTION`, half of the rows) and two more
TRAIN_CAPTION_INSTRUCTIONS = (shapes.CAPTION_INSTRUCTION, "Write a short caption for the image.",
                              "What does the picture show? Answer in a few words.")


def capability_row(rng: random.Random, *, task: str, kind: str, sample_id: str = "") -> dict[str, Any]:
    """A row with nothing to arbitrate, as the ``mf_shapes_<task>`` tasks ask it (`shapes.user_text`).

    ``image``: the question and the image, no context; ``text``: context and question, no image;
    ``agree``: both, agreeing; ``caption``: the image and a caption request (answer: `shapes.caption`).
    No modality instruction: ``instruction`` is the task's format line or caption request and
    ``follow`` is None. The drawing fields (``image_color`` ...) are set as in `make_row`."""
    row = make_row(rng, kind=kind, follow="vision", conflict=False, sample_id=sample_id)
    row.update(capability=task, follow=None, instruction=shapes.QA_INSTRUCTION, format_instruction="")
    if task == "image":
        row["context"] = ""
    elif task == "text":
        row["image"] = None
    elif task == "caption":
        weights = [len(TRAIN_CAPTION_INSTRUCTIONS) - 1] + [1] * (len(TRAIN_CAPTION_INSTRUCTIONS) - 1)
        row.update(question="", context="", instruction=rng.choices(TRAIN_CAPTION_INSTRUCTIONS, weights=weights)[0],
                   answer=shapes.caption(row["image_shape"], row["image_color"], row["image_count"]))
    elif task != "agree":
        raise ValueError(f"unknown capability task {task!r}; known: {', '.join(CAPABILITY_TASKS)}")
    return row


def capability_rows(seed: int, per_task: int) -> list[dict[str, Any]]:
    """Held-out capability rows (probe): ``per_task`` per task, kinds cycled."""
    out = []
    for task in CAPABILITY_TASKS:
        for i in range(per_task):
            rng = random.Random(f"mf-harness-capability-probe:{seed}:{task}:{i}")
            out.append(capability_row(rng, task=task, kind=KINDS[i % len(KINDS)], sample_id=f"cap-{seed}-{task}-{i}"))
    return out


def heldout_rows(seed: int, n: int, *, follow: str, phrasing: str = "train") -> list[dict[str, Any]]:
    """Conflict rows outside training: held-out colour pairs, kinds cycled.

    ``phrasing``: ``"train"`` (the training phrasings), ``"heldout"`` (`HELDOUT_INSTRUCTIONS`),
    or a registered name of `mf_harness.tasks.mfr.mfr.INSTRUCTIONS`.
    """
    if phrasing == "train":
        instructions = TRAIN_INSTRUCTIONS
    elif phrasing == "heldout":
        instructions = HELDOUT_INSTRUCTIONS
    else:
        instructions = {f: (INSTRUCTIONS[phrasing][f],) for f in FOLLOW}
    pairs = sorted(HELDOUT_COLOR_PAIRS)
    out = []
    for i in range(n):
        rng = random.Random(f"mf-harness-heldout:{seed}:{follow}:{i}")
        out.append(make_row(rng, kind=KINDS[i % len(KINDS)], follow=follow, instructions=instructions,
                            color_pairs=pairs, sample_id=f"heldout-{seed}-{i:05d}"))
    return out


def stated(row: Mapping[str, Any], follow: str | None = None) -> dict[str, str]:
    """What the followed modality says about the drawing: {"color"|"counting"|"object_recognition": word}.

    The image states all three (colour, count, shape); the text states the words its context contains.
    """
    follow = follow or row["follow"]
    if follow == "vision":
        return {"color": row["image_color"], "counting": NUMBER_WORDS[row["image_count"] - 1],
                "object_recognition": row["image_shape"]}
    words = row["context"].lower().replace(".", " ").replace(",", " ").split()
    out = {}
    for kind, vocab in answer_words().items():
        forms = {w: w for w in vocab}
        if kind == "object_recognition":
            forms.update({PLURAL[w]: w for w in vocab})
        hits = [forms[w] for w in words if w in forms]
        if hits:
            out[kind] = hits[0]
    return out


def user_text(row: Mapping[str, Any]) -> str:
    """The prompt text the ``mfr`` task (or, for a capability row, the ``mf_shapes`` task) gives the model."""
    if row.get("capability"):
        return shapes.user_text(row["capability"], row["question"], row["context"], row["instruction"])
    return render_prompt(row["context"], row["instruction"], row["question"], row.get("format_instruction",
                                                                                      FORMAT_INSTRUCTION))
