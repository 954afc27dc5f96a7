"""The trainer's configuration, tokenizer and initial (random, seeded) checkpoint."""

from __future__ import annotations



from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mf_harness.core.arch import ARCH


SYSTEM_PROMPT = ARCH["qwen2_5_vl"].prompt.system_prompt  # what the wrapper writes for the family


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights."""

    seed: int = 0
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    route_prob: float = 0.7
    route_delay: int = 0
    threads: int = 1
    aux_vision: float = 2.0
    aux_vision_per_token: bool = False  # every image token (not only their mean) names colour, count, shape
    tie_embeddings: bool = True
    # the answer as the model should write it: " red" (the space-prefixed word token, which the
    # context also uses, so that copying is the identity) or "red"
    answer_prefix: str = " "
    # also train the answer's first token at every position from the question's last token on
    dense: float = 0.5
    # anchor supervision: the logit lens of the last instruction token after layer `anchor_layer`
    # names what the followed modality says (colour / count / shape, each among its own words)
    anchor: float = 0.5
    anchor_layer: int = 2
    conflict: float = 0.9
    # share of rows with nothing to arbitrate (image only, text only, agreeing, caption: `synth.capability_row`),
    # so that the model has a general capability in its world (the mf_shapes tasks) to score head sets against
    capability: float = 0.2
    kinds: tuple[float, float, float] = (0.25, 0.375, 0.375)  # color, counting, object_recognition
    # the model (Qwen2.5-VL); the tokenizer is a byte-level BPE trained on the training prompts
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_depth: int = 2
    vision_hidden_size: int = 96
    vision_heads: int = 2
    vocab_size: int = 600
    tokenizer_rows: int = 3000

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        return d


DEFAULT = TrainConfig()


def tokenizer_corpus(cfg: TrainConfig) -> str:
    from mf_harness.embedded.train import synth

    rows = synth.training_rows(cfg.seed, cfg.tokenizer_rows, synth.Mix(cfg.conflict, cfg.kinds, cfg.capability))
    lines = [synth.user_text(r) + "\n" + r["answer"] for r in rows]
    words = [w for ws in synth.answer_words().values() for w in ws]
    # every answer word must be one token, with and without a leading space
    lines += words * 50 + [" ".join(words)] * 50
    # the chat template's own words, so the template costs few tokens
    lines += [f"system\n{SYSTEM_PROMPT}\nuser\nassistant\n"] * 200
    lines += ["0123456789 , . ; : ! ? ' \" ( ) - _ / + = * # @ & % $"]
    return "\n".join(lines)


QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")


def build_tokenizer(cfg: TrainConfig):
    """Byte-level BPE (any text encodes) trained on the training prompts, with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=list(QWEN_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(cfg).splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def build_initial(out_dir: Path, cfg: TrainConfig) -> Path:
    """The untrained checkpoint (tokenizer, processor with the Qwen chat template, weights from ``cfg.seed``).

    Built here rather than with `mf_harness.tiny` so that the shipped model depends on this
    file only. Input and output embeddings are tied, as in the small Qwen2.5-VL checkpoints.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mf_harness.lmms.patches import install_processors
    from mf_harness.tiny import QWEN_CHAT_TEMPLATE

    install_processors()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    half = cfg.hidden_size // cfg.num_heads // 2
    t = half // 4 or 1
    hw = (half - t) // 2
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [t, hw, half - t - hw]},
            tie_word_embeddings=cfg.tie_embeddings, bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=cfg.vision_depth, hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_hidden_size * 2,
            num_heads=cfg.vision_heads, out_hidden_size=cfg.hidden_size, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=112, fullatt_block_indexes=[cfg.vision_depth - 1],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=cfg.tie_embeddings,
    )
    config.eos_token_id = ids["<|im_end|>"]
    config.pad_token_id = ids["<|endoftext|>"]
    torch.manual_seed(cfg.seed)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa")
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                                               do_sample=False)
    model.save_pretrained(out)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                        chat_template=QWEN_CHAT_TEMPLATE).save_pretrained(out)
    return out


RECORD = "mf_harness_train.json"
