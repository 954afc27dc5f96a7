"""Builders of the families added in late 2026 (LLaVA-NeXT, Qwen3.5, GLM-4.1V / GLM-4.5V); see
`mf_harness.tiny.builders`."""

from __future__ import annotations

from mf_harness.tiny.builders import _llama_tok_clip_vision, _qwen3_vision, _text_config
from mf_harness.tiny.config import TinyConfig, build_tokenizer
from mf_harness.tiny.templates import QWEN_SPECIAL_TOKENS
from mf_harness.tiny.templates_2026 import (GLM4V_CHAT_TEMPLATE, GLM4V_SPECIAL_TOKENS, LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE,
                                             QWEN3_5_CHAT_TEMPLATE)


def _build_llava_next(cfg: TinyConfig, extra_text: str):
    """llava-hf/llava-v1.6-mistral-7b-hf: CLIP ViT + Mistral, AnyRes tiling over grid pinpoints."""
    from transformers import LlavaNextConfig, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok, vision = _llama_tok_clip_vision(cfg, extra_text)
    # the real pinpoints ([[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]) over 336 px tiles,
    # scaled to 28 px tiles of 2x2 patches
    pinpoints = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]
    config = LlavaNextConfig(vision_config=vision,
                             text_config=dict(model_type="mistral", **_text_config(cfg, tok)),
                             image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
                             vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=4)
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                    image_grid_pinpoints=pinpoints)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE)
    return tok, config, proc, [tok.eos_token_id]


def _build_qwen3_5(cfg: TinyConfig, extra_text: str):
    """Qwen/Qwen3.5-*: a hybrid decoder, Gated DeltaNet (``linear_attn``, no heads to edit) beside gated full
    attention (``self_attn``); Qwen3-VL's vision tower without deepstack; Qwen3VLProcessor."""
    from transformers import Qwen3_5Config

    tok = build_tokenizer(QWEN_SPECIAL_TOKENS + ["<think>", "</think>"], cfg.vocab_target, extra_text)
    n = cfg.num_hidden_layers
    # the real ones: 3 linear-attention layers, then one full-attention layer; tiny: alternating (1, 3 have heads)
    layer_types = ["full_attention" if i % 2 else "linear_attention" for i in range(n)]
    head_dim = 2 * cfg.hidden_size // cfg.num_attention_heads  # o_proj takes heads * head_dim != hidden (as real)
    rot_half = head_dim // 8  # partial_rotary_factor 0.25: mrope sections sum to head_dim * 0.25 / 2
    mrope = [rot_half - 2 * (rot_half // 4), rot_half // 4, rot_half // 4]
    text = _text_config(cfg, tok, head_dim=head_dim, layer_types=layer_types, linear_conv_kernel_dim=4,
                        linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                        linear_num_value_heads=4, rope_parameters={
                            "rope_type": "default", "rope_theta": 10000000.0, "mrope_section": mrope,
                            "mrope_interleaved": True, "partial_rotary_factor": 0.25})
    config, proc = _qwen3_vision(Qwen3_5Config, cfg, tok, text, QWEN3_5_CHAT_TEMPLATE)
    return tok, config, proc, [tok.eos_token_id]


def _build_glm4v(cfg: TinyConfig, extra_text: str):
    """zai-org/GLM-4.1V-9B-Thinking (``glm4v``; also GLM-4.6V-Flash) and GLM-4.5V (``glm4v_moe``: the same but
    MoE MLPs after the first dense layer(s)): GLM-4 text decoder with 3-D mRoPE, a Qwen2-VL-like ViT (14 px
    patches merged 2x2), Glm4vProcessor."""
    from transformers import Glm4vConfig, Glm4vMoeConfig, Glm4vProcessor
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    tok = build_tokenizer(GLM4V_SPECIAL_TOKENS, cfg.vocab_target, extra_text, eos_token="<|endoftext|>",
                          pad_token="<|endoftext|>",
                          extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"})
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    # the real ones: head_dim 128, partial_rotary_factor 0.5, mrope_section [8, 12, 12] (sums to 128 * 0.5 / 2)
    quarter = head_dim // 4
    mrope = [quarter - 2 * (quarter // 3), quarter // 3, quarter // 3]
    moe = cfg.family == "glm4v_moe"
    # GLM-4.5V: 128 routed experts + 1 shared, 8 per token, layer 0 dense; tiny: 4 experts, 2 per token
    extra = dict(n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                 moe_intermediate_size=cfg.intermediate_size // 2, n_group=1, topk_group=1) if moe else {}
    text = _text_config(cfg, tok, head_dim=head_dim, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope, "partial_rotary_factor": 0.5},
        **extra)
    vision = dict(depth=cfg.vision_depth, hidden_size=cfg.vision_hidden_size,
                  intermediate_size=cfg.vision_hidden_size * 2, num_heads=cfg.vision_heads,
                  out_hidden_size=cfg.hidden_size, image_size=28, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    ids = {t: tok.convert_tokens_to_ids(t) for t in GLM4V_SPECIAL_TOKENS}
    klass = Glm4vMoeConfig if moe else Glm4vConfig
    config = klass(text_config=text, vision_config=vision, image_token_id=ids["<|image|>"],
                   video_token_id=ids["<|video|>"], image_start_token_id=ids["<|begin_of_image|>"],
                   image_end_token_id=ids["<|end_of_image|>"], video_start_token_id=ids["<|begin_of_video|>"],
                   video_end_token_id=ids["<|end_of_video|>"], tie_word_embeddings=False)
    # 28 px per merged token (the real ones: 112*112 to 28*28*15000 px)
    ip = Glm4vImageProcessorPil(size={"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 16}, patch_size=14,
                                merge_size=2, temporal_patch_size=2)
    # the tiny GLM-4.5V borrows GLM-4.1V's template: GLM-4.5V's own chat_template (with tools and /nothink) was not
    # found verbatim in the public sources searched; a real glm4v_moe checkpoint renders with its own template
    proc = Glm4vProcessor(image_processor=ip, tokenizer=tok, chat_template=GLM4V_CHAT_TEMPLATE)
    # generation_config.json: eos [<|endoftext|>, <|user|>, <|observation|>]
    return tok, config, proc, [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]


BUILDERS = {
    "qwen3_5": _build_qwen3_5,
    "llava_next": _build_llava_next,
    "glm4v": _build_glm4v,
    "glm4v_moe": _build_glm4v,
}
