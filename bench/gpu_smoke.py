"""GPU smoke run: one family end to end in bf16 on CUDA with a random ~1-3B config; prints figures.

Needs a CUDA machine with this repo's environment (torch with CUDA, transformers >= 5,
lmms-eval 0.7.3); no hub access: the checkpoint is built here (random weights, tiny
vision tower, a text decoder of realistic size). What it checks and reports (JSON):

* load: dtype (bf16 by default on CUDA), seconds, parameters, peak GPU memory;
* exactness in bf16: coefficient 1 on every head is bit-identical to no hooks; a blocked
  head changes only the scope positions of its layer's o_proj output (max |diff| elsewhere);
* throughput through the wrapper (``generate_until``, ``loglikelihood``): clean vs a
  16-head block at the instruction tokens (overhead ratio), requests/s, new tokens/s;
* batching in bf16: max |log-likelihood difference| between batch size 1 and ``--batch-size``
  (bf16 matmuls may legitimately differ with padding; fp32 runs are exact in the tests), and
  the share of equal greedy answers (random weights have near-ties, so this is indicative);
* ``device_map=auto`` (spread over every visible GPU): the same two figures against one device;
* optionally (``--cli``) ``lmms-eval --model intervened_hf ... --tasks mfr`` end to end.

Usage: ``python bench/gpu_smoke.py [--family qwen2_5_vl] [--size 2b] [--n 64] [--cli]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# text decoder sizes (the vision tower stays tiny): ~parameters of the whole model
SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128),  # a CPU dry run of this script: --device cpu --size tiny
    "1b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
               intermediate_size=8960),
    "2b": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=2,
               intermediate_size=8192),
    "3b": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
               intermediate_size=11008),
}
INSTRUCTION = "You should follow the textual context rather than the visual content."


def _docs(n: int):
    from PIL import Image

    colours = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (20, 40, 210), "yellow": (230, 220, 30)}
    names = list(colours)
    docs, contexts = [], []
    for i in range(n):
        shown, said = names[i % 4], names[(i + 1) % 4]
        size = (448, 448) if i % 3 else (448, 336)  # two image sizes: left padding is exercised
        docs.append({"instruction": INSTRUCTION, "image": Image.new("RGB", size, colours[shown])})
        filler = " ".join(["The picture was taken on a sunny afternoon in a small town."] * (1 + i % 4))
        contexts.append(f"Text context: The square in the picture is {said}. {filler}\n{INSTRUCTION} "
                        f"What colour is the square?\nAnswer the question with a single word.")
    return docs, contexts


def _requests(contexts, kind: str, max_new_tokens: int):
    from lmms_eval.api.instance import Instance

    visual = lambda d: [d["image"]]  # noqa: E731
    if kind == "gen":
        return [Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1},
                         arguments=(c, {"max_new_tokens": max_new_tokens, "until": ["\n"]}, visual, i, "t", "test"))
                for i, c in enumerate(contexts)]
    return [Instance(request_type="loglikelihood", idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1},
                     arguments=(c, " red", visual, i, "t", "test")) for i, c in enumerate(contexts)]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn):
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--size", default="2b", choices=sorted(SIZES))
    ap.add_argument("--n", type=int, default=64, help="requests per measurement")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--cli", action="store_true", help="also run lmms-eval --tasks mfr end to end")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself (with --size tiny)")
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_smoke: no CUDA device")
    cuda = dev == "cuda"

    from mf_harness.core.arch import geometry, resolve
    from mf_harness.core.hooks import HeadPlan, intervene
    from mf_harness.lmms.model import IntervenedHF
    from mf_harness.core.spec import InterventionSpec
    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    fig: dict = {"family": args.family, "size": args.size, "torch": torch.__version__,
                 "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                 "gpus": torch.cuda.device_count() if cuda else 0}
    tmp = Path(tempfile.mkdtemp(prefix="mf_gpu_smoke_"))
    cfg = TinyConfig(family=args.family, vision_depth=2, vision_hidden_size=256, vision_heads=4, vocab_target=4000,
                     attn_implementation="sdpa", **SIZES[args.size])
    (path, fig["build_s"]) = _timed(lambda: build_tiny_vlm(tmp / args.family, cfg, dtype="bfloat16", device=dev))
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    docs, contexts = _docs(args.n)

    def load(**kw):
        kw.setdefault("batch_size", args.batch_size)
        lm = IntervenedHF(pretrained=str(path), **kw)
        lm.task_dict = {"t": {"test": docs}}
        return lm

    lm, fig["load_s"] = _timed(lambda: load(device=dev))
    geo = geometry(lm.model)
    hl = geo.head_layers  # the layers with heads (not a hybrid decoder's linear-attention or KV-shared ones)
    mid, last = hl[len(hl) // 2], hl[-1]
    fig.update(dtype=str(lm.model.dtype), params_b=round(sum(p.numel() for p in lm.model.parameters()) / 1e9, 3),
               layers=geo.num_layers, heads=geo.num_heads, head_widths=sorted({geo.width(l) for l in hl}),
               layers_with_heads=len(hl))

    # exactness in bf16 on one left-padded batch
    images = [lm.visuals(lambda d: [d["image"]], d, "x") for d in docs[:4]]
    rendered, users = zip(*(lm.codec.render(c, 1) for c in contexts[:4]))
    enc = lm.codec.encode(list(rendered), images).to(lm.device)
    spec = InterventionSpec(block=[(mid, 3)], scope="instruction")
    plan = lm.codec.plan([spec] * 4, list(rendered), list(users), enc["input_ids"].cpu(),
                         enc["attention_mask"].cpu(), docs[:4], ["x"] * 4)
    every = InterventionSpec(amplify=[(l, h) for l in hl for h in range(geo.num_heads)],
                             coefficient=1.0000001)
    ones = HeadPlan.build([every] * 4, torch.ones_like(plan.mask), geo.num_layers, geo.num_heads)
    for c in ones.coef.values():
        c.fill_(1.0)
    oproj = resolve(lm.model)[3][mid]
    rec = []
    h = oproj.register_forward_hook(lambda m, a, o: rec.append(o.detach()))
    with torch.inference_mode():
        clean = lm.model(**enc).logits
        with intervene(lm.model, ones):
            same = lm.model(**enc).logits
        with intervene(lm.model, plan):
            lm.model(**enc)
    h.remove()
    mask = plan.mask.to(lm.device)
    fig["coef1_bit_exact"] = bool(torch.equal(clean, same))
    fig["block_changes_only_scope"] = bool(torch.equal(rec[0][~mask], rec[-1][~mask]))
    fig["block_max_change_at_scope"] = float((rec[0][mask] - rec[-1][mask]).abs().max())
    fig["instruction_tokens_per_row"] = int(plan.mask[0].sum())
    fig["prompt_tokens"] = int(enc["attention_mask"].sum(1).max())

    # throughput through the wrapper
    gen, ll = _requests(contexts, "gen", args.max_new_tokens), _requests(contexts, "ll", 0)
    blocked = InterventionSpec(block=[(l, h) for l in hl for h in range(geo.num_heads)][::7][:16],
                               scope="instruction")
    lm.generate_until(gen[: args.batch_size])  # warm-up
    for name, s in (("clean", InterventionSpec()), ("block16", blocked)):
        view = lm.with_spec(s)
        answers, t = _timed(lambda v=view: v.generate_until(gen))
        new_tokens = sum(len(view.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        fig[f"gen_{name}_s"] = round(t, 3)
        fig[f"gen_{name}_req_per_s"] = round(len(gen) / t, 2)
        fig[f"gen_{name}_new_tok_per_s"] = round(new_tokens / t, 1)
        scores, t = _timed(lambda v=view: v.loglikelihood(ll))
        fig[f"ll_{name}_req_per_s"] = round(len(ll) / t, 2)
        fig[f"answers_{name}"] = answers
    fig["gen_overhead_block16"] = round(fig["gen_block16_s"] / fig["gen_clean_s"], 3)
    if cuda:
        fig["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    ref = [x for x, _ in scores]  # block16, batched

    # batch size 1 vs batched, bf16: log-likelihoods (continuous) and greedy answers (random weights: near-ties)
    single = load(device=dev, batch_size=1).with_spec(blocked)
    one = [x for x, _ in single.loglikelihood(ll[:16])]
    fig["bf16_ll_batched_vs_single_max_abs"] = max(abs(a - b) for a, b in zip(one, ref))
    k = min(16, len(gen))
    fig["bf16_answers_batched_equal_single"] = sum(
        a == b for a, b in zip(single.generate_until(gen[:k]), fig["answers_block16"][:k])) / k
    del single

    # device_map=auto (shards over every visible GPU)
    del lm, view
    if cuda:
        torch.cuda.empty_cache()
    sharded = load(device_map="auto").with_spec(blocked)
    fig["device_map_devices"] = sorted({str(p.device) for p in sharded.model.parameters()})
    got = [x for x, _ in sharded.loglikelihood(ll[:16])]
    fig["device_map_ll_vs_one_device_max_abs"] = max(abs(a - b) for a, b in zip(got, ref))
    fig["device_map_answers_equal_one_device"] = sum(
        a == b for a, b in zip(sharded.generate_until(gen[:k]), fig["answers_block16"][:k])) / k
    del sharded
    for k in ("answers_clean", "answers_block16"):
        fig[k] = fig[k][:4]

    if args.cli:
        out = tmp / "lmms_out"
        cmd = [sys.executable, "-m", "lmms_eval", "--model", "intervened_hf", "--model_args",
               f"pretrained={path},device={dev},block=L{mid}H0+L{last}H1",
               "--tasks", "mfr", "--limit", "32", "--batch_size", str(args.batch_size), "--output_path", str(out)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                           cwd=REPO)
        fig["cli_rc"], fig["cli_s"] = p.returncode, round(time.perf_counter() - t0, 1)
        files = sorted(out.rglob("*_results.json"))
        if files:
            res = json.loads(files[-1].read_text())["results"]
            fig["cli_mfr"] = {t: res[t].get("mfr,none") for t in ("mfr_text", "mfr_vision") if t in res}
        else:
            fig["cli_tail"] = (p.stdout + p.stderr)[-1500:]
    text = json.dumps(fig, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
