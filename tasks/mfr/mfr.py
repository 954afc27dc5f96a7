"""The modality-following ratio (MFR) and the lmms-eval hooks of the ``mfr`` tasks.

A modality-following sample is (image, text context, instruction, question): the
context contradicts the image, and the instruction names the modality to follow.
The instruction-compliant answer A_c is the text's answer (``answer_text``) when
the task follows the text and the image's (``answer_vision``) when it follows the
image; the other one is the competing answer A_o. Each side has an entity
dictionary E of surface forms (the answer plus its synonym column).

    MFR = (1/N) * sum_i 1[pred_i follows E_c and not E_o]

with ``competing`` (follows E_o and not E_c) and ``neither`` (the rest: no side, or
both) reported beside it, so that mfr + competing + neither = 1. ``mfr_<kind>`` is
MFR over the docs of one MC2 task kind.

Matching. A prediction and every surface form are normalised the same way:
lmms-eval's EvalAI answer processor (lower case, articles dropped, number words
zero..ten to digits, contractions), extended here with number words up to twenty
plus the tens and "hundred", and with every punctuation mark (markdown ``**``,
``:``, ``-``, quotes, ...) read as a space, except a decimal point and an in-word
apostrophe. A side is followed when one of its forms occurs in the normalised
prediction as a whole-word phrase (equality is the whole-prediction case), unless
every such occurrence lies inside a longer occurrence of a form of the other side
("dark blue" answers "dark blue", not "blue"). Negation is not parsed: "not red,
blue" follows both sides and counts as ``neither``.

Prompt (``doc_to_text``), after MC2 and the Instruction Anchor paper::

    {pre_prompt}Text context: {context}\\n{instruction} {question}\\n{format_instruction}{post_prompt}

``instruction`` is the modality-specifying sentence, ``format_instruction`` the
output-format constraint "Answer the question with a single word.". Both are doc
fields and occur verbatim in the prompt, so a model wrapper can locate their tokens.
``pre_prompt`` / ``post_prompt`` come from ``lmms_eval_specific_kwargs`` (default
empty; set them per model name in a YAML).

Instruction phrasing (`INSTRUCTIONS`): ``paper`` (default), ``mc2``, ``prioritize``,
``focus``, or custom text. lmms-eval hands ``process_docs`` only the dataset (never
``lmms_eval_specific_kwargs``), and the instruction must be fixed in the doc there,
so the phrasing is chosen where ``process_docs`` can see it:

1. ``MF_HARNESS_INSTRUCTION_TEXT`` / ``MF_HARNESS_INSTRUCTION_VISION``: a name or custom
   text for one direction;
2. ``MF_HARNESS_INSTRUCTION``: a name (each direction gets its own sentence) or custom
   text (used verbatim for every direction);
3. the YAML's ``process_docs``: ``process_docs_text`` / ``process_docs_vision`` use
   ``paper``; ``process_docs_<follow>_<name>`` (e.g. ``process_docs_text_mc2``) pin a
   phrasing.

A value without whitespace must be a registered name; one with whitespace is custom
text.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from loguru import logger

from mf_harness.errors import DataError, MfHarnessError
from mf_harness.tasks.mfr.mfr_data import MC2_TASKS, SYNONYM_COLUMNS, load_coco_image

__all__ = [
    "FOLLOW",
    "INSTRUCTIONS",
    "DEFAULT_INSTRUCTION",
    "FORMAT_INSTRUCTION",
    "INSTRUCTION_ENV",
    "resolve_instruction",
    "render_prompt",
    "normalize_answer",
    "match_sides",
    "classify",
    "process_docs",
    "process_docs_text",
    "process_docs_vision",
    "doc_to_visual",
    "doc_to_text",
    "doc_to_target",
    "process_results",
    "aggregate_kind_mean",
]

FOLLOW: tuple[str, ...] = ("text", "vision")

# name -> {follow: sentence}. "paper" text and the "prioritize"/"focus" text sentences
# are the Instruction Anchor paper's (we add the final period to "prioritize"); "mc2"
# is MC2's pair; the other vision sentences are ours, mirroring the text ones.
INSTRUCTIONS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "paper": MappingProxyType(
            {
                "text": "You should follow the textual context rather than the visual content.",
                "vision": "You should follow the visual content rather than the textual context.",
            }
        ),
        "mc2": MappingProxyType(
            {
                "text": "In case there is an inconsistency between the Text Context and the input image content, "
                "you must rely on the text context rather than the input image content.",
                "vision": "In case there is an inconsistency between the text context and the image content, "
                "you should follow the image content rather than the text context.",
            }
        ),
        "prioritize": MappingProxyType(
            {
                "text": "Prioritize the information in the text over any visual elements.",
                "vision": "Prioritize the information in the image over any textual elements.",
            }
        ),
        "focus": MappingProxyType(
            {
                "text": "Focus on the textual context; ignore visual content.",
                "vision": "Focus on the visual content; ignore textual context.",
            }
        ),
    }
)
DEFAULT_INSTRUCTION = "paper"
FORMAT_INSTRUCTION = "Answer the question with a single word."
INSTRUCTION_ENV = "MF_HARNESS_INSTRUCTION"
CUSTOM = "custom"

# ---------------------------------------------------------------------------- instruction and prompt


def _check_follow(follow: str) -> str:
    if follow not in FOLLOW:
        raise MfHarnessError(f"follow must be one of {', '.join(FOLLOW)}; got {follow!r}")
    return follow


def _lookup(value: str, follow: str, source: str) -> tuple[str, str]:
    value = value.strip()
    if value in INSTRUCTIONS:
        return value, INSTRUCTIONS[value][follow]
    if any(ch.isspace() for ch in value):
        return CUSTOM, value
    raise MfHarnessError(
        f"{source}: unknown instruction phrasing {value!r}; valid names: {', '.join(INSTRUCTIONS)} "
        f"(or custom text, which must contain a space)"
    )


def resolve_instruction(
    follow: str, phrasing: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """(name, sentence) of the instruction for ``follow``; the environment overrides ``phrasing``."""
    _check_follow(follow)
    environ = os.environ if environ is None else environ
    for var in (f"{INSTRUCTION_ENV}_{follow.upper()}", INSTRUCTION_ENV):
        value = environ.get(var, "").strip()
        if value:
            name, text = _lookup(value, follow, var)
            if name == CUSTOM and var == INSTRUCTION_ENV:
                logger.warning(
                    f"{var} holds custom text, used verbatim for follow={follow!r}; set "
                    f"{INSTRUCTION_ENV}_TEXT / {INSTRUCTION_ENV}_VISION to give each direction its own"
                )
            return name, text
    return _lookup(phrasing or DEFAULT_INSTRUCTION, follow, "phrasing")


def render_prompt(context: str, instruction: str, question: str, format_instruction: str = FORMAT_INSTRUCTION) -> str:
    """``Text context: {context}\\n{instruction} {question}\\n{format_instruction}``."""
    lines = [f"Text context: {context.strip()}", f"{instruction} {question.strip()}"]
    if format_instruction:
        lines.append(format_instruction)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- normalisation and matching

_EXTRA_NUMBERS: Mapping[str, str] = {
    "eleven": "11",
    "twelve": "12",
    "thirteen": "13",
    "fourteen": "14",
    "fifteen": "15",
    "sixteen": "16",
    "seventeen": "17",
    "eighteen": "18",
    "nineteen": "19",
    "twenty": "20",
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
    "hundred": "100",
}
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PUNCT = re.compile(r"[^\w\s.']|_")
_LOOSE_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")
_EVALAI = None


def _evalai():
    global _EVALAI
    if _EVALAI is None:
        from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

        _EVALAI = EvalAIAnswerProcessor()
    return _EVALAI


def normalize_answer(text: Any) -> str:
    """Normal form used on both predictions and surface forms (see the module docstring)."""
    return "" if text is None else _normalize(str(text))


@functools.lru_cache(maxsize=1 << 16)
def _normalize(s: str) -> str:
    s = s.translate(_QUOTES)
    s = _THOUSANDS.sub("", s)
    s = _PUNCT.sub(" ", s)
    s = _LOOSE_PERIOD.sub(" ", s)
    s = _LOOSE_APOSTROPHE.sub(" ", s)
    s = _evalai()(s)
    return " ".join(_EXTRA_NUMBERS.get(w, w) for w in s.split())


def _spans(tokens: Sequence[str], forms: Iterable[str]) -> list[tuple[int, int]]:
    spans = set()
    for form in forms:
        ft = normalize_answer(form).split()
        n = len(ft)
        if n == 0:
            continue
        for i in range(len(tokens) - n + 1):
            if list(tokens[i : i + n]) == ft:
                spans.add((i, i + n))
    return sorted(spans)


def _has_free_span(mine: list[tuple[int, int]], theirs: list[tuple[int, int]]) -> bool:
    """Some span of mine that no strictly longer span of theirs contains."""
    return any(not any(a <= s and e <= b and (b - a) > (e - s) for a, b in theirs) for s, e in mine)


def match_sides(prediction: Any, compliant: Sequence[str], competing: Sequence[str]) -> tuple[bool, bool]:
    """(follows E_c, follows E_o) for one prediction."""
    tokens = normalize_answer(prediction).split()
    c, o = _spans(tokens, compliant), _spans(tokens, competing)
    return _has_free_span(c, o), _has_free_span(o, c)


def classify(prediction: Any, compliant: Sequence[str], competing: Sequence[str]) -> str:
    """``"compliant"``, ``"competing"``, ``"both"`` or ``"none"``."""
    c, o = match_sides(prediction, compliant, competing)
    return {(True, False): "compliant", (False, True): "competing", (True, True): "both"}.get((c, o), "none")


# ---------------------------------------------------------------------------- lmms-eval hooks

_REQUIRED = ("task", "question", "answer_vision", "answer_text", "context")


def _forms(answer: Any, synonyms: Any) -> list[str]:
    out: list[str] = []
    for form in [answer, *(synonyms or [])]:
        form = str(form).strip() if form is not None else ""
        if form and form not in out:
            out.append(form)
    return out


def process_docs(dataset, follow: str, phrasing: str | None = None):
    """Add the fields of the model-wrapper contract to every doc.

    ``follow``, ``instruction``, ``instruction_name``, ``format_instruction``,
    ``compliant_answers`` (A_c and synonyms), ``competing_answers`` (A_o and
    synonyms), ``mc2_task``, ``sample_id`` (kept if the data has one, else
    ``{image_id}:{task}:{row}``) and ``mfr_kinds`` (the MC2 kinds present in the
    split, which ``process_results`` reports one ``mfr_<kind>`` for).
    """
    _check_follow(follow)
    columns = set(dataset.column_names)
    missing = [c for c in _REQUIRED if c not in columns]
    if "image" not in columns and "image_id" not in columns:
        missing.append("image or image_id")
    if missing:
        raise DataError(f"mfr data lacks column(s) {', '.join(missing)}; it has {', '.join(sorted(columns))}")
    name, instruction = resolve_instruction(follow, phrasing)
    other = "vision" if follow == "text" else "text"

    wanted = [c for c in (*_REQUIRED, "image_id", "sample_id", *SYNONYM_COLUMNS.values()) if c in columns]
    table = dataset.select_columns(wanted).to_dict()  # never decodes the images

    def column(col: str) -> list[Any]:
        return table[col] if col in table else [None] * len(dataset)

    answers = {side: column(f"answer_{side}") for side in FOLLOW}
    synonyms = {side: column(SYNONYM_COLUMNS[side]) for side in FOLLOW}
    kinds = [str(k).strip() for k in table["task"]]
    image_ids = column("image_id")
    compliant = [_forms(a, s) for a, s in zip(answers[follow], synonyms[follow])]
    competing = [_forms(a, s) for a, s in zip(answers[other], synonyms[other])]
    for i, (c, o) in enumerate(zip(compliant, competing)):
        if not c or not o:
            raise DataError(
                f"mfr data row {i} (image_id {image_ids[i]!r}): answer_vision and answer_text must be non-empty"
            )
    if "sample_id" in columns:
        sample_ids = [str(s) for s in table["sample_id"]]
    else:
        sample_ids = [f"{image_id}:{kind}:{i}" for i, (image_id, kind) in enumerate(zip(image_ids, kinds))]
    present = sorted(set(kinds) & set(MC2_TASKS))
    unknown = sorted(set(kinds) - set(MC2_TASKS))
    if unknown:
        logger.warning(f"mfr: task kinds {unknown} are not MC2 kinds: counted in mfr, without a per-kind metric")
    clashes = [
        sid
        for sid, c, o in zip(sample_ids, compliant, competing)
        if {normalize_answer(x) for x in c} & {normalize_answer(x) for x in o}
    ]
    if clashes:
        logger.warning(
            f"mfr: {len(clashes)} doc(s) have one normalised answer on both sides and can only score 'neither', "
            f"e.g. {clashes[:3]}"
        )

    new = {
        "follow": [follow] * len(dataset),
        "instruction": [instruction] * len(dataset),
        "instruction_name": [name] * len(dataset),
        "format_instruction": [FORMAT_INSTRUCTION] * len(dataset),
        "compliant_answers": compliant,
        "competing_answers": competing,
        "mc2_task": kinds,
        "sample_id": sample_ids,
        "mfr_kinds": [present] * len(dataset),
    }
    import datasets

    dataset = dataset.remove_columns([c for c in new if c in columns])
    return datasets.concatenate_datasets([dataset, datasets.Dataset.from_dict(new)], axis=1)


def _process_docs_for(follow: str, phrasing: str | None) -> Callable:
    def fn(dataset):
        return process_docs(dataset, follow, phrasing)

    suffix = f"_{phrasing}" if phrasing else ""
    fn.__name__ = fn.__qualname__ = f"process_docs_{follow}{suffix}"
    fn.__doc__ = f"`process_docs` for follow={follow!r}, phrasing={phrasing or DEFAULT_INSTRUCTION!r} (env overrides)."
    return fn


process_docs_text = _process_docs_for("text", None)
process_docs_vision = _process_docs_for("vision", None)
process_docs_text_paper = _process_docs_for("text", "paper")
process_docs_vision_paper = _process_docs_for("vision", "paper")
process_docs_text_mc2 = _process_docs_for("text", "mc2")
process_docs_vision_mc2 = _process_docs_for("vision", "mc2")
process_docs_text_prioritize = _process_docs_for("text", "prioritize")
process_docs_vision_prioritize = _process_docs_for("vision", "prioritize")
process_docs_text_focus = _process_docs_for("text", "focus")
process_docs_vision_focus = _process_docs_for("vision", "focus")


def doc_to_visual(doc: Mapping[str, Any]) -> list:
    """``[PIL.Image]`` (RGB): the doc's ``image``, else the COCO image of its ``image_id``."""
    from PIL import Image

    image = doc.get("image")
    if image is None:
        return [load_coco_image(doc.get("image_id"))]
    if isinstance(image, Image.Image):
        return [image.convert("RGB")]
    if isinstance(image, Mapping) and (image.get("bytes") or image.get("path")):
        import io

        from mf_harness.lmms.images import open_rgb

        src = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
        return [open_rgb(src, f"doc {doc.get('sample_id')!r}")]
    raise DataError(f"doc {doc.get('sample_id')!r}: unusable 'image' value of type {type(image).__name__}")


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    body = render_prompt(doc["context"], doc["instruction"], doc["question"], doc["format_instruction"])
    return f"{kwargs.get('pre_prompt', '')}{body}{kwargs.get('post_prompt', '')}"


def doc_to_target(doc: Mapping[str, Any]) -> str:
    return doc["compliant_answers"][0]


def process_results(doc: Mapping[str, Any], results: Sequence[Any]) -> dict[str, int | None]:
    """0/1 ``mfr``, ``competing``, ``neither``; ``mfr_<kind>`` is None on docs of other kinds."""
    pred = results[0] if results else ""
    if isinstance(pred, (list, tuple)):
        pred = pred[0] if pred else ""
    c, o = match_sides(pred, doc["compliant_answers"], doc["competing_answers"])
    mfr, competing = int(c and not o), int(o and not c)
    out: dict[str, int | None] = {"mfr": mfr, "competing": competing, "neither": 1 - mfr - competing}
    for kind in doc["mfr_kinds"]:
        out[f"mfr_{kind}"] = mfr if kind == doc["mc2_task"] else None
    return out


def aggregate_kind_mean(items: Sequence[int | None]) -> float:
    """Mean over the docs of one kind (None marks a doc of another kind); NaN if there are none."""
    values = [x for x in items if x is not None]
    return sum(values) / len(values) if values else math.nan
