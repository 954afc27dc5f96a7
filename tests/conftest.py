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


_HANG = """
import importlib.abc, importlib.util, os, sys, time
from pathlib import Path

TASK, AFTER = {task!r}, {after}


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "mf_harness.lmms.fast_engine":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            generate, seen = module.MultiSpecRunner.generate, []

            def hang_after(self, prompt, images, doc, specs, gen_kwargs, label="doc"):
                if label.startswith(TASK + " "):
                    if len(seen) == AFTER:
                        (Path(__file__).parent / f"hung.{{os.getpid()}}").write_text(label)
                        parent = os.getppid()
                        while os.getppid() == parent:  # until killed, or orphaned (a launcher killed alone)
                            time.sleep(0.2)
                        os._exit(1)
                    seen.append(label)
                return generate(self, prompt, images, doc, specs, gen_kwargs, label)

            module.MultiSpecRunner.generate = hang_after

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Hook())
"""


@pytest.fixture
def hang_after():
    """Where a kill lands, made deterministic: ``hang_after(dir, task, n)`` writes a start-up hook (a
    ``sitecustomize`` in ``dir``) under which each process answers ``n`` samples of ``task`` through the fast
    engine, then marks itself hung (a ``hung.<pid>`` file in ``dir``) and waits in its next one until killed (or
    until its parent dies: ranks that a launcher started in sessions of their own do not outlive it).
    Returns (env to add to the killed run's, a function listing the hung processes' pids)."""

    def make(where: Path, task: str, n: int):
        where.mkdir(parents=True)
        (where / "sitecustomize.py").write_text(_HANG.format(task=task, after=n))
        path = os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH", "")) if p)
        return {"PYTHONPATH": path}, lambda: sorted(int(p.suffix[1:]) for p in where.glob("hung.*"))

    return make


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
