"""Where the capability tasks read their data: the hub dataset, or a local copy.

Each full-data task (``mf_textvqa_val``, ``mf_flickr30k_test``, ``mf_mmlu``,
``mf_mmlu_generative``, ``mf_ifeval`` and their ``_1k`` subsets) reads the hub
dataset lmms-eval 0.7.3 / lm-eval 0.4.13 read, unless an environment variable
names a local copy:

==========================  ==========================  ==========
variable                    hub dataset (config)        split read
==========================  ==========================  ==========
MF_HARNESS_TEXTVQA_DATA     lmms-lab-encoder/textvqa    validation
MF_HARNESS_FLICKR30K_DATA   lmms-lab-encoder/flickr30k  test
MF_HARNESS_MMLU_DATA        hails/mmlu_no_train (all)   test
MF_HARNESS_IFEVAL_DATA      google/IFEval               train
==========================  ==========================  ==========

A value may be

* a file (``.parquet``, ``.json``/``.jsonl``, ``.csv``, ``.arrow``) holding that split;
* a folder ``datasets.load_dataset`` reads, e.g. a hub snapshot
  (``huggingface-cli download lmms-lab-encoder/textvqa --repo-type dataset --local-dir DIR``);
* a folder written by ``DatasetDict.save_to_disk`` (it has ``dataset_dict.json``).

The YAMLs read the three values through ``!function`` tags
(``mf_harness.tasks.capability.sources.TEXTVQA_PATH`` / ``_NAME`` / ``_KWARGS``), which
lmms-eval resolves each time it builds the task, so the environment at run time
counts. Without a variable, the datasets library's own cache and ``HF_HUB_OFFLINE=1``
work as usual.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mf_harness.errors import MfHarnessError

__all__ = ["Source", "SOURCES", "resolve"]

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


@dataclass(frozen=True)
class Source:
    """One benchmark's data: the hub id lmms-eval uses, its config, the split we read, the override variable."""

    env: str
    hub: str
    name: str | None
    split: str


SOURCES: dict[str, Source] = {
    "textvqa": Source("MF_HARNESS_TEXTVQA_DATA", "lmms-lab-encoder/textvqa", None, "validation"),
    "flickr30k": Source("MF_HARNESS_FLICKR30K_DATA", "lmms-lab-encoder/flickr30k", None, "test"),
    "mmlu": Source("MF_HARNESS_MMLU_DATA", "hails/mmlu_no_train", "all", "test"),
    "ifeval": Source("MF_HARNESS_IFEVAL_DATA", "google/IFEval", None, "train"),
}


def resolve(key: str) -> tuple[str, str | None, dict[str, Any] | None]:
    """``(dataset_path, dataset_name, dataset_kwargs)`` for lmms-eval, from the environment."""
    src = SOURCES[key]
    value = os.environ.get(src.env, "").strip()
    if not value:
        return src.hub, src.name, None
    path = Path(value).expanduser().resolve()
    if path.is_file():
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise MfHarnessError(
                f"{src.env}={value!r}: cannot read {path.suffix!r} files; use one of {', '.join(sorted(_BUILDERS))} "
                f"or a dataset folder"
            )
        return builder, None, {"data_files": {src.split: str(path)}}
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return str(path), None, {"load_from_disk": True}
        if (path / "state.json").is_file():
            raise MfHarnessError(
                f"{src.env}={value!r} is a single saved Dataset; save a DatasetDict with a {src.split!r} split "
                f"(DatasetDict({{{src.split!r}: ds}}).save_to_disk(...)) or point at a parquet file"
            )
        # a hub snapshot names its configs in README.md; a bare folder of files has none
        return str(path), (src.name if (path / "README.md").is_file() else None), None
    raise MfHarnessError(f"{src.env}={value!r}: no such file or folder ({path})")


def __getattr__(attr: str):
    # TEXTVQA_PATH / TEXTVQA_NAME / TEXTVQA_KWARGS, ...: read by the YAMLs' !function tags.
    key, _, part = attr.rpartition("_")
    if key.lower() in SOURCES and part in ("PATH", "NAME", "KWARGS"):
        try:
            return resolve(key.lower())[("PATH", "NAME", "KWARGS").index(part)]
        except MfHarnessError as e:
            # lmms-eval re-raises anything from a !function tag as "Failed to import function ...":
            # say the real reason first, in one line.
            from loguru import logger

            logger.error(f"mf-harness: {e}")
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
