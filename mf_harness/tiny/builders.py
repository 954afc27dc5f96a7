"""One builder per family: (tokenizer, config, processor, stop token ids) of a tiny real checkpoint."""

from __future__ import annotations

from typing import Any

from mf_harness.tiny.config import TinyConfig, build_tokenizer
from mf_harness.tiny.templates import (QWEN_CHAT_TEMPLATE, QWEN3_CHAT_TEMPLATE, INTERNVL_CHAT_TEMPLATE, LLAVA_CHAT_TEMPLATE, LLAVA_ONEVISION_CHAT_TEMPLATE, GEMMA3_CHAT_TEMPLATE, IDEFICS3_CHAT_TEMPLATE, SMOLVLM_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS)


def _text_config(cfg: TinyConfig, tokenizer, **extra) -> dict[str, Any]:
    """The text model's sizes, shared by every builder (``extra`` overrides)."""
    d = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if tokenizer.bos_token_id is not None:
        d["bos_token_id"] = tokenizer.bos_token_id
    d.update(extra)
    return d


def _vision(cfg: TinyConfig, **extra) -> dict[str, Any]:
    """A one-block ViT over 28x28 tiles."""
    d = dict(hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_hidden_size * 2,
             num_hidden_layers=cfg.vision_depth, num_attention_heads=cfg.vision_heads, image_size=28, patch_size=7)
    d.update(extra)
    return d


# ------------------------------------------------------------------ Qwen2-VL / Qwen2.5-VL (unchanged layout)


def _qwen_config(cfg: TinyConfig, tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    head_dim = cfg.hidden_size // cfg.num_attention_heads
    # mrope sections (t, h, w) must sum to head_dim / 2
    half = head_dim // 2
    t = half // 4 or 1
    hw = (half - t) // 2
    mrope = [t, hw, half - t - hw]
    ids = {t_: tokenizer.convert_tokens_to_ids(t_) for t_ in QWEN_SPECIAL_TOKENS}
    text = _text_config(
        cfg, tokenizer,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
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
        raise ValueError(f"not a Qwen2 family: {cfg.family!r}")
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


def _qwen_processor(tokenizer, family: str):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    klass = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
    return klass(image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)


def _build_qwen2(cfg: TinyConfig, extra_text: str):
    tokenizer = build_tokenizer(QWEN_SPECIAL_TOKENS, cfg.vocab_target, extra_text)
    config = _qwen_config(cfg, tokenizer)
    return tokenizer, config, _qwen_processor(tokenizer, cfg.family), [config.eos_token_id]


# ------------------------------------------------------------------ the other families


def _build_qwen3_vl(cfg: TinyConfig, extra_text: str):
    """Qwen3-VL, and Qwen3-VL-MoE (the same but a sparse-MoE MLP in every decoder layer)."""
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    tok = build_tokenizer(QWEN_SPECIAL_TOKENS, cfg.vocab_target, extra_text)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 4), half // 4, half // 4]  # (t, h, w), interleaved, sums to head_dim / 2
    moe = cfg.family == "qwen3_vl_moe"
    # Qwen3-VL-30B-A3B: 128 experts, 8 per token, every layer sparse; tiny: 4 experts, 2 per token
    extra = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=cfg.intermediate_size // 2,
                 decoder_sparse_step=1, mlp_only_layers=[]) if moe else {}
    text = _text_config(cfg, tok, head_dim=head_dim, rope_parameters={
        "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": mrope, "mrope_interleaved": True}, **extra)
    klass = Qwen3VLMoeConfig if moe else Qwen3VLConfig
    config, proc = _qwen3_vision(klass, cfg, tok, text, QWEN3_CHAT_TEMPLATE, deepstack_visual_indexes=[0])
    return tok, config, proc, [tok.eos_token_id]


def _qwen3_vision(klass, cfg: TinyConfig, tok, text: dict, chat_template: str, **vision_extra):
    """Qwen3-VL's vision tower (16 px patches merged 2x2), its image-token ids and processor, around ``text``:
    (``klass`` config, Qwen3VLProcessor) for Qwen3-VL(-MoE) and Qwen3.5."""
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vision = dict(depth=cfg.vision_depth, hidden_size=cfg.vision_hidden_size,
                  intermediate_size=cfg.vision_hidden_size * 2, num_heads=cfg.vision_heads,
                  out_hidden_size=cfg.hidden_size, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=16, **vision_extra)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = klass(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                   video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                   vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    ip = Qwen2VLImageProcessorPil(min_pixels=32 * 32, max_pixels=32 * 32 * 64, patch_size=16, merge_size=2,
                                  temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return config, Qwen3VLProcessor(image_processor=ip, tokenizer=tok, chat_template=chat_template)


def _build_internvl(cfg: TinyConfig, extra_text: str):
    from transformers import InternVLConfig, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tok = build_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                           "<video>"], cfg.vocab_target, extra_text,
                          extra_special_tokens={"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>",
                                                "end_image_token": "</img>", "video_token": "<video>"})
    # 28x28 tiles of 7x7 patches, pixel-shuffled by 0.5: 4 tokens per tile
    config = InternVLConfig(vision_config=_vision(cfg, image_size=[28, 28], patch_size=[7, 7]),
                            text_config=dict(model_type="qwen2", **_text_config(cfg, tok)),
                            image_token_id=tok.context_image_token_id, image_seq_length=4, downsample_ratio=0.5,
                            tie_word_embeddings=False)
    ip = GotOcr2ImageProcessorPil(size={"height": 28, "width": 28}, crop_to_patches=True, min_patches=1,
                                  max_patches=12, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    proc = InternVLProcessor(image_processor=ip, tokenizer=tok, image_seq_length=4,
                             chat_template=INTERNVL_CHAT_TEMPLATE)
    return tok, config, proc, [tok.eos_token_id]


def _llama_tok_clip_vision(cfg: TinyConfig, extra_text: str):
    """LLaVA-1.5 / LLaVA-NeXT: a Llama-style tokenizer (BOS added, ``<image>``) and a CLIP ViT config of 28 px
    images in 14 px patches (2x2 patches + CLS)."""
    tok = build_tokenizer(["<unk>", "<s>", "</s>", "<image>", "<pad>"], cfg.vocab_target, extra_text,
                          eos_token="</s>", pad_token="<pad>", bos_token="<s>", add_bos=True,
                          extra_special_tokens={"image_token": "<image>"})
    vision = dict(model_type="clip_vision_model", hidden_size=cfg.vision_hidden_size,
                  intermediate_size=cfg.vision_hidden_size * 2, num_hidden_layers=cfg.vision_depth,
                  num_attention_heads=cfg.vision_heads, image_size=28, patch_size=14,
                  projection_dim=cfg.vision_hidden_size)
    return tok, vision


def _build_llava(cfg: TinyConfig, extra_text: str):
    from transformers import LlavaConfig, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok, vision = _llama_tok_clip_vision(cfg, extra_text)
    config = LlavaConfig(vision_config=vision,
                         text_config=dict(model_type="llama", **_text_config(cfg, tok)),
                         image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=4,
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    ip = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    return tok, config, proc, [tok.eos_token_id]


def _build_llava_onevision(cfg: TinyConfig, extra_text: str):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tok = build_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"], cfg.vocab_target,
                          extra_text, extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    vision = _vision(cfg, patch_size=14)  # 2x2 patches per 28x28 tile
    config = LlavaOnevisionConfig(vision_config=dict(model_type="siglip_vision_model", **vision),
                                  text_config=dict(model_type="qwen2", **_text_config(cfg, tok)),
                                  image_token_index=tok.convert_tokens_to_ids("<image>"),
                                  video_token_index=tok.convert_tokens_to_ids("<video>"),
                                  image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", tie_word_embeddings=False)
    ip = LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints)
    proc = LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=None, num_image_tokens=4,
                                   vision_feature_select_strategy="full", chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE)
    return tok, config, proc, [tok.eos_token_id]


def _build_gemma3(cfg: TinyConfig, extra_text: str):
    from transformers import Gemma3Config, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                "<end_of_image>", "<image_soft_token>"]
    tok = build_tokenizer(specials, cfg.vocab_target, extra_text, eos_token="<eos>", pad_token="<pad>",
                          bos_token="<bos>", add_bos=True,
                          extra_special_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                                "eoi_token": "<end_of_image>"})
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    text = _text_config(cfg, tok, head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=512)
    # 28x28 image, 7x7 patches (4x4), pooled to 2x2 = 4 soft tokens
    config = Gemma3Config(text_config=text, vision_config=dict(model_type="siglip_vision_model", **_vision(cfg)),
                          mm_tokens_per_image=4, boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id, tie_word_embeddings=False)
    ip = Gemma3ImageProcessorPil(size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=4)
    return tok, config, proc, [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]


def _build_idefics(cfg: TinyConfig, extra_text: str):
    from transformers import Idefics3Config, SmolVLMConfig

    smol = cfg.family == "smolvlm"
    rows = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    if smol:  # SmolLM2's tokenizer: no BOS added; the image tokens are in the vocabulary
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>",
                    "<image>", "<global-img>", *rows]
        tok = build_tokenizer(specials, cfg.vocab_target, extra_text, eos_token="<end_of_utterance>",
                              pad_token="<|im_end|>", bos_token="<|im_start|>",
                              extra_special_tokens={"image_token": "<image>",
                                                    "fake_image_token": "<fake_token_around_image>",
                                                    "global_image_token": "<global-img>",
                                                    "end_of_utterance_token": "<end_of_utterance>"})
    else:  # Llama 3's tokenizer: BOS added; Idefics3Processor adds the image tokens itself
        tok = build_tokenizer(["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<global-img>",
                               *rows], cfg.vocab_target, extra_text, eos_token="<|end_of_text|>",
                              pad_token="<|finetune_right_pad_id|>", bos_token="<|begin_of_text|>", add_bos=True,
                              extra_special_tokens={})
    proc = _idefics_processor(tok, smol)  # may add tokens: size the model after it
    vision = _vision(cfg)  # 28x28 tiles of 7x7 patches, pixel-shuffled by 2: 4 tokens per tile
    klass = SmolVLMConfig if smol else Idefics3Config
    config = klass(vision_config=vision, text_config=dict(model_type="llama", **_text_config(cfg, tok)),
                   image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2, tie_word_embeddings=False)
    eou = tok.convert_tokens_to_ids("<end_of_utterance>")
    return tok, config, proc, [eou] if smol else [eou, tok.eos_token_id]


def _idefics_processor(tok, smol: bool):
    from transformers import Idefics3Processor, SmolVLMProcessor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    # images up to 56 px are split into 28 px tiles plus a global view (the real ones: 4x364 / 512)
    sizes = dict(size={"longest_edge": 56}, max_image_size={"longest_edge": 28}, do_image_splitting=True,
                 image_mean=[0.5] * 3, image_std=[0.5] * 3)
    if smol:
        return SmolVLMProcessor(image_processor=SmolVLMImageProcessorPil(**sizes), tokenizer=tok,
                                video_processor=None, image_seq_len=4, chat_template=SMOLVLM_CHAT_TEMPLATE)
    return Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**sizes), tokenizer=tok, image_seq_len=4,
                             chat_template=IDEFICS3_CHAT_TEMPLATE)


_BUILDERS = {
    "qwen2_5_vl": _build_qwen2,
    "qwen2_vl": _build_qwen2,
    "qwen3_vl": _build_qwen3_vl,
    "qwen3_vl_moe": _build_qwen3_vl,
    "internvl": _build_internvl,
    "llava": _build_llava,
    "llava_onevision": _build_llava_onevision,
    "gemma3": _build_gemma3,
    "idefics3": _build_idefics,
    "smolvlm": _build_idefics,
}


def _more():
    from mf_harness.tiny.builders_2026 import BUILDERS

    return BUILDERS


_BUILDERS.update(_more())
