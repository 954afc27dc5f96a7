"""Builders of the families added in late 2026 (LLaVA-NeXT, Qwen3.5, GLM-4.1V / GLM-4.5V, Gemma 4); see
`mf_harness.tiny.builders`."""

from __future__ import annotations

from mf_harness.tiny.builders import _llama_tok_clip_vision, _qwen3_vision, _text_config
from mf_harness.tiny.config import TinyConfig, build_tokenizer
from mf_harness.tiny.templates import QWEN_SPECIAL_TOKENS
from mf_harness.tiny.templates_2026 import (GEMMA4_CHAT_TEMPLATE, GEMMA4_EXTRA_SPECIAL_TOKENS, GEMMA4_SPECIAL_TOKENS,
                                             GLM4V_CHAT_TEMPLATE, GLM4V_SPECIAL_TOKENS,
                                             LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE, QWEN3_5_CHAT_TEMPLATE)


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
    from transformers import Qwen3_5Config, Qwen3_5MoeConfig

    tok = build_tokenizer(QWEN_SPECIAL_TOKENS + ["<think>", "</think>"], cfg.vocab_target, extra_text)
    # Qwen3.5-35B-A3B / -397B-A17B (qwen3_5_moe): the same hybrid attention, MoE MLPs (256 routed experts, 8 per
    # token, a shared expert); tiny: 4 experts, 2 per token
    moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=cfg.intermediate_size // 2,
               shared_expert_intermediate_size=cfg.intermediate_size // 2) if cfg.family == "qwen3_5_moe" else {}
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
                            "mrope_interleaved": True, "partial_rotary_factor": 0.25}, **moe)
    config, proc = _qwen3_vision(Qwen3_5MoeConfig if moe else Qwen3_5Config, cfg, tok, text, QWEN3_5_CHAT_TEMPLATE)
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


def _build_gemma4(cfg: TinyConfig, extra_text: str):
    """google/gemma-4-31B-it (lmms-eval's gemma4 default), with the per-layer inputs and shared KV of
    gemma-4-E2B/E4B-it on top, so that one tiny checkpoint has every attention and residual path of the family
    (no published checkpoint has all of them; values from transformers' convert_gemma4_weights.py):

    * sliding-window layers with ``head_dim`` and full-attention layers with ``global_head_dim`` twice as wide
      (256 / 512 in every real one), so ``o_proj.in_features`` is ``heads * 16`` or ``heads * 32``; the same number of
      query heads in every layer;
    * full layers with ``attention_k_eq_v`` (no ``v_proj``: the keys are the values) and fewer KV heads
      (``num_global_key_value_heads``; 31B: 16 -> 4, 26B-A4B: 8 -> 2; tiny: 2 -> 1), as 31B and 26B-A4B;
    * ``use_bidirectional_attention="vision"`` (31B, 26B-A4B): image tokens attend to each other both ways in the
      sliding layers only;
    * per-layer inputs (PLE, ``hidden_size_per_layer_input``; E2B/E4B: 256, the large ones: 0): every decoder layer
      adds a gated per-token embedding to the residual after its MLP;
    * KV sharing (E2B: the last 20 of 35 layers, E4B: 18 of 42; tiny: the last half): those layers have ``q_proj``
      and ``o_proj`` but no ``k_proj``/``v_proj``, and attend over the K/V of the last unshared layer of their type.
      ``generate``'s prefill runs them on the last position only (``Gemma4TextModel._maybe_slice_kv_shared_inputs``,
      with eager/sdpa), so their ``o_proj`` input then has sequence length 1; a plain ``forward`` runs every position;
    * ``use_double_wide_mlp`` (E2B): twice the MLP width in the KV-shared layers;
    * final logit softcapping 30 and tied embeddings (all of them).

    Not copied: the 26B-A4B's MoE (``enable_moe_block``: MLP only, no heads) and the E-models' audio tower
    (``audio_config=None``; lmms-eval's wrapper sends no audio, the processor still has its feature extractor).
    Layer pattern: the real ones have 5 sliding layers per full one (E2B: 4), the last layer full; tiny: alternating
    (sliding, full, ...), so a full layer is not only the last one.
    """
    from transformers import Gemma4Config, Gemma4Processor
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    # the Gemma tokenizer adds no BOS (the chat template writes <bos>); eos <eos>, pad <pad>, left padding
    tok = build_tokenizer(GEMMA4_SPECIAL_TOKENS, cfg.vocab_target, extra_text, eos_token="<eos>", pad_token="<pad>",
                          bos_token="<bos>", extra_special_tokens=dict(GEMMA4_EXTRA_SPECIAL_TOKENS))
    tok.unk_token, tok.mask_token = "<unk>", "<mask>"
    n = cfg.num_hidden_layers
    layer_types = ["full_attention" if i % 2 else "sliding_attention" for i in range(n)]
    layer_types[-1] = "full_attention"  # (Gemma4TextConfig forces it)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    text = _text_config(
        cfg, tok, head_dim=head_dim, global_head_dim=2 * head_dim, layer_types=layer_types,
        attention_k_eq_v=True, num_global_key_value_heads=max(1, cfg.num_key_value_heads // 4),
        use_bidirectional_attention="vision", sliding_window=512,  # E2B/E4B: 512, 31B/26B-A4B: 1024
        hidden_size_per_layer_input=cfg.hidden_size // 4, vocab_size_per_layer_input=len(tok),
        num_kv_shared_layers=n // 2 if n >= 4 else 0, use_double_wide_mlp=True, final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                            "rope_theta": 1000000.0}})
    # the 31B / 26B-A4B vision tower (no clipped linears, standardized output; E2B/E4B: clipped, not standardized),
    # 4 px patches (real: 16) pooled 3x3 (as real); 1024 positions per axis (real: 10240) cover any image at up to
    # 280 soft tokens (at most 3 * 280 patches along a side)
    vision = dict(hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_hidden_size * 2,
                  num_hidden_layers=cfg.vision_depth, num_attention_heads=cfg.vision_heads,
                  num_key_value_heads=cfg.vision_heads, head_dim=cfg.vision_hidden_size // cfg.vision_heads,
                  patch_size=4, pooling_kernel_size=3, position_embedding_size=1024, use_clipped_linears=False,
                  standardize=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in GEMMA4_SPECIAL_TOKENS}
    config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None,
                          image_token_id=ids["<|image|>"], boi_token_id=ids["<|image>"], eoi_token_id=ids["<image|>"],
                          video_token_id=ids["<|video|>"], audio_token_id=ids["<|audio|>"],
                          boa_token_id=ids["<|audio>"], eoa_token_index=ids["<audio|>"], tie_word_embeddings=True)
    config.eos_token_id = [ids["<eos>"], ids["<turn|>"]]  # config.json of the -it checkpoints: [1, 106]
    # The processor resizes every image (up or down, aspect ratio kept) to the largest size whose patches pool to at
    # most `max_soft_tokens` soft tokens (one of 70, 140, 280, 560, 1120; lmms-eval's wrapper passes 280, the real
    # default): the number of image tokens depends on that budget and the aspect ratio, not on the image or patch
    # size (a square image: 16 x 16 = 256 tokens at 280, 8 x 8 = 64 at 70). Patch size and pooling only set the
    # pixels the tower sees: 280 * 9 patches of 4 x 4 px (a square image becomes 192 x 192 px).
    ip = Gemma4ImageProcessorPil(patch_size=4, max_soft_tokens=280, pooling_kernel_size=3, do_normalize=False)
    proc = Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(), image_processor=ip, tokenizer=tok,
                           video_processor=None, chat_template=GEMMA4_CHAT_TEMPLATE, image_seq_length=280)
    # generation_config.json of the -it checkpoints: eos [<eos>, <turn|>, <|tool_response>] = [1, 106, 50]
    return tok, config, proc, [ids["<eos>"], ids["<turn|>"], ids["<|tool_response>"]]


BUILDERS = {
    "qwen3_5": _build_qwen3_5,
    "qwen3_5_moe": _build_qwen3_5,
    "llava_next": _build_llava_next,
    "glm4v": _build_glm4v,
    "glm4v_moe": _build_glm4v,
    "gemma4": _build_gemma4,
}
