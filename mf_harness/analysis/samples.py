"""Samples for the analysis: the `mfr` task's docs, rendered exactly as the model wrapper does.

One code path: docs come from lmms-eval's own task (``TaskManager`` + ``get_task_dict``),
prompts from the task's ``doc_to_text`` / ``doc_to_visual``, rendering and encoding from
the model's `PromptCodec` (chat template, padding) and its image preparation. On top, each sample carries:

* **token sets** (positions in its unpadded row): ``image``, ``context``, ``instruction``
  (the modality-specifying sentence), ``format`` (the output-format sentence),
  ``question``, ``prompt_text`` (the whole user text) and ``last`` (final prompt position);
* **entity dictionaries** as token ids: E_c (instruction-compliant answer) and E_o
  (competing answer). Each surface form is represented by its first token, as in the
  paper; the form is taken as written and capitalised, each bare (answers start the
  assistant turn) and space-prefixed (a tokenizer may write the first word with its
  space, as the embedded checkpoint does: ``" red"``). A token in both dictionaries cannot tell the sides apart and is
  dropped from both. The paper also added Chinese forms (Qwen's logit lens often decodes
  to Chinese): pass ``extra_forms={"blue": ["蓝", "蓝色"], ...}`` to add surface forms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


from mf_harness.errors import DataError, MfHarnessError

__all__ = ["Sample", "load_task_docs", "prepare_samples", "encode_samples", "TOKEN_SETS"]

TOKEN_SETS = ("image", "context", "instruction", "format", "question", "prompt_text", "last")


@dataclass
class Sample:
    sample_id: str
    follow: str
    doc: dict
    rendered: str
    user_text: str
    images: list
    compliant_ids: list[int]
    competing_ids: list[int]
    token_sets: dict[str, list[int]] = field(default_factory=dict)
    length: int = 0  # unpadded prompt length

    @property
    def label(self) -> str:
        return f"{self.follow} sample {self.sample_id}"


def load_task_docs(task: str, limit: int | None = None):
    """(task object, docs) of an lmms-eval task, through lmms-eval's own loader."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    import mf_harness.lmms.plugin as plugin

    plugin.install()
    tm = TaskManager("ERROR")
    if task not in tm.all_tasks:
        raise MfHarnessError(f"task {task!r} not found; mfr tasks: mfr_text, mfr_vision, mfr_mc2_text, mfr_mc2_vision")
    td = get_task_dict([task], tm)
    obj = td[task]
    docs = list(obj.eval_docs)
    if limit is not None:
        docs = docs[:limit]
    return obj, docs


def _first_tokens(tokenizer, forms: Sequence[str]) -> list[int]:
    out: list[int] = []
    for f in forms:
        cap = f[:1].upper() + f[1:]
        for variant in (f, cap, " " + f, " " + cap):
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if ids and ids[0] not in out:
                out.append(ids[0])
    return out


def _span(rendered: str, u0: int, user_text: str, needle: str | None) -> list[tuple[int, int]]:
    if not needle or not needle.strip():
        return []
    k = rendered.find(needle.strip(), u0, u0 + len(user_text))
    return [] if k < 0 else [(k, k + len(needle.strip()))]


def prepare_samples(lm, task_obj, docs: Sequence[dict], extra_forms: Mapping[str, Sequence[str]] | None = None,
                    ) -> list[Sample]:
    """Render every doc as the wrapper would and locate its token sets and answer tokens."""
    tok = lm.tokenizer
    extra = {k.lower(): list(v) for k, v in (extra_forms or {}).items()}
    samples = []
    for i, doc in enumerate(docs):
        label = f"{task_obj.config.task} doc {i}"
        for key in ("compliant_answers", "competing_answers", "instruction"):
            if key not in doc:
                raise DataError(f"{label}: doc has no {key!r} field; analysis needs an mfr-style task")
        ctx = task_obj.doc_to_text(doc)
        images = lm.visuals(task_obj.doc_to_visual, doc, label)
        rendered, user_text = lm.codec.render(ctx, len(images))
        enc = lm.codec.encode([rendered], [images])
        ids = enc["input_ids"][0].tolist()
        u0 = rendered.rfind(user_text)

        def forms(key):
            fs = list(doc[key])
            for f in list(fs):
                fs += extra.get(f.lower(), [])
            return fs

        ec, eo = _first_tokens(tok, forms("compliant_answers")), _first_tokens(tok, forms("competing_answers"))
        shared = set(ec) & set(eo)
        ec, eo = [t for t in ec if t not in shared], [t for t in eo if t not in shared]
        if not ec or not eo:
            raise DataError(f"{label}: the compliant and competing answers share every first token; "
                            f"they cannot be told apart by a readout")
        sets: dict[str, list[int]] = {}
        for name, needle in (("context", doc.get("context")), ("instruction", doc.get("instruction")),
                             ("format", doc.get("format_instruction")), ("question", doc.get("question"))):
            spans = _span(rendered, u0, user_text, needle)
            sets[name] = lm.codec.span_positions(rendered, spans, ids) if spans else []
        if not sets["instruction"]:
            raise DataError(f"{label}: instruction {doc['instruction']!r} not found in the prompt")
        sets["prompt_text"] = lm.codec.span_positions(rendered, [(u0, u0 + len(user_text))], ids)
        sets["image"] = lm.codec.image_positions(ids)
        sets["last"] = [len(ids) - 1]
        samples.append(Sample(sample_id=str(doc.get("sample_id", i)), follow=str(doc.get("follow", "")), doc=doc,
                              rendered=rendered, user_text=user_text, images=images, compliant_ids=ec,
                              competing_ids=eo, token_sets=sets, length=len(ids)))
    return samples


def encode_samples(lm, samples: Sequence[Sample]) -> tuple[Any, list[int]]:
    """Left-padded batch inputs for ``samples`` and each row's padding offset."""
    enc = lm.codec.encode([s.rendered for s in samples], [s.images for s in samples])
    S = enc["input_ids"].shape[1]
    offsets = [S - s.length for s in samples]
    for s, off in zip(samples, offsets):
        if int(enc["attention_mask"][samples.index(s)].sum()) != s.length:
            raise RuntimeError(f"{s.label}: batch encoding changed the prompt length")
    return enc, offsets
