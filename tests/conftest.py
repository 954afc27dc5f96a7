"""Shared fixtures: tiny checkpoints of real architectures, built offline at test time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MF_HARNESS_SHARED", REPO.parent / "shared"))
os.environ.setdefault("NLTK_DATA", str(SHARED / "data" / "nltk_data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tests call lmms-eval's simple_evaluate directly too: install the lmms-eval patches explicitly, as
# lmms-eval's own CLI does through our entry point (mf_harness.lmms.patches).
from mf_harness.lmms.patches import install_lmms  # noqa: E402

install_lmms()


def _build(tmp_path_factory, name, **cfg):
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp(name), TinyConfig(**cfg))


@pytest.fixture(scope="session")
def tiny_qwen25_dir(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "qwen25", family="qwen2_5_vl", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "qwen2", family="qwen2_vl", seed=1)


@pytest.fixture(scope="session", params=["qwen2_5_vl", "qwen2_vl"])
def tiny_dir(request, tiny_qwen25_dir, tiny_qwen2_dir) -> Path:
    return tiny_qwen25_dir if request.param == "qwen2_5_vl" else tiny_qwen2_dir


def load(path, attn="eager"):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mf_harness.lmms.patches import install_processors

    install_processors()
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attn, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(path)
