"""Tiny checkpoints of the real HF VLM architectures, built offline.

Tests, benchmarks and the embedded default all need real `transformers` model
classes without a hub. `build_tiny_vlm` writes a complete checkpoint directory
(config, safetensors weights, a byte-level BPE tokenizer trained on a few KB of
text, the family's chat template and image processor) that loads with
`from_pretrained(dir)` exactly like a downloaded one.

One builder per family in `mf_harness.core.arch.ARCH` (`FAMILIES`). Each copies what
matters from the published checkpoints: the special tokens and which of them are the
image placeholder, eos and padding; whether the tokenizer prepends a BOS (Llama,
Gemma); the chat template (Qwen2/2.5-VL-Instruct; Qwen3-VL-Instruct, also for
Qwen3-VL-MoE, and Qwen3.5, also for Qwen3.5-MoE, without their tool branches; InternVL3-hf;
llava-1.5-hf; llava-v1.6-mistral-hf; llava-onevision-hf; gemma-3-it; gemma-4-31B-it (verbatim, in a
.jinja file beside the builders); GLM-4.1V-9B-Thinking, also for GLM-4.5V;
Idefics3-8B-Llama3; SmolVLM-Instruct); the processor class and its image-token
expansion; the model's generation stop tokens. Sizes are tiny (28x28 vision tiles,
4 image tokens per tile; Gemma 4's processor always fills its 280-soft-token budget, so
~256 image tokens there) so everything runs in milliseconds on a CPU.

Weights are random (seeded): these checkpoints exercise code paths, they do not
answer questions.
"""

from __future__ import annotations

import json
from pathlib import Path

from mf_harness.tiny.config import FAMILIES, MEDIUM, TinyConfig, build_tokenizer
from mf_harness.tiny.templates import QWEN_CHAT_TEMPLATE

__all__ = ["TinyConfig", "build_tiny_vlm", "build_tokenizer", "FAMILIES", "QWEN_CHAT_TEMPLATE", "MEDIUM"]


def build_tiny_vlm(out_dir: str | Path, cfg: TinyConfig = TinyConfig(), extra_text: str = "", *,
                   dtype: str | None = None, device: str | None = None) -> Path:
    """Write a complete tiny checkpoint of `cfg.family` to `out_dir` and return the path.

    ``dtype``/``device`` (e.g. ``"bfloat16"``, ``"cuda"``) initialise big random configs
    (benchmarks) quickly; the default (float32 on the CPU) is what the tests pin.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from mf_harness.lmms.patches import install_processors

    from mf_harness.tiny.builders import _BUILDERS

    if cfg.family not in _BUILDERS:
        raise ValueError(f"no tiny builder for family {cfg.family!r}; known: {', '.join(FAMILIES)}")
    install_processors()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, config, processor, stop_ids = _BUILDERS[cfg.family](cfg, extra_text)
    config._attn_implementation = cfg.attn_implementation
    torch.manual_seed(cfg.seed)
    kw = {"dtype": getattr(torch, dtype)} if dtype else {}
    with torch.device(device or "cpu"):
        model = AutoModelForImageTextToText.from_config(config, attn_implementation=cfg.attn_implementation, **kw)
    model.eval()
    eos = stop_ids[0] if len(stop_ids) == 1 else list(stop_ids)
    pad = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "mf_harness_tiny.json").write_text(json.dumps(cfg.__dict__, indent=2) + "\n")
    return out
