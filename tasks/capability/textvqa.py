"""TextVQA (validation) under an intervention: lmms-eval's prompt and VQA accuracy.

Prompt, as lmms-eval's ``textvqa_val`` with its default kwargs::

    {pre_prompt}{Question.capitalize()}{ocr_ref}\\n{instruction}{post_prompt}

``instruction`` (the doc field the spec's ``instruction`` scope reads) is lmms-eval's
default post-prompt sentence "Answer the question using a single word or phrase.";
``MF_HARNESS_TEXTVQA_INSTRUCTION`` replaces it (in the prompt and in the scope
alike). ``pre_prompt`` / ``post_prompt`` (default empty) and ``ocr`` (default false:
"Reference OCR token: ..." after the question) come from ``lmms_eval_specific_kwargs``.

Score: lmms-eval's ``textvqa_process_results`` (EvalAI answer normalisation, then
VQA accuracy: the mean over the 10 leave-one-out subsets of the human answers of
min(1, #matches / 3)), reported as ``exact_match`` as lmms-eval names it. It is
called on a copy of the doc (upstream normalises ``doc["answers"]`` in place).
Upstream's ``submission`` metric (a file for the EvalAI server) is not reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mf_harness.tasks.capability.common import instruction_text, require_columns, seeded_subset, to_rgb, with_column

__all__ = ["DEFAULT_INSTRUCTION", "INSTRUCTION_ENV", "process_docs", "process_docs_1k", "doc_to_visual",
           "doc_to_text", "process_results"]

DEFAULT_INSTRUCTION = "Answer the question using a single word or phrase."
INSTRUCTION_ENV = "MF_HARNESS_TEXTVQA_INSTRUCTION"


def process_docs(dataset):
    """Add ``instruction`` (see the module docstring)."""
    require_columns(dataset, ("question", "answers", "question_id", "image"), "TextVQA")
    return with_column(dataset, "instruction", [instruction_text(INSTRUCTION_ENV, DEFAULT_INSTRUCTION)] * len(dataset))


def process_docs_1k(dataset):
    """`process_docs` on the fixed-seed 1,000-doc subset."""
    return process_docs(seeded_subset(dataset))


def doc_to_visual(doc: Mapping[str, Any]) -> list:
    return [to_rgb(doc["image"], f"TextVQA question {doc.get('question_id')}")]


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    ocr = f"\nReference OCR token: {', '.join(doc['ocr_tokens'])}" if kw.get("ocr") else ""
    question = doc["question"].capitalize()
    return f"{kw.get('pre_prompt', '')}{question}{ocr}\n{doc['instruction']}{kw.get('post_prompt', '')}"


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    from lmms_eval.tasks.textvqa.utils import textvqa_process_results

    copy = dict(doc)
    if copy.get("answers") is not None:
        copy["answers"] = list(copy["answers"])
    return {"exact_match": textvqa_process_results(copy, list(results))["exact_match"]}
