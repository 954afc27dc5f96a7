"""Overhead of the head-intervention hooks versus a plain forward, measured side by side.

A medium random Qwen2.5-VL (hidden 512, 8 layers x 8 heads, 256 image tokens,
~130 text tokens, batch 2) runs the same prefill forward three ways, interleaved
round-robin so machine noise hits all three alike:

* plain: ``model(**inputs)``
* empty spec: inside ``intervene(model, plan)`` with an empty plan (what the wrapper does for no spec)
* 40-head spec: 40 of the 64 heads blocked at 30 instruction positions per row

Prints ``name: value`` lines: ratios of median times (goal <= 1.02 and <= 1.05).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(reps: int = 15) -> None:
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mf_harness.lmms.patches import install_processors
    from mf_harness.core.arch import geometry
    from mf_harness.core.hooks import HeadPlan, intervene
    from mf_harness.core.spec import InterventionSpec
    from mf_harness.tiny import MEDIUM, build_tiny_vlm

    torch.set_num_threads(max(1, torch.get_num_threads()))
    install_processors()
    with tempfile.TemporaryDirectory() as d:
        path = build_tiny_vlm(d, MEDIUM)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
        proc = AutoProcessor.from_pretrained(path)
    geo = geometry(model)
    context = " ".join(["The square in the picture is blue and it sits on a small table."] * 8)
    instruction = "You should follow the textual context rather than the visual content. " * 2
    text = f"Text context: {context}\n{instruction}What colour is the shape?\nAnswer the question with a single word."
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    rendered = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    img = Image.new("RGB", (448, 448), (200, 40, 40))  # 448x448 -> 256 image tokens
    inputs = proc(text=[rendered] * 2, images=[img, img], return_tensors="pt", padding=True)
    B, S = inputs["input_ids"].shape
    heads = [(layer, h) for layer in range(geo.num_layers) for h in range(geo.num_heads)][-40:]
    spec = InterventionSpec(block=heads)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[:, S - 50: S - 20] = True  # 30 instruction-like positions per row
    plan40 = HeadPlan.build([spec, spec], mask, geo.num_layers, geo.num_heads)

    def plain():
        return model(**inputs)

    def empty():
        with intervene(model, None):
            return model(**inputs)

    def forty():
        with intervene(model, plan40):
            return model(**inputs)

    times = {"plain": [], "empty": [], "forty": []}
    fns = {"plain": plain, "empty": empty, "forty": forty}
    with torch.inference_mode():
        for f in fns.values():  # warm-up
            f()
        for _ in range(reps):
            for name, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"overhead_empty_spec_vs_plain_forward: {med['empty'] / med['plain']:.3f}")
    print(f"overhead_40_head_spec_vs_plain_forward: {med['forty'] / med['plain']:.3f}")
    print(f"overhead_bench_tokens_per_row: {S}")


if __name__ == "__main__":
    main()
