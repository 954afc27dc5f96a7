"""Flickr30k (test) under an intervention: captions scored by pycocoevalcap, and a perplexity.

Prompt: ``{pre_prompt}{instruction}{post_prompt}`` with ``instruction`` = lmms-eval's
``flickr30k_test`` prompt "Provide a one-sentence caption for the provided image."
(the whole user text, so the ``instruction`` scope and ``prompt_text`` coincide here);
``MF_HARNESS_FLICKR30K_INSTRUCTION`` replaces it. The image comes first, as in
every lmms-eval task.

Caption metrics (``mf_flickr30k_test``): the generated caption against the five
references, scored as lmms-eval's ``flickr30k_test`` scores it: pycocoevalcap's
PTBTokenizer on references and predictions, then ``Bleu(4)``, ``Meteor()``,
``Rouge()``, ``Cider()`` and ``Spice()`` over the whole split (corpus-level; CIDEr's
idf comes from the evaluated references, so subsets are not comparable with the full
split). Metrics ``flickr_Bleu_1..4``, ``flickr_METEOR``, ``flickr_ROUGE_L``,
``flickr_CIDEr``, ``flickr_SPICE``, on pycocoevalcap's 0-1 scale (the paper's table
is x100). Tokenisation runs once per split, not once per metric. One guard beyond
upstream: line-break characters other than ``\\n`` (``\\r``, ``\\v``, ``\\f``, U+2028, ...)
are turned into spaces, because PTBTokenizer would split the caption there and
shift every later caption onto the wrong image.

SPICE needs Stanford CoreNLP 3.6.0 (``stanford-corenlp-3.6.0.jar`` and
``stanford-corenlp-3.6.0-models.jar``), which pycocoevalcap downloads at run time.
We never download: the jars are taken from ``$MF_HARNESS_CORENLP_DIR`` (e.g. the
unzipped ``stanford-corenlp-full-2015-12-09``) or from pycocoevalcap's own
``spice/lib`` folder. Without them ``flickr_SPICE`` is NaN and one warning line says
how to provide them; the other metrics are unaffected. With them, pycocoevalcap's
``Spice.compute_score`` runs unchanged, from a work folder under
``$MF_HARNESS_SPICE_HOME`` (default ``~/.cache/mf_harness/spice``; it holds SPICE's
parse cache, so later runs reuse the parses) that holds a link or copy of the SPICE
jar and links to its libraries and the CoreNLP jars; ``JDK_JAVA_OPTIONS`` gets ``--add-opens`` flags for Java 9+
(SPICE 1.0 was built for Java 8; its parse cache fails on Java 17 without them).

Perplexity (``mf_flickr30k_test_ppl``, metric ``flickr_PPL``): the model's word-level
perplexity of the reference captions given the image and the same prompt,

    PPL = exp( - sum_{docs, refs} log p(ref | image, prompt) / sum_{docs, refs} words(ref) )

where ``log p`` is the summed token log-likelihood of the caption as the assistant's
reply (one loglikelihood request per reference: the chat-templated prompt with the
generation prompt, then the caption's tokens), and ``words`` is lm-eval's word count
(``len(re.split(r"\\s+", ref))``), as in lm-eval's ``word_perplexity``; the
aggregation is lm-eval's ``weighted_perplexity``. Words, not tokens, so the number does
not depend on the tokenizer. Lower is better. The paper does not say which
perplexity it reports; this is ours.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from mf_harness.tasks.capability.common import (instruction_text, loglikelihood_result, require_columns, seeded_subset,
                                           to_rgb, with_column)
from mf_harness.errors import MfHarnessError

__all__ = [
    "DEFAULT_INSTRUCTION",
    "INSTRUCTION_ENV",
    "CORENLP_ENV",
    "CORENLP_JARS",
    "METRICS",
    "SpiceUnavailable",
    "process_docs",
    "process_docs_1k",
    "doc_to_visual",
    "doc_to_text",
    "doc_to_captions",
    "process_results",
    "process_results_ppl",
    "caption_score",
    "tokenized_split",
    "corenlp_jars",
    "spice_score",
]

DEFAULT_INSTRUCTION = "Provide a one-sentence caption for the provided image."
INSTRUCTION_ENV = "MF_HARNESS_FLICKR30K_INSTRUCTION"
CORENLP_ENV = "MF_HARNESS_CORENLP_DIR"
SPICE_HOME_ENV = "MF_HARNESS_SPICE_HOME"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"
# lmms-eval's FLICKR_METRICS plus SPICE (commented out upstream)
METRICS = ("Bleu_4", "Bleu_3", "Bleu_2", "Bleu_1", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
_JAVA_OPENS = ("java.base/java.lang", "java.base/java.lang.reflect", "java.base/java.io", "java.base/java.math",
               "java.base/java.net", "java.base/java.nio", "java.base/java.text", "java.base/java.util",
               "java.base/java.util.concurrent", "java.base/java.util.concurrent.atomic")


class SpiceUnavailable(MfHarnessError):
    """SPICE cannot run here (no CoreNLP jars, no Java, or the SPICE jar failed)."""


# ---------------------------------------------------------------------------- lmms-eval hooks


def process_docs(dataset):
    """Add ``instruction`` (see the module docstring)."""
    require_columns(dataset, ("image", "caption", "img_id"), "Flickr30k")
    return with_column(dataset, "instruction", [instruction_text(INSTRUCTION_ENV, DEFAULT_INSTRUCTION)] * len(dataset))


def process_docs_1k(dataset):
    """`process_docs` on the fixed-seed 1,000-image subset."""
    return process_docs(seeded_subset(dataset))


def doc_to_visual(doc: Mapping[str, Any]) -> list:
    return [to_rgb(doc["image"], f"Flickr30k image {doc.get('img_id')}")]


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['instruction']}{kw.get('post_prompt', '')}"


def doc_to_captions(doc: Mapping[str, Any]) -> list[str]:
    """The reference captions: the continuations scored by the perplexity task."""
    return [str(c) for c in doc["caption"]]


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, dict]:
    """lmms-eval's ``flickr_process_result`` item, under every name in `METRICS`."""
    from lmms_eval.tasks.flickr30k.utils import flickr_process_result

    item = next(iter(flickr_process_result(doc, list(results)).values()))
    item = {**item, "answer": [str(a) for a in item["answer"]]}
    return {f"flickr_{m}": item for m in METRICS}


def process_results_ppl(doc: Mapping[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, tuple[float, int]]:
    """``(sum of caption log-likelihoods, sum of caption words)`` for `weighted_perplexity`."""
    from lm_eval.api.task import ConfigurableTask

    captions = doc_to_captions(doc)
    if len(results) != len(captions):
        raise MfHarnessError(f"Flickr30k image {doc.get('img_id')}: {len(results)} log-likelihoods "
                             f"for {len(captions)} captions")
    ll = sum(loglikelihood_result(r)[0] for r in results)
    words = sum(ConfigurableTask.count_words(c) for c in captions)
    return {"flickr_PPL": (ll, words)}


# ---------------------------------------------------------------------------- caption metrics


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())


_MEMO: dict[str, dict[str, Any]] = {}


def tokenized_split(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-split memo: the PTB-tokenised (gts, res), keyed by item position, and scores computed so far.

    lmms-eval calls one aggregation per metric on the same items; tokenising (a Java
    run) and BLEU (all four orders at once) then happen once per split."""
    key = hashlib.sha256(json.dumps([[i["image_id"], i["pred"], list(i["answer"])] for i in items],
                                    default=str).encode()).hexdigest()
    if key not in _MEMO:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        gts = {k: [{"caption": _one_line(a)} for a in item["answer"]] for k, item in enumerate(items)}
        res = {k: [{"caption": _one_line(item["pred"])}] for k, item in enumerate(items)}
        tok = PTBTokenizer()
        _MEMO.clear()  # one split at a time
        _MEMO[key] = {"gts": tok.tokenize(gts), "res": tok.tokenize(res), "scores": {}}
    return _MEMO[key]


def caption_score(items: Sequence[Mapping[str, Any]], metric: str) -> float:
    """Corpus score of one pycocoevalcap metric over `process_results` items."""
    if metric not in METRICS:
        raise MfHarnessError(f"unknown caption metric {metric!r}; one of {', '.join(METRICS)}")
    if not items:
        return math.nan
    memo = tokenized_split(items)
    scores, gts, res = memo["scores"], memo["gts"], memo["res"]
    if metric in scores:
        return scores[metric]
    if metric == "SPICE":
        return spice_score(gts, res)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    if metric.startswith("Bleu"):
        bleu, _ = Bleu(4).compute_score(gts, res)
        scores.update({f"Bleu_{n}": float(b) for n, b in enumerate(bleu, start=1)})
    else:
        score, _ = {"METEOR": Meteor, "ROUGE_L": Rouge, "CIDEr": Cider}[metric]().compute_score(gts, res)
        scores[metric] = float(score)
    return scores[metric]


def _aggregate(metric: str):
    def agg(items):
        return caption_score(items, metric)

    agg.__name__ = agg.__qualname__ = f"aggregate_{metric.lower()}"
    agg.__doc__ = f"lmms-eval aggregation: corpus {metric} (pycocoevalcap)."
    return agg


aggregate_bleu_4 = _aggregate("Bleu_4")
aggregate_bleu_3 = _aggregate("Bleu_3")
aggregate_bleu_2 = _aggregate("Bleu_2")
aggregate_bleu_1 = _aggregate("Bleu_1")
aggregate_meteor = _aggregate("METEOR")
aggregate_rouge_l = _aggregate("ROUGE_L")
aggregate_cider = _aggregate("CIDEr")


def aggregate_spice(items) -> float:
    """Corpus SPICE, or NaN with one warning line when SPICE cannot run here."""
    try:
        return caption_score(items, "SPICE")
    except SpiceUnavailable as e:
        logger.warning(str(e))
        return math.nan


# ---------------------------------------------------------------------------- SPICE


def _pycocoevalcap_spice_dir() -> Path:
    import pycocoevalcap.spice as spice_pkg

    return Path(spice_pkg.__file__).resolve().parent


def corenlp_jars() -> tuple[Path, Path]:
    """The CoreNLP 3.6.0 jars SPICE needs: ``$MF_HARNESS_CORENLP_DIR``, else pycocoevalcap's ``spice/lib``."""
    lib = _pycocoevalcap_spice_dir() / "lib"
    value = os.environ.get(CORENLP_ENV, "").strip()
    folders = [Path(value).expanduser()] if value else [lib]
    for folder in folders:
        jars = tuple(folder / name for name in CORENLP_JARS)
        if all(j.is_file() for j in jars):
            return jars  # type: ignore[return-value]
    where = f"{CORENLP_ENV}={value!r}" if value else f"{lib} ({CORENLP_ENV} is not set)"
    raise SpiceUnavailable(
        f"flickr_SPICE: Stanford CoreNLP not found in {where}, so SPICE is NaN (the other caption metrics are "
        f"unaffected); to compute it, unzip {CORENLP_URL} and set {CORENLP_ENV} to the folder holding "
        f"{CORENLP_JARS[0]} and {CORENLP_JARS[1]}"
    )


def _spice_workdir(jars: Sequence[Path]) -> Path:
    """A folder laid out like pycocoevalcap's spice/ (jar + lib/), with the CoreNLP jars linked into lib/.

    The SPICE jar is hard-linked or copied, not symlinked: Java resolves a jar's
    ``Class-Path`` (``lib/...``) against the jar's real location, so a symlinked jar would
    look for CoreNLP in site-packages again. The libraries may be symlinks."""
    base = Path(os.environ.get(SPICE_HOME_ENV) or Path.home() / ".cache" / "mf_harness" / "spice").expanduser()
    lib = base / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    src = _pycocoevalcap_spice_dir()
    jar, jar_src = base / "spice-1.0.jar", src / "spice-1.0.jar"
    if jar.is_symlink() or (jar.exists() and jar.stat().st_size != jar_src.stat().st_size):
        jar.unlink()
    if not jar.exists():
        try:
            os.link(jar_src, jar)
        except OSError:
            shutil.copyfile(jar_src, jar)
    links = {lib / j.name: j for j in (src / "lib").glob("*.jar")}
    links.update({lib / j.name: j.resolve() for j in jars})
    for link, target in links.items():
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            link.unlink()
        link.symlink_to(target)
    return base


def spice_score(gts: Mapping[Any, list[str]], res: Mapping[Any, list[str]]) -> float:
    """pycocoevalcap's ``Spice.compute_score`` on tokenised captions, without its download step."""
    jars = corenlp_jars()
    if shutil.which("java") is None:
        raise SpiceUnavailable("flickr_SPICE: no `java` on PATH, so SPICE is NaN; install Java 8 or newer")
    from pycocoevalcap.spice import spice as spice_module

    workdir = _spice_workdir(jars)
    # The unchanged function, with its module globals rebased so that its jar, lib/, tmp/ and
    # cache/ are our work folder's (Spice.__init__, which downloads CoreNLP, is never called).
    compute = types.FunctionType(spice_module.Spice.compute_score.__code__,
                                 {**vars(spice_module), "__file__": str(workdir / "spice.py")})
    scorer = object.__new__(spice_module.Spice)
    opens = " ".join(f"--add-opens={m}=ALL-UNNAMED" for m in _JAVA_OPENS)
    saved = os.environ.get("JDK_JAVA_OPTIONS")
    os.environ["JDK_JAVA_OPTIONS"] = f"{saved} {opens}" if saved else opens
    try:
        score, _ = compute(scorer, dict(gts), dict(res))
    except subprocess.CalledProcessError as e:
        raise SpiceUnavailable(f"flickr_SPICE: the SPICE jar failed (exit status {e.returncode}; its output is "
                               f"above), so SPICE is NaN; work folder {workdir}") from None
    finally:
        if saved is None:
            os.environ.pop("JDK_JAVA_OPTIONS", None)
        else:
            os.environ["JDK_JAVA_OPTIONS"] = saved
    return float(score)
