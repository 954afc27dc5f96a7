"""The bundled offline fixtures: a few rows per benchmark, in each hub dataset's schema.

``python -m mf_harness.tasks.capability.fixtures`` rewrites ``tasks/capability/data/*.parquet``
(deterministic: images are PIL drawings with PIL's built-in bitmap font, no
randomness). The ``*_fixture`` tasks and the ``mf_capability`` group read them, so
every capability task runs with no download. The rows are ours (not copied from
the benchmarks) and are chosen to exercise the scorers: TextVQA answers with
numbers, articles, punctuation and contractions; MMLU questions over four subjects;
IFEval prompts over several instruction kinds.

Schemas (as on the hub):

* TextVQA (lmms-lab-encoder/textvqa, split ``validation``): ``image_id``, ``question_id``
  (int32), ``question``, ``question_tokens``, ``image``, ``image_width``, ``image_height``,
  ``flickr_original_url``, ``flickr_300k_url``, ``answers`` (10 strings),
  ``image_classes``, ``set_name``, ``ocr_tokens``.
* Flickr30k (lmms-lab-encoder/flickr30k, split ``test``): ``image``, ``caption``
  (5 strings), ``sentids``, ``img_id``, ``filename``.
* MMLU (hails/mmlu_no_train ``all``, split ``test``): ``question``, ``subject``,
  ``choices`` (4 strings), ``answer`` (ClassLabel A-D).
* IFEval (google/IFEval, split ``train``): ``key``, ``prompt``, ``instruction_id_list``,
  ``kwargs`` (one struct per instruction, every argument name of the instruction
  registry present, unused ones null).
"""

from __future__ import annotations

import argparse
import io
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = ["FIXTURES", "fixture_dir", "fixture_path", "build", "write_all", "main"]

# name -> split held in the file
FIXTURES = {
    "textvqa_val_fixture": "validation",
    "flickr30k_test_fixture": "test",
    "mmlu_fixture": "test",
    "ifeval_fixture": "train",
}


def fixture_dir() -> Path:
    return Path(__file__).resolve().parent / "data"


def fixture_path(name: str) -> Path:
    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r}; one of {', '.join(FIXTURES)}")
    return fixture_dir() / f"{name}.parquet"


# ---------------------------------------------------------------------------- drawing


def _png(im: Image.Image) -> dict[str, Any]:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _text_image(text: str, fg: str, bg: str, size: tuple[int, int] = (160, 96), scale: int = 3,
                extra=None) -> Image.Image:
    """``text`` in PIL's bitmap font, enlarged ``scale`` times (nearest), centred on ``bg``."""
    font = ImageFont.load_default_imagefont()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
    small = Image.new("RGB", (x1 - x0 + 2, y1 - y0 + 2), bg)
    ImageDraw.Draw(small).text((1 - x0, 1 - y0), text, fill=fg, font=font)
    big = small.resize((small.width * scale, small.height * scale), Image.NEAREST)
    im = Image.new("RGB", size, bg)
    im.paste(big, ((size[0] - big.width) // 2, (size[1] - big.height) // 2))
    if extra is not None:
        extra(ImageDraw.Draw(im))
    return im


def _scene(shapes: Sequence[tuple[str, str, tuple[int, int, int, int]]], bg: str = "white",
           size: tuple[int, int] = (128, 96)) -> Image.Image:
    im = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(im)
    for kind, colour, box in shapes:
        {"circle": draw.ellipse, "square": draw.rectangle, "bar": draw.rectangle}[kind](box, fill=colour)
    return im


# ---------------------------------------------------------------------------- TextVQA

_TEXTVQA = [
    # (image text, fg, bg, question, ten answers): numbers, articles, punctuation, contractions
    ("42", "white", "navy", "what number is on the sign?",
     ["42"] * 7 + ["forty two", "42.", "the 42"]),
    ("STOP", "white", "red", "what word is on the red sign?",
     ["stop"] * 5 + ["STOP", "Stop.", "stop sign", "a stop", "stop!"]),
    ("DONT", "black", "yellow", "what does the shirt say?",
     ["dont"] * 4 + ["don't"] * 4 + ["do not", "Don't."]),
    ("ACME", "black", "white", "what brand is shown?",
     ["acme"] * 9 + ["acme co"]),
    ("3:15", "lime", "black", "what time is shown?",
     ["3:15"] * 6 + ["315", "3.15", "quarter past three", "3:15 pm"]),
    ("", "black", "white", "how many circles are there?",
     ["2"] * 5 + ["two"] * 4 + ["2 circles"]),
]


def textvqa_rows() -> list[dict[str, Any]]:
    rows = []
    for i, (text, fg, bg, question, answers) in enumerate(_TEXTVQA):
        if text:
            im = _text_image(text, fg, bg)
        else:
            im = _scene([("circle", "red", (16, 28, 56, 68)), ("circle", "blue", (72, 28, 112, 68))])
        rows.append({
            "image_id": f"fx{i:06d}",
            "question_id": 90000 + i,
            "question": question,
            "question_tokens": question.rstrip("?").split() + ["?"],
            "image": _png(im),
            "image_width": im.width,
            "image_height": im.height,
            "flickr_original_url": "",
            "flickr_300k_url": "",
            "answers": answers,
            "image_classes": ["Sign"] if text else ["Circle"],
            "set_name": "val",
            "ocr_tokens": [text.lower()] if text else [],
        })
    return rows


def _textvqa_features():
    import datasets

    s, ss, i32 = datasets.Value("string"), datasets.List(datasets.Value("string")), datasets.Value("int32")
    return datasets.Features({
        "image_id": s, "question_id": i32, "question": s, "question_tokens": ss, "image": datasets.Image(),
        "image_width": i32, "image_height": i32, "flickr_original_url": s, "flickr_300k_url": s, "answers": ss,
        "image_classes": ss, "set_name": s, "ocr_tokens": ss,
    })


# ---------------------------------------------------------------------------- Flickr30k

_FLICKR = [
    ([("circle", "red", (20, 20, 60, 60)), ("square", "blue", (70, 40, 110, 80))],
     ["A red circle next to a blue square.", "A red ball and a blue box on a white background.",
      "Two shapes: a red circle and a blue square.", "A circle and a square side by side.",
      "A red round shape left of a blue square shape."]),
    ([("circle", "green", (44, 28, 84, 68))],
     ["A green circle in the middle of the picture.", "One green ball on white.",
      "A single green circle.", "A green dot on a white background.", "A round green shape in the centre."]),
    ([("bar", "black", (10, 70, 118, 80)), ("circle", "orange", (50, 20, 78, 48))],
     ["An orange circle above a black line.", "An orange sun over a black horizon.",
      "A black bar below an orange ball.", "A ball floating above a long black stripe.",
      "An orange circle and a black bar."]),
    ([("square", "purple", (14, 14, 54, 54)), ("square", "purple", (74, 42, 114, 82))],
     ["Two purple squares on a white background.", "A pair of purple boxes.",
      "Two violet squares placed diagonally.", "Two identical purple squares.",
      "Purple squares at the top left and bottom right."]),
    ([("circle", "yellow", (10, 10, 50, 50)), ("circle", "yellow", (44, 30, 84, 70)),
      ("circle", "yellow", (78, 50, 118, 90))],
     ["Three yellow circles in a diagonal row.", "Three yellow balls overlapping.",
      "A diagonal line of yellow circles.", "Three yellow dots going down to the right.",
      "Yellow circles arranged from top left to bottom right."]),
]


def flickr_rows() -> list[dict[str, Any]]:
    rows = []
    for i, (shapes, captions) in enumerate(_FLICKR):
        img_id = str(9000001 + i)
        rows.append({
            "image": _png(_scene(shapes)),
            "caption": captions,
            "sentids": [str((9000001 + i) * 5 + j) for j in range(5)],
            "img_id": img_id,
            "filename": f"{img_id}.jpg",
        })
    return rows


def _flickr_features():
    import datasets

    s, ss = datasets.Value("string"), datasets.List(datasets.Value("string"))
    return datasets.Features({"image": datasets.Image(), "caption": ss, "sentids": ss, "img_id": s, "filename": s})


# ---------------------------------------------------------------------------- MMLU

_MMLU = [
    ("abstract_algebra", "What is the order of the element 3 in the additive group Z_7?", ["1", "3", "6", "7"], 3),
    ("abstract_algebra", "Which of the following rings is a field?", ["Z_4", "Z_6", "Z_5", "Z_8"], 2),
    ("astronomy", "Which planet is closest to the Sun?", ["Venus", "Mercury", "Earth", "Mars"], 1),
    ("astronomy", "What is the most abundant element in the Sun?", ["Helium", "Hydrogen", "Iron", "Oxygen"], 1),
    ("high_school_geography", "Which river flows through Cairo?", ["Nile", "Amazon", "Danube", "Ganges"], 0),
    ("high_school_geography", "Which is the largest ocean on Earth?", ["Atlantic", "Indian", "Arctic", "Pacific"], 3),
    ("world_religions", "In which city is the Kaaba located?", ["Medina", "Jerusalem", "Mecca", "Cairo"], 2),
    ("world_religions", "Which text is central to Confucianism?",
     ["The Analects", "The Vedas", "The Torah", "The Tripitaka"], 0),
]


def mmlu_rows() -> list[dict[str, Any]]:
    return [{"question": q, "subject": s, "choices": c, "answer": a} for s, q, c, a in _MMLU]


def _mmlu_features():
    import datasets

    return datasets.Features({
        "question": datasets.Value("string"), "subject": datasets.Value("string"),
        "choices": datasets.List(datasets.Value("string")), "answer": datasets.ClassLabel(names=["A", "B", "C", "D"]),
    })


# ---------------------------------------------------------------------------- IFEval

_IFEVAL = [
    ("Write a short poem about the sea. Do not use any commas in your response.",
     [("punctuation:no_comma", {})]),
    ("Describe a sunrise in at least 40 words. Your entire response should be in English, and in all lowercase "
     "letters. No capital letters are allowed.",
     [("length_constraints:number_words", {"relation": "at least", "num_words": 40}),
      ("change_case:english_lowercase", {})]),
    ("List three benefits of regular exercise. Your answer must contain exactly 3 bullet points. Use the markdown "
     "bullet points such as:\n* This is point 1.\n* This is point 2",
     [("detectable_format:number_bullet_lists", {"num_bullets": 3})]),
    ("Suggest a title for a blog post about growing tomatoes. Your answer must contain a title, wrapped in double "
     "angular brackets, such as <<poem of joy>>. Finish your response with this exact phrase "
     "Is there anything else I can help with?. No other words should follow this phrase.",
     [("detectable_format:title", {}),
      ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"})]),
    ("Explain to a child how plants make food. Include the keywords sunlight and leaf in the response. At the end "
     "of your response, please explicitly add a postscript starting with P.S.",
     [("keywords:existence", {"keywords": ["sunlight", "leaf"]}),
      ("detectable_content:postscript", {"postscript_marker": "P.S."})]),
    ("Write a short note inviting a friend to dinner. Your ENTIRE response should be in French language, no other "
     "language is allowed.",
     [("language:response_language", {"language": "fr"})]),
]


def _ifeval_kwarg_names() -> list[str]:
    """Every argument name of every instruction's ``build_description`` in lm-eval's registry."""
    from lm_eval.tasks.ifeval import instructions_registry

    names: list[str] = []
    for cls in instructions_registry.INSTRUCTION_DICT.values():
        for p in inspect.signature(cls.build_description).parameters:
            if p not in ("self", "kwargs") and p not in names:
                names.append(p)
    return sorted(names)


def ifeval_rows() -> list[dict[str, Any]]:
    names = _ifeval_kwarg_names()
    rows = []
    for i, (prompt, instructions) in enumerate(_IFEVAL):
        kwargs = []
        for _, kw in instructions:
            unknown = set(kw) - set(names)
            if unknown:
                raise ValueError(f"IFEval fixture row {i}: {sorted(unknown)} are not registry arguments")
            kwargs.append({n: kw.get(n) for n in names})
        rows.append({"key": 9000 + i, "prompt": prompt, "instruction_id_list": [n for n, _ in instructions],
                     "kwargs": kwargs})
    return rows


def _ifeval_features():
    import datasets

    list_args = {"keywords", "forbidden_words"}
    int_args = {"num_highlights", "num_words", "num_placeholders", "num_bullets", "num_sections", "capital_frequency",
                "num_paragraphs", "let_frequency", "frequency", "num_sentences", "nth_paragraph"}
    struct = {}
    for n in _ifeval_kwarg_names():
        if n in list_args:
            struct[n] = datasets.List(datasets.Value("string"))
        elif n in int_args:
            struct[n] = datasets.Value("int64")
        else:
            struct[n] = datasets.Value("string")
    return datasets.Features({
        "key": datasets.Value("int64"), "prompt": datasets.Value("string"),
        "instruction_id_list": datasets.List(datasets.Value("string")), "kwargs": datasets.List(struct),
    })


# ---------------------------------------------------------------------------- writing

_BUILDERS = {
    "textvqa_val_fixture": (textvqa_rows, _textvqa_features),
    "flickr30k_test_fixture": (flickr_rows, _flickr_features),
    "mmlu_fixture": (mmlu_rows, _mmlu_features),
    "ifeval_fixture": (ifeval_rows, _ifeval_features),
}


def build(name: str):
    """One fixture as a `datasets.Dataset` in the hub schema."""
    import datasets

    rows, features = _BUILDERS[name]
    return datasets.Dataset.from_list(rows(), features=features())


def write_all(out_dir: str | Path | None = None) -> list[Path]:
    out = Path(out_dir) if out_dir is not None else fixture_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in FIXTURES:
        path = out / f"{name}.parquet"
        build(name).to_parquet(str(path))
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mf_harness.tasks.capability.fixtures",
                                     description="Write the bundled capability fixtures (parquet).")
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default: tasks/capability/data)")
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
