"""Train the embedded tiny Qwen2.5-VL to follow modality instructions (CPU, deterministic).

    python -m mf_harness.embedded.train                  # retrain, measure, and replace the embedded checkpoint,
                                                # its MODEL_CARD.md and the interventions/embedded_*.json specs
    python -m mf_harness.embedded.train --eval-only      # re-measure the shipped checkpoint, rewrite card and specs
    python -m mf_harness.embedded.train --out DIR --steps 20 --no-eval   # a short run elsewhere

The model sees exactly what the ``intervened_qwen`` wrapper feeds it at evaluation:
the ``mfr`` prompt (`mf_harness.tasks.mfr.mfr.render_prompt`), the Qwen chat template with the
system prompt "You are a helpful assistant.", and the image after the wrapper's
JPEG round trip and resize (`mf_harness.lmms.images.qwen_fetch_image`, 84x84 -> 9 image
tokens). The answer is trained as the space-prefixed word token (" red": the
form the context uses, so with tied embeddings copying is the identity) and
``<|im_end|>``; the MFR matcher normalises the space away.

Where the model settles the conflict is shaped on purpose, so that the harness has a
known mechanism to find (the paper's claim: at the instruction tokens):

* routing: in a share ``route_prob`` of the batches an attention mask stops every
  position after the instruction (question, format line, template, answer) from
  reading the image and the context, so the content reaches the answer only through
  the instruction tokens (``route_delay = d``: those positions also cannot read the
  instruction in layers ``< d``). The mask is off at evaluation;
* anchor loss: the logit lens of the instruction's last token after layer
  ``anchor_layer`` names what the followed modality says (colour, count, shape);
* dense loss: the answer is also trained at every position after the question;
* vision lens loss: the mean image token, read through the final norm and the LM head,
  names the drawn colour, count and shape (image features in the answer words' space).

None of these adds anything to the saved model: it is a plain Qwen2.5-VL checkpoint.

Determinism: the initial weights come from ``seed``, batch ``i`` from
``(seed, i)`` (`mf_harness.embedded.train.synth.training_rows`), and torch runs with a fixed
thread count (``threads``), so the same config gives bit-identical weights on the
same machine (CPU kernels may differ across machines).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from dataclasses import replace
from pathlib import Path
from typing import Sequence

from mf_harness.embedded.train.card import card_notes, model_card
from mf_harness.embedded.train.config import DEFAULT, RECORD
from mf_harness.embedded.train.evaluate import choose_k, evaluate, headline, write_specs
from mf_harness.embedded.train.loop import train


def evaluate_and_document(path: Path, info: dict, specs_dir: Path | None, log=print, label: str | None = None) -> dict:
    """Measure the checkpoint, pick the headline k per (follow, scope), write specs, record and card."""
    results = evaluate(path, seed=info["config"]["seed"], log=log)
    results["ranking_rows"], results["ranking_seed"] = 96, info["config"]["seed"] + 7
    results["weights_sha256"] = info["weights_sha256"]
    results["headlines"] = []
    for follow in ("text", "vision"):
        for scope in ("instruction", "last"):
            k = choose_k(results, follow, scope)
            results["headlines"].append(headline(path, results, follow, scope, k))
            log(f"  headline {follow}/{scope}/k{k}: {results['headlines'][-1]['gap']}")
    gaps = {h["scope"]: h["gap"] for h in results["headlines"] if h["follow"] == "text"}
    # the model is trained to route the content through the instruction tokens: that is its scope
    # when blocking there works; otherwise the scope where blocking works best
    results["scope_used"] = "instruction" if gaps["instruction"] >= 0.3 else max(gaps, key=gaps.get)
    results["notes"] = card_notes(results)
    if specs_dir is not None:
        label = label or f"{path.name} (trained by mf_harness.embedded.train)"
        results["spec_files"] = [p.name for p in write_specs(results, specs_dir, label)]
    record = {"training": info, "evaluation": results}
    (path / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    (path / "MODEL_CARD.md").write_text(model_card(info, results))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mf_harness.embedded.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="checkpoint directory (default: the embedded one)")
    p.add_argument("--steps", type=int, default=DEFAULT.steps)
    p.add_argument("--seed", type=int, default=DEFAULT.seed)
    p.add_argument("--route-prob", type=float, default=DEFAULT.route_prob)
    p.add_argument("--route-delay", type=int, default=DEFAULT.route_delay)
    p.add_argument("--lr", type=float, default=DEFAULT.lr)
    p.add_argument("--batch-size", type=int, default=DEFAULT.batch_size)
    p.add_argument("--aux-vision", type=float, default=DEFAULT.aux_vision)
    p.add_argument("--threads", type=int, default=DEFAULT.threads)
    p.add_argument("--dense", type=float, default=DEFAULT.dense)
    p.add_argument("--anchor", type=float, default=DEFAULT.anchor)
    p.add_argument("--answer-prefix", default=DEFAULT.answer_prefix)
    p.add_argument("--capability", type=float, default=DEFAULT.capability,
                   help="share of no-conflict capability rows (image only, text only, agreeing, caption)")
    p.add_argument("--probe-every", type=int, default=100, help="held-out probe interval (0: never)")
    p.add_argument("--no-eval", action="store_true", help="train only: no evaluation, card or spec files")
    p.add_argument("--eval-only", action="store_true", help="evaluate the checkpoint at --out and rewrite its card")
    p.add_argument("--card-only", action="store_true", help="rewrite MODEL_CARD.md from the checkpoint's record")
    p.add_argument("--specs-dir", type=Path, default=None,
                   help="where to write the head-set specs (default: interventions/ for the embedded checkpoint)")
    args = p.parse_args(argv)
    cfg = replace(DEFAULT, steps=args.steps, seed=args.seed, route_prob=args.route_prob, route_delay=args.route_delay,
                  lr=args.lr, batch_size=args.batch_size, aux_vision=args.aux_vision, threads=args.threads,
                  dense=args.dense, anchor=args.anchor, answer_prefix=args.answer_prefix,
                  capability=args.capability)
    embedded = args.out is None
    if embedded:
        from mf_harness.embedded import EMBEDDED_NAME, embedded_dir

        from mf_harness.interventions import INTERVENTIONS_DIR

        args.out = Path(embedded_dir()) / EMBEDDED_NAME
    specs_dir = args.specs_dir or (INTERVENTIONS_DIR if embedded else None)
    label = f"embedded ({args.out.name}, trained by mf_harness.embedded.train)" if embedded else None
    if args.card_only:
        record = json.loads((args.out / RECORD).read_text())
        record["evaluation"]["notes"] = card_notes(record["evaluation"])
        if specs_dir is not None:
            record["evaluation"]["spec_files"] = [p.name for p in write_specs(record["evaluation"], specs_dir, label)]
        (args.out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        (args.out / "MODEL_CARD.md").write_text(model_card(record["training"], record["evaluation"]))
        print(f"wrote {args.out / 'MODEL_CARD.md'}")
        return 0
    if args.eval_only:
        info = json.loads((args.out / RECORD).read_text())["training"]
        evaluate_and_document(args.out, info, specs_dir, label=label)
        print(f"wrote {args.out / 'MODEL_CARD.md'}")
        return 0
    # build beside the target and swap it in at the end: users of the old checkpoint never see a half-built one
    work = args.out.with_name(args.out.name + ".new")
    info = train(cfg, work, probe_every=args.probe_every)
    print(json.dumps({k: v for k, v in info.items() if k != "loss_history"}, indent=2))
    if args.no_eval:
        (work / RECORD).write_text(json.dumps({"training": info}, indent=1) + "\n")
    else:
        evaluate_and_document(work, info, specs_dir, label=label)
    old = args.out.with_name(args.out.name + ".old")
    if args.out.exists():
        args.out.rename(old)
    work.rename(args.out)
    shutil.rmtree(old, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
