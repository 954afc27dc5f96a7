"""Cost of per-head attribution (all heads, one captured pass) versus a plain forward.

Medium random Qwen2.5-VL (hidden 512, 8 layers x 8 heads), the bundled mfr_text docs at
lmms-eval's default image size (256 image tokens), batch 4. Both sides include encoding
the batch; the attribution side captures every site, reads out every layer at the
instruction tokens and the last position, and attributes the margin to all 64 heads.
Runs alternate so machine noise hits both alike. Goal: <= 1.5x.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(reps: int = 5, n_docs: int = 8) -> None:
    from loguru import logger

    logger.remove()
    from mf_harness.analysis import encode_samples, lens_and_attribution, load_task_docs, prepare_samples
    from mf_harness.lmms.model import IntervenedHF
    from mf_harness.tiny import MEDIUM, build_tiny_vlm

    with tempfile.TemporaryDirectory() as d:
        build_tiny_vlm(d, MEDIUM)
        lm = IntervenedHF(pretrained=d)
        task, docs = load_task_docs("mfr_text", limit=n_docs)
        samples = prepare_samples(lm, task, docs)
    batches = [samples[i: i + 4] for i in range(0, len(samples), 4)]

    def plain():
        with torch.inference_mode():
            for b in batches:
                enc, _ = encode_samples(lm, b)
                lm.model(**enc)

    def attribution():
        lens_and_attribution(lm, samples, k=3, batch_size=4, progress=False)

    plain(), attribution()  # warm-up
    tp, ta = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        plain()
        tp.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        attribution()
        ta.append(time.perf_counter() - t0)
    print(f"attribution_all_heads_vs_plain_forward: {statistics.median(ta) / statistics.median(tp):.3f}")
    print(f"attribution_bench_prompt_tokens: {samples[0].length}")


if __name__ == "__main__":
    main()
