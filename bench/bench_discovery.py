"""Head discovery at Qwen2.5-VL-7B's head layout, measured side by side in one run.

A random Qwen2.5-VL with the 7B's attention geometry (28 layers x 28 query heads, 4 KV heads; hidden
size shrunk to 224 so it runs on a CPU) and a realistic prompt: one 896x896 image (1,024 image
tokens) and a modality-conflict prompt whose suffix from the first instruction token on is ~60
tokens (`bench/geometry.py`). Figures (`name: value`, each a ratio to one plain forward of the same sample, timed in this
run; the naive figure beside each):

* ablation_all_heads_vs_plain_forward: exact single-head ablation of all 784 heads at the
  instruction tokens, prefix-shared and forked at each head's layer
  (`mf_harness.analysis.attribution.prefix_shared_ablation`); goal <= 40. The floor printed beside
  it is what every head's row must recompute: the suffix from its own layer on, in plain-forward
  equivalents (784 x suffix / prompt x (L + 1) / 2L), and the same in multiply-accumulates
  (`geometry.mac_floor`: a suffix token attends to the whole prompt, which at this shrunk hidden
  size costs as much as its projections), with the measured ratio over it;
* ablation_all_heads_naive_vs_plain_forward: one full forward per head (timed on 16 heads,
  scaled to 784: each head costs the same full forward);
* atp_all_heads_vs_plain_forward: attribution patching (one forward + one backward); goal <= 3;
* peak_rss_mb_*: the process's peak resident memory during each measurement (Linux: VmHWM after
  resetting it through /proc/self/clear_refs; elsewhere a 5 ms sampler), or on CUDA
  torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import geometry as G  # noqa: E402  (bench/geometry.py)
from peak import peak_mb  # noqa: E402  (bench/peak.py)

REPS = int(os.environ.get("MF_BENCH_REPS", 3))
NAIVE_HEADS = 16


def main() -> None:
    from loguru import logger

    logger.remove()

    from mf_harness.analysis.attribution import attribution_patching, prefix_shared_ablation
    from mf_harness.analysis.measures import ablation_effects, final_margins
    from mf_harness.analysis.samples import prepare_samples
    from mf_harness.core.spec import Head

    lm = G.build_lm()
    geo = lm.geometry

    class Task:  # the few task hooks prepare_samples reads
        class config:
            task = "bench"

        doc_to_text = staticmethod(G.doc_to_text)

        @staticmethod
        def doc_to_visual(doc):
            return [doc["image"]]

    doc = G.doc()
    (sample,) = prepare_samples(lm, Task, [doc])
    heads = [Head(l, h) for l in range(geo.num_layers) for h in range(geo.num_heads)]
    prompt = sample.length
    suffix = prompt - min(sample.token_sets["instruction"])

    def plain():
        final_margins(lm, [sample])

    def shared():
        prefix_shared_ablation(lm, [sample], "instruction", heads, max_rows=64, progress=False)

    def naive():
        ablation_effects(lm, [sample], scope="instruction", heads=heads[:NAIVE_HEADS], progress=False,
                         share_prefix=False)

    def atp():
        attribution_patching(lm, [sample], scope="instruction", progress=False)

    plain()  # warm-up
    runs = {name: [peak_mb(f) for _ in range(REPS)] for name, f in
            (("plain", plain), ("shared", shared), ("naive", naive), ("atp", atp), ("plain2", plain))}
    t = {k: min(dt for dt, _ in v) for k, v in runs.items()}  # the least disturbed run of each (shared machine)
    mem = {k: max(mb for _, mb in v) for k, v in runs.items()}
    t_plain = min(t["plain"], t["plain2"])
    # every head's row recomputes the suffix from its own layer on: sum over layers of (L - l) / L layer-passes
    L = geo.num_layers
    floor = geo.num_heads * suffix / prompt * sum((L - l) / L for l in range(L))
    p0 = prompt - suffix
    macs = G.mac_floor(lm, prompt, [(h.layer + 1, p0) for h in heads])
    print(f"discovery_bench_geometry: {geo.num_layers}x{geo.num_heads} heads, {prompt} prompt tokens "
          f"({len(sample.token_sets['image'])} image), suffix {suffix}")
    print(f"ablation_all_heads_vs_plain_forward: {t['shared'] / t_plain:.1f}")
    print(f"ablation_all_heads_floor_forward_equivalents: {floor:.1f} (tokens x layers)")
    print(f"ablation_all_heads_floor_macs: {macs:.1f} (measured / floor: {t['shared'] / t_plain / macs:.2f})")
    print(f"ablation_all_heads_naive_vs_plain_forward: {t['naive'] * len(heads) / NAIVE_HEADS / t_plain:.1f}")
    print(f"atp_all_heads_vs_plain_forward: {t['atp'] / t_plain:.2f}")
    print(f"peak_rss_mb_plain_forward: {mem['plain']:.0f}" if not torch.cuda.is_available() else
          f"peak_cuda_mb_plain_forward: {mem['plain']:.0f}")
    unit = "cuda" if torch.cuda.is_available() else "rss"
    print(f"peak_{unit}_mb_ablation_all_heads: {mem['shared']:.0f}")
    print(f"peak_{unit}_mb_ablation_naive: {mem['naive']:.0f}")
    print(f"peak_{unit}_mb_atp: {mem['atp']:.0f}")


if __name__ == "__main__":
    main()
