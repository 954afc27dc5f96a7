"""MMLU (57 subjects, 0-shot) under an intervention: loglikelihood and generative variants.

One task over hails/mmlu_no_train's ``all`` config (14,042 test questions; the same
rows as lmms-eval's and lm-eval's 57 ``mmlu_<subject>`` tasks). Its mean accuracy is
the micro average that lmms-eval's ``mmlu`` group reports (``weight_by_size: true``).
The prompt is exactly lmms-eval's / lm-eval's (the per-subject description, then the
question)::

    The following are multiple choice questions (with answers) about {subject}.\\n\\n
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:

``{subject}`` is the subject with ``_`` read as a space. 0-shot: lmms-eval's
default (no ``--num_fewshot``), and the cheap choice. Few-shot is not offered: with
one task over all subjects, lm-eval's ``first_n`` sampler would take its examples
from the wrong subjects.

Instruction tokens (the doc field ``instruction``, a list): the description sentence
and the closing ``Answer:`` cue; the question and its options are content, not
instruction. ``MF_HARNESS_MMLU_INSTRUCTION`` replaces the description (``{subject}``
is filled in). Use the spec's ``prompt_text`` scope for the whole text.

``mf_mmlu``: ``multiple_choice``, one loglikelihood request per letter (continuation
``" A"`` ... ``" D"`` after the prompt, lm-eval's ``target_delimiter``), scored by
`process_results` as lm-eval scores multiple choice: ``acc = 1[argmax_i ll_i == gold]``.
(lmms-eval 0.7.3's built-in multiple-choice scorer takes the *argmin*, for models that
return losses; ``intervened_qwen`` returns log-likelihoods, as lm-eval models do.)

``mf_mmlu_generative``: ``generate_until`` (until ``</s>`` or a newline, at most 32
new tokens), scored by lmms-eval's ``exact_match`` against the letter, as lmms-eval's
``mmlu_generative``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mf_harness.tasks.capability.common import (instruction_text, loglikelihood_result, require_columns, seeded_subset,
                                           with_column)
from mf_harness.errors import DataError

__all__ = ["DEFAULT_INSTRUCTION", "ANSWER_CUE", "INSTRUCTION_ENV", "LETTERS", "subject_name", "description",
           "process_docs", "process_docs_1k", "doc_to_text", "doc_to_target", "doc_to_letter", "process_results"]

DEFAULT_INSTRUCTION = "The following are multiple choice questions (with answers) about {subject}."
ANSWER_CUE = "Answer:"
INSTRUCTION_ENV = "MF_HARNESS_MMLU_INSTRUCTION"
LETTERS = ("A", "B", "C", "D")


def subject_name(subject: str) -> str:
    return " ".join(str(subject).split("_"))


def description(subject: str) -> str:
    """The instruction sentence for one subject (default: lmms-eval's description, without its ``\\n\\n``)."""
    return instruction_text(INSTRUCTION_ENV, DEFAULT_INSTRUCTION).replace("{subject}", subject_name(subject))


def process_docs(dataset):
    """Add ``instruction`` = [description, ``Answer:``] (see the module docstring)."""
    require_columns(dataset, ("question", "subject", "choices", "answer"), "MMLU")
    bad = [i for i, c in enumerate(dataset["choices"]) if len(c) != 4]
    if bad:
        raise DataError(f"MMLU rows {bad[:5]} do not have 4 choices")
    return with_column(dataset, "instruction", [[description(s), ANSWER_CUE] for s in dataset["subject"]])


def process_docs_1k(dataset):
    """`process_docs` on the fixed-seed 1,000-question subset."""
    return process_docs(seeded_subset(dataset))


def doc_to_text(doc: Mapping[str, Any]) -> str:
    header = doc["instruction"][0]
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, doc["choices"]))
    return f"{header}\n\n{doc['question'].strip()}{options}\n{ANSWER_CUE}"


def doc_to_target(doc: Mapping[str, Any]) -> int:
    return int(doc["answer"])


def doc_to_letter(doc: Mapping[str, Any]) -> str:
    return LETTERS[int(doc["answer"])]


def process_results(doc: Mapping[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """lm-eval's multiple-choice accuracy: the gold letter has the highest log-likelihood.

    ``results``: one ``(log-likelihood, is_greedy)`` per letter (or lmms-eval 0.7.3's string
    form of it, see `loglikelihood_result`)."""
    lls = np.array([loglikelihood_result(r)[0] for r in results])
    return {"acc": 1.0 if int(np.argmax(lls)) == doc_to_target(doc) else 0.0}
