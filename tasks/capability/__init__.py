"""General-capability benchmarks under the same spec: TextVQA, Flickr30k, MMLU, IFEval.

A head set that kills modality following should leave general capability alone
(the paper's Table 1). These lmms-eval tasks let the very same ``intervened_qwen``
model and spec run four capability benchmarks, scored by the upstream scorers
(lmms-eval's TextVQA and Flickr30k code, pycocoevalcap, lm-eval's IFEval registry
and multiple-choice rule), so numbers compare with published lmms-eval ones.

Task names (``tasks/capability/README.md`` has the full table):

* real data (hub, or a local copy via ``MF_HARNESS_<BENCH>_DATA``, see `sources`):
  ``mf_textvqa_val``, ``mf_flickr30k_test``, ``mf_flickr30k_test_ppl``, ``mf_mmlu``,
  ``mf_mmlu_generative``, ``mf_ifeval``; fixed-seed 1,000-doc subsets ``*_1k``
  (seed `SUBSET_SEED`, except IFEval's 541 prompts, run whole); groups
  ``mf_capability_full`` and ``mf_capability_1k``;
* bundled fixtures (offline, a few rows each, see `fixtures`): the same names with
  ``_fixture``, and the group ``mf_capability``.

Where the intervention acts. The spec's ``instruction`` scope reads each doc's
``instruction`` field (a string or a list of strings, each occurring verbatim in the
prompt), which ``process_docs`` adds; the prompt is rendered from that field, so the
two cannot disagree:

===========  =================================================================  ==============================
task         instruction tokens (default)                                       override
===========  =================================================================  ==============================
TextVQA      "Answer the question using a single word or phrase."               MF_HARNESS_TEXTVQA_INSTRUCTION
             (lmms-eval's post-prompt)
Flickr30k    "Provide a one-sentence caption for the provided image."           MF_HARNESS_FLICKR30K_INSTRUCTION
             (lmms-eval's prompt: the whole user text)
MMLU         "The following are multiple choice questions (with answers)       MF_HARNESS_MMLU_INSTRUCTION
             about {subject}." and the closing "Answer:"                        (the sentence; {subject} filled)
IFEval       the whole prompt (the prompt is the instruction)                   -
===========  =================================================================  ==============================

Any other choice: the spec's scopes ``prompt_text`` (the whole user text), ``last``
or ``prompt``, or a YAML of your own that includes ours and sets ``process_docs`` to a
function adding your ``instruction``.
"""

from __future__ import annotations

from mf_harness.tasks.capability.common import SUBSET_SEED, SUBSET_SIZE, seeded_indices, seeded_subset

__all__ = ["SUBSET_SEED", "SUBSET_SIZE", "seeded_indices", "seeded_subset", "TASKS", "FIXTURE_TASKS", "SUBSET_TASKS"]

TASKS = ("mf_textvqa_val", "mf_flickr30k_test", "mf_flickr30k_test_ppl", "mf_mmlu", "mf_mmlu_generative", "mf_ifeval")
SUBSET_TASKS = tuple(f"{t}_1k" for t in TASKS if t != "mf_ifeval")
FIXTURE_TASKS = tuple(f"{t}_fixture" for t in TASKS)
