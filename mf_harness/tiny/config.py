"""Sizes, vocabulary corpus and tokenizer of the tiny checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "internvl", "llava", "llava_next",
            "llava_onevision", "gemma3", "gemma4", "glm4v", "glm4v_moe", "idefics3", "smolvlm")

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


def build_tokenizer(special_tokens: list[str], vocab_target: int = 400, extra_text: str = "", *,
                    eos_token: str = "<|im_end|>", pad_token: str = "<|endoftext|>", bos_token: str | None = None,
                    add_bos: bool = False, extra_special_tokens: dict[str, str] | None = None):
    """A byte-level BPE tokenizer (handles any text) with the family's special tokens.

    ``add_bos``: prepend ``bos_token`` when encoding with special tokens, like Llama and
    Gemma tokenizers (chat templates that write the BOS themselves then tokenize without).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
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
    if add_bos:
        bos_id = tok.token_to_id(bos_token)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos_token} $A", pair=f"{bos_token} $A $B",
                                                           special_tokens=[(bos_token, bos_id)])
    if extra_special_tokens is None:
        extra_special_tokens = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    kwargs: dict[str, Any] = {"bos_token": bos_token} if bos_token else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=pad_token,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        extra_special_tokens=extra_special_tokens,
        **kwargs,
    )
