"""IFEval under an intervention: lm-eval's instruction registry and scoring, unchanged.

The prompt is the doc's ``prompt`` (as lmms-eval and lm-eval send it), and in IFEval
the prompt *is* the instruction, so the doc field ``instruction`` is the whole prompt:
the spec's ``instruction`` scope covers the same tokens as ``prompt_text``. (Use the
``last`` scope to act on the final prompt position only.)

Scores: lm-eval 0.4.13's ``lm_eval.tasks.ifeval.utils.process_results`` and
``agg_inst_level_acc``, called as they are: ``prompt_level_strict_acc``,
``inst_level_strict_acc``, ``prompt_level_loose_acc``, ``inst_level_loose_acc``. We use
lm-eval's copy (lmms-eval ships an older one with the same checks) because lmms-eval's
copy downloads NLTK's ``punkt`` at import, while lm-eval's reads ``punkt_tab``, which
nltk >= 3.9 uses. Set ``NLTK_DATA`` to a folder with ``tokenizers/punkt_tab/english``
(``python -m nltk.downloader punkt_tab`` writes one); without it the task stops with
one message before generating.

Two fixes around (not in) the scorers, both in `prepare_langdetect`: langdetect's
profiles are loaded before lmms-eval's thread pool scores the docs (a race there
makes detection fail, which lm-eval counts as followed), and langdetect's seed is
fixed (0) when unset, so repeated runs score alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mf_harness.tasks.capability.common import require_columns, with_column
from mf_harness.errors import MfHarnessError

__all__ = ["process_docs", "process_results", "agg_inst_level_acc", "check_punkt_tab", "prepare_langdetect"]


def check_punkt_tab() -> None:
    """Fail with one clear message when NLTK's English ``punkt_tab`` cannot be found."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise MfHarnessError(
            "IFEval needs NLTK's punkt_tab (English): set NLTK_DATA to a folder holding tokenizers/punkt_tab/english "
            "(`python -m nltk.downloader -d DIR punkt_tab` writes one)"
        ) from None


def prepare_langdetect() -> None:
    """Load langdetect's language profiles now, single-threaded, and fix its seed if unset.

    lmms-eval scores docs in a thread pool; langdetect loads its profiles lazily and not
    thread-safely, so concurrent first calls fail ("Need to load profiles"), and lm-eval's
    checkers count a failed detection as *followed*. Its sampling is also random unless
    ``DetectorFactory.seed`` is set; we set 0 when it is None, so scores repeat."""
    from langdetect import DetectorFactory, detector_factory

    if DetectorFactory.seed is None:
        DetectorFactory.seed = 0
    detector_factory.init_factory()


def process_docs(dataset):
    """Check punkt_tab, load langdetect, then add ``instruction`` = ``prompt``."""
    require_columns(dataset, ("key", "prompt", "instruction_id_list", "kwargs"), "IFEval")
    check_punkt_tab()
    prepare_langdetect()
    return with_column(dataset, "instruction", list(dataset["prompt"]))


def _utils():
    from lm_eval.tasks.ifeval import utils

    return utils


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, Any]:
    """lm-eval's ``process_results`` (strict and loose, prompt and instruction level)."""
    return _utils().process_results(doc, list(results))


def agg_inst_level_acc(items) -> float:
    """lm-eval's ``agg_inst_level_acc``: the share of all instructions followed."""
    return _utils().agg_inst_level_acc(items)
