"""The benches' model and prompt: Qwen2.5-VL-7B's attention geometry with a realistic prompt.

A random Qwen2.5-VL with the 7B's head layout (28 layers x 28 query heads, 4 KV heads; hidden size
shrunk to 224 so it runs on a CPU) and a modality-conflict prompt with one 896x896 image (1,024
image tokens) and a suffix from the first instruction token on of ~60 tokens (the paper's MC2
instruction, a question and the answer format; a 2,000-token BPE vocabulary splits this English
about as Qwen's tokenizer does), as `bench_discovery.py` and `bench_sweep.py` time it.

`mac_floor` counts multiply-accumulates per layer and token, with attention's share growing with the
key length (at a shrunk hidden size it is as large as the projections': a suffix token attends to
the whole prompt, an average prompt token to half of it), for floors in plain-forward equivalents.
"""

from __future__ import annotations

import tempfile

# the paper's instruction for MC2-style prompts (text as the modality to follow)
INSTRUCTION = ("In case there is an inconsistency between the Text Context and the input image content, "
               "you must rely on the text context rather than the input image content.")
IMAGE_SIDE = 896  # 896 x 896 pixels -> 32 x 32 merged patches = 1,024 image tokens


def build_lm(**kwargs):
    """The wrapper on a fresh random model of this geometry (sdpa attention, fp32, CPU or the one GPU)."""
    import torch

    from mf_harness.lmms.model import IntervenedHF
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    torch.manual_seed(0)
    d = tempfile.mkdtemp()
    build_tiny_vlm(d, TinyConfig(hidden_size=224, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                 intermediate_size=448, vision_depth=1, vision_hidden_size=64, vision_heads=2,
                                 vocab_target=2000, attn_implementation="sdpa"))
    px = IMAGE_SIDE * IMAGE_SIDE
    return IntervenedHF(pretrained=d, min_pixels=px, max_pixels=px, **kwargs)


def doc(i: int = 0) -> dict:
    from PIL import Image

    return {"instruction": INSTRUCTION, "compliant_answers": ["three"], "competing_answers": ["two"],
            "context": "The living room has three couches and a blue rug.", "question": "How many couches are there?",
            "format_instruction": "Answer the question with a single word.",
            "image": Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), (120, 90 + 20 * i, 200 - 30 * i))}


def doc_to_text(d: dict) -> str:
    return f"Text context: {d['context']}\n{d['instruction']} {d['question']}\n{d['format_instruction']}"


def mac_floor(lm, prompt: int, rows: list[tuple[int, int]]) -> float:
    """Rows' cost over one plain forward, in multiply-accumulates: each row is ``(first_layer, first_position)``,
    computing every position from ``first_position`` on through the layers from ``first_layer`` on (the plain
    forward: ``(0, 0)``). Per layer and token: the q/k/v/o projections, the MLP, and attention over the keys up to
    the token (scores and weighted values). The vision tower and the LM head are left out."""
    tc = lm.model.config.get_text_config(decoder=True)
    D, H, KV, inter, L = (tc.hidden_size, tc.num_attention_heads, tc.num_key_value_heads, tc.intermediate_size,
                          tc.num_hidden_layers)
    d = D // H
    fixed = 2 * D * H * d + 2 * D * KV * d + 3 * D * inter

    def cost(layer0: int, pos0: int) -> float:
        tokens = prompt - pos0
        attn = 2 * H * d * sum(range(pos0 + 1, prompt + 1))
        return (L - layer0) * (tokens * fixed + attn)

    return sum(cost(l, p) for l, p in rows) / cost(0, 0)
