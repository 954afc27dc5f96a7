"""Tiny checkpoints of the real HF VLM architectures, built offline.

Tests, benchmarks and the embedded default all need real `transformers` model
classes without a hub. `build_tiny_vlm` writes a complete checkpoint directory
(config, safetensors weights, a byte-level BPE tokenizer trained on a few KB of
text, the family's real chat template and image processor) that loads with
`from_pretrained(dir)` exactly like a downloaded one.

Weights are random (seeded): these checkpoints exercise code paths, they do not
answer questions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TinyConfig", "build_tiny_vlm", "QWEN_CHAT_TEMPLATE", "MEDIUM"]

# The chat template shipped with Qwen2-VL / Qwen2.5-VL Instruct checkpoints.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

_CORPUS_WORDS = (
    "the a an of to in and or is are was were be this that these those what which who how many "
    "picture image photo text context instruction question answer follow rely rather than content "
    "visual textual input inconsistency between case there you must should information over any "
    "elements focus ignore prioritize single word with colour color shape square circle triangle "
    "cross red green blue yellow orange purple pink brown black white gray grey one two three four "
    "five six seven eight nine ten zero man woman dog cat sheep horse bus car train person people "
    "eating playing running sitting standing happy sad tennis soccer baseball skiing surfing left "
    "right above below next behind front small large big room table field road street water sky "
    "helpful assistant system user describe caption true false yes no not it its on at by for from "
    "as do does did can could would will has have had he she they we I"
)


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of a tiny checkpoint. Defaults give a ~1 MB model that runs in milliseconds."""

    family: str = "qwen2_5_vl"
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    vision_depth: int = 1
    vision_hidden_size: int = 32
    vision_heads: int = 2
    vocab_target: int = 400
    seed: int = 0
    attn_implementation: str = "eager"
    max_position_embeddings: int = 4096


# A config with realistic proportions for benchmarks (8 layers x 8 heads = 64 heads).
MEDIUM = TinyConfig(
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    intermediate_size=1024,
    vision_depth=2,
    vision_hidden_size=128,
    vision_heads=4,
    vocab_target=2000,
    attn_implementation="sdpa",
)


def _corpus(extra_text: str = "") -> list[str]:
    words = _CORPUS_WORDS.split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 7)]
    lines += [w.capitalize() for w in words] + [w + "." for w in words] + [w + "?" for w in words]
    lines += ["0123456789 , . ; : ! ? ' \" ( ) - _ / \n"]
    if extra_text:
        lines += extra_text.splitlines()
    return lines


def build_tokenizer(special_tokens: list[str], vocab_target: int = 400, extra_text: str = ""):
    """A byte-level BPE tokenizer (handles any text) with the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(extra_text), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def _qwen_config(cfg: TinyConfig, tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    head_dim = cfg.hidden_size // cfg.num_attention_heads
    # mrope sections (t, h, w) must sum to head_dim / 2
    half = head_dim // 2
    t = half // 4 or 1
    hw = (half - t) // 2
    mrope = [t, hw, half - t - hw]
    ids = {t_: tokenizer.convert_tokens_to_ids(t_) for t_ in QWEN_SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if cfg.family == "qwen2_5_vl":
        vision = dict(
            depth=cfg.vision_depth,
            hidden_size=cfg.vision_hidden_size,
            intermediate_size=cfg.vision_hidden_size * 2,
            num_heads=cfg.vision_heads,
            out_hidden_size=cfg.hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[cfg.vision_depth - 1],
        )
        klass = Qwen2_5_VLConfig
    elif cfg.family == "qwen2_vl":
        vision = dict(
            depth=cfg.vision_depth,
            embed_dim=cfg.vision_hidden_size,
            hidden_size=cfg.hidden_size,
            num_heads=cfg.vision_heads,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        klass = Qwen2VLConfig
    else:
        raise ValueError(f"no tiny builder for family {cfg.family!r}; known: qwen2_5_vl, qwen2_vl")
    config = klass(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.eos_token_id = ids["<|im_end|>"]
    config.pad_token_id = ids["<|endoftext|>"]
    return config


def build_tiny_vlm(out_dir: str | Path, cfg: TinyConfig = TinyConfig(), extra_text: str = "") -> Path:
    """Write a complete tiny checkpoint of `cfg.family` to `out_dir` and return the path."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from mf_harness._compat import install_processor_shim

    install_processor_shim()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(QWEN_SPECIAL_TOKENS, cfg.vocab_target, extra_text)
    config = _qwen_config(cfg, tokenizer)
    config._attn_implementation = cfg.attn_implementation
    torch.manual_seed(cfg.seed)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation=cfg.attn_implementation)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )
    model.save_pretrained(out)
    processor = _qwen_processor(tokenizer, cfg.family)
    processor.save_pretrained(out)
    (out / "mf_harness_tiny.json").write_text(json.dumps(cfg.__dict__, indent=2) + "\n")
    return out


def _qwen_processor(tokenizer, family: str):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    klass = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
    return klass(image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)
