"""Sweep cost near the physical limit, measured side by side in one run.

Qwen2.5-VL-7B's head layout (28 layers x 28 heads, 4 KV heads, hidden shrunk to 224) and a
realistic prompt (1,024 image tokens, a suffix of ~60 tokens from the first instruction token on:
`bench/geometry.py`), 3 samples, greedy answers of 4 tokens; the 50 specs block or amplify 10-40
random heads each. Figures (`name: value`):

* sweep_50_specs_vs_one_unintervened_pass: 50 specs per sample with the multi-spec runner
  (per-row specs, shared prefix, one vision pass) / one plain pass over the same samples
  (goal <= 5x; a naive sweep is ~50x);
* sweep_50_specs_naive_vs_multispec: the naive loop (one full generate per spec) / the runner;
  the naive loop is timed on its first 10 specs and scaled by 5 (each spec costs the same full
  pass), to keep `make bench` short;
* wrapper_empty_spec_vs_plain_generate_samples_per_s: intervened_qwen's generate_until with an
  empty spec / plain transformers generate on the same inputs (samples per second; goal >= 1.0);
* sweep_50_specs_floor_forward_equivalents: 1 + specs x suffix / prompt (every position from the
  first instruction token on differs between specs), and the measured ratio over it; the same
  floor in multiply-accumulates (`geometry.mac_floor`: suffix tokens attend to the whole prompt);
* peak_rss_mb_*: the process's peak resident memory during each measurement (`bench/peak.py`:
  VmHWM after a reset on Linux; on CUDA the peak allocated GPU memory).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import geometry as G  # noqa: E402  (bench/geometry.py)
from peak import peak_mb  # noqa: E402  (bench/peak.py)

N_SAMPLES = int(os.environ.get("MF_BENCH_SAMPLES", 3))
N_SPECS = 50


def main() -> None:
    from loguru import logger

    logger.remove()
    from lmms_eval.api.instance import Instance

    from mf_harness.lmms.fast_engine import MultiSpecRunner
    from mf_harness.core.spec import Head, InterventionSpec

    lm = G.build_lm(batch_size=N_SAMPLES)
    geo = lm.geometry
    docs = [G.doc(i) for i in range(N_SAMPLES)]
    ctxs = [G.doc_to_text(d) for d in docs]
    rng = random.Random(0)
    all_heads = [Head(l, h) for l in range(geo.num_layers) for h in range(geo.num_heads)]
    specs = [InterventionSpec()]
    while len(specs) < N_SPECS:
        k = rng.choice([10, 20, 30, 40])
        heads = rng.sample(all_heads, k)
        specs.append(InterventionSpec(block=heads) if rng.random() < 0.5 else
                     InterventionSpec(amplify=heads, coefficient=rng.choice([8, 10, 12])))
    gen = {"max_new_tokens": 4, "min_new_tokens": 4, "until": []}
    images = [lm.visuals(lambda d: [d["image"]], doc, "b") for doc in docs]
    runner = MultiSpecRunner(lm, max_rows=N_SPECS)
    rendered0, _ = lm.codec.render(ctxs[0], 1)
    n_tokens = lm.codec.encode([rendered0], [images[0]])["input_ids"].shape[1]

    def one_pass():
        for c, im, doc in zip(ctxs, images, docs):
            runner_plain.generate(c, im, doc, [InterventionSpec()], gen)

    runner_plain = MultiSpecRunner(lm, share_prefix=False)

    def multispec():
        for c, im, doc in zip(ctxs, images, docs):
            runner.generate(c, im, doc, specs, gen)

    def naive():  # the first 10 specs; x5 below
        for c, im, doc in zip(ctxs, images, docs):
            for s in specs[:10]:
                runner_plain.generate(c, im, doc, [s], gen)

    def timed(f):
        return peak_mb(f)

    one_pass()  # warm-up
    t_one, m_one = timed(one_pass)
    t_multi, m_multi = timed(multispec)
    t_one2, _ = timed(one_pass)
    t_naive, m_naive = timed(naive)
    t_naive *= N_SPECS / 10
    t_one = min(t_one, t_one2)
    # the floor: every position from the first intervened token on differs between specs
    enc0 = lm.codec.encode([rendered0], [images[0]])
    p0 = runner.prefix_length(runner.plan(specs, rendered0, lm.codec.render(ctxs[0], 1)[1], enc0, docs[0], "b"), enc0)
    floor = 1 + N_SPECS * (n_tokens - p0) / n_tokens
    macs = 1 + G.mac_floor(lm, n_tokens, [(0, p0)] * N_SPECS)
    print(f"sweep_bench_prompt_tokens: {n_tokens} (suffix from the first instruction token: {n_tokens - p0})")
    print(f"sweep_50_specs_vs_one_unintervened_pass: {t_multi / t_one:.2f}")
    print(f"sweep_50_specs_floor_forward_equivalents: {floor:.2f} (measured / floor: {t_multi / t_one / floor:.2f})")
    print(f"sweep_50_specs_floor_macs: {macs:.2f} (measured / floor: {t_multi / t_one / macs:.2f})")
    print(f"sweep_50_specs_naive_vs_one_unintervened_pass: {t_naive / t_one:.2f}")
    print(f"sweep_50_specs_naive_vs_multispec: {t_naive / t_multi:.2f}")
    unit = "gpu_mb" if torch.cuda.is_available() else "rss_mb"
    print(f"peak_{unit}_one_pass: {m_one:.0f}")
    print(f"peak_{unit}_multispec_50: {m_multi:.0f}")
    print(f"peak_{unit}_naive_per_spec: {m_naive:.0f}")

    # (c) the wrapper with an empty spec vs plain transformers generate, same inputs, samples/s
    lm.task_dict = {"t": {"test": docs}}
    reqs = [Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1},
                     arguments=(c, {"max_new_tokens": 4, "min_new_tokens": 4, "until": []}, lambda d: [d["image"]],
                                i, "t", "test")) for i, c in enumerate(ctxs)]
    model, proc, tok = lm.model, lm.processor, lm.tokenizer

    def plain():
        rendered = [lm.codec.render(c, 1)[0] for c in ctxs]
        ims = [lm.visuals(lambda d: [d["image"]], doc, "b") for doc in docs]
        inp = proc(text=rendered, images=[i[0] for i in ims], padding=True, padding_side="left", return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inp, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        tok.batch_decode(out[:, inp["input_ids"].shape[1]:], skip_special_tokens=True)

    def wrapper():
        lm.generate_until(reqs)

    plain(), wrapper()
    tp, tw = [], []
    for _ in range(7):
        tp.append(timed(plain)[0])
        tw.append(timed(wrapper)[0])
    tp.sort(), tw.sort()
    print(f"wrapper_empty_spec_vs_plain_generate_samples_per_s: {tp[3] / tw[3]:.3f}")


if __name__ == "__main__":
    main()
