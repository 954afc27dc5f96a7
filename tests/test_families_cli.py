"""`lmms-eval --model intervened_hf` runs `mfr` with a spec on a tiny checkpoint of every family.

One lmms-eval process runs them all, one after the other, from a run-list config
(``lmms-eval --config runs.yaml``: a list of ordinary CLI settings), so the module pays
lmms-eval's start-up once rather than once per family.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mf_harness.core.arch import ARCH, MODEL_NAMES, geometry

BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
FAMILIES = list(ARCH)
SPEC = "block=L0H1+L2H3+L3H0,scope=instruction"


def _spec(ckpt) -> str:
    """SPEC with layer l read as the l-th layer that has heads (hybrid decoders such as Qwen3.5)."""
    from transformers import AutoConfig

    hl = geometry(AutoConfig.from_pretrained(ckpt)).head_layers
    return re.sub(r"L(\d+)H", lambda m: f"L{hl[int(m.group(1)) % len(hl)]}H", SPEC)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    root = tmp_path_factory.mktemp("families_cli")
    config, outs = [], {}
    for i, family in enumerate(FAMILIES):
        ckpt = build_tiny_vlm(root / "ckpt" / family, TinyConfig(family=family, seed=i))
        outs[family] = root / "out" / family
        config.append({"model": "intervened_hf", "model_args": f"pretrained={ckpt},{_spec(ckpt)}", "tasks": "mfr",
                       "limit": 4, "batch_size": 2, "output_path": str(outs[family]), "log_samples": True})
    (root / "runs.yaml").write_text(yaml.safe_dump(config))
    p = subprocess.run([str(BIN / "lmms-eval"), "--config", str(root / "runs.yaml")], cwd=root, env=ENV,
                       capture_output=True, text=True, timeout=900)
    return p, outs


@pytest.mark.parametrize("family", FAMILIES)
def test_mfr_runs_through_lmms_eval(runs, family):
    p, outs = runs
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    out = outs[family]
    assert f"{ARCH[family].alias}: {out.parent.parent / 'ckpt' / family} ({family}," in p.stdout  # loguru
    results = json.loads(sorted(out.rglob("*_results.json"))[-1].read_text())["results"]
    for task in ("mfr_text", "mfr_vision"):
        r = results[task]
        assert r["mfr,none"] + r["competing,none"] + r["neither,none"] == pytest.approx(1.0)
        samples = [json.loads(x) for x in sorted(out.rglob(f"*_samples_{task}.jsonl"))[-1].read_text().splitlines()]
        assert len(samples) == 4


def test_every_alias_is_the_one_model():
    import lmms_eval.models as models

    classes = {models.get_model(name) for name in MODEL_NAMES}
    assert len(classes) == 1 and next(iter(classes)).__name__ == "IntervenedHF"
