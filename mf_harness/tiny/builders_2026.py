"""Builders of the families added with issue 17, part 2 (GLM-4.1V / GLM-4.5V); see `mf_harness.tiny.builders`."""

from __future__ import annotations

from mf_harness.tiny.builders import _text_config
from mf_harness.tiny.config import TinyConfig, build_tokenizer
from mf_harness.tiny.templates_2026 import GLM4V_CHAT_TEMPLATE, GLM4V_SPECIAL_TOKENS


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
    "glm4v": _build_glm4v,
    "glm4v_moe": _build_glm4v,
}
