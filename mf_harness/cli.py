"""The ``mf-harness`` command: thin subcommands over library functions.

    mf-harness embedded-path              # directory of the embedded default checkpoint
    mf-harness spec FILE [--model PATH]   # validate a spec (and bind it to a model's config)
    mf-harness spec --block L1H0+L2H3 --scope last -o heads.json   # write a spec file
    mf-harness demo                       # MFR with and without a head intervention
    mf-harness discover --output-dir out/discover   # attribution -> head-set spec files
    mf-harness lens --output-dir out/lens           # LDAR by layer
    mf-harness knockout --output-dir out/ko         # attention knockout, NSSD by layer

Input errors print one line (``mf-harness: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _cmd_embedded_path(args) -> int:
    from mf_harness.embedded import embedded_path

    print(embedded_path())
    return 0


def _cmd_spec(args) -> int:
    from mf_harness.spec import InterventionSpec

    spec = InterventionSpec.load(args.file) if args.file else InterventionSpec()
    changes = {k: v for k, v in {
        "block": args.block, "amplify": args.amplify, "coefficient": args.coefficient, "scope": args.scope,
        "decode": args.decode, "name": args.name}.items() if v is not None}
    if changes:
        spec = spec.replace(**changes)
    if args.model:
        from transformers import AutoConfig

        from mf_harness.arch import geometry
        from mf_harness.models import _resolve_pretrained

        geo = geometry(AutoConfig.from_pretrained(_resolve_pretrained(args.model)))
        spec.validate_for(geo.num_layers, geo.num_heads, model_name=args.model)
        print(f"ok: fits {args.model} ({geo.num_layers} layers x {geo.num_heads} heads)", file=sys.stderr)
    if args.output:
        spec.save(args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    print(spec.to_json())
    print(f"# {spec.describe()} (hash {spec.spec_hash})", file=sys.stderr)
    return 0


def _cmd_demo(args) -> int:
    from mf_harness.demo import main as demo_main

    return demo_main(limit=args.limit)


def _common(s) -> None:
    s.add_argument("--model-args", default="pretrained=embedded",
                   help="the same comma-separated model_args as lmms-eval's intervened_qwen (no spec keys)")
    s.add_argument("--tasks", default="mfr_text,mfr_vision", help="comma-separated mfr tasks (docs and prompts)")
    s.add_argument("--limit", type=int, default=None, help="docs per task")
    s.add_argument("--output-dir", required=True, type=Path)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--topk-tokens", type=int, default=3, help="k of the instruction readout (top-k tokens)")
    s.add_argument("--extra-forms", type=Path, default=None,
                   help='JSON {"answer": ["other surface form", ...]} (e.g. Chinese forms, as the paper)')
    s.add_argument("--no-progress", action="store_true")


def _extra(args):
    if args.extra_forms is None:
        return None
    import json

    return json.loads(args.extra_forms.read_text())


def _cmd_discover(args) -> int:
    from mf_harness.analysis.report import discover

    r = discover(args.model_args, args.output_dir, tasks=args.tasks.split(","), limit=args.limit,
                 k_list=[int(k) for k in args.k.split(",")], topk_tokens=args.topk_tokens, method=args.method,
                 site=args.site, ablation_scope=args.ablation_scope, batch_size=args.batch_size,
                 extra_forms=_extra(args), progress=not args.no_progress)
    t = r["heads"]
    for follow, g in t.groupby("follow"):
        top = ", ".join(f"L{a}H{b}" for a, b in zip(g["layer"][:10], g["head"][:10]))
        print(f"{follow}-following top heads: {top}")
    for c in r["correlation"]:
        print(f"{c['follow']}: Spearman(DLA, ablation) = {c['spearman_dla_vs_ablation']:.3f} over {c['n_heads']} heads")
    for p in r["specs"]:
        print(f"wrote {p}")
    print(f"tables and plots in {r['out']}")
    return 0


def _cmd_lens(args) -> int:
    from mf_harness.analysis.report import lens

    r = lens(args.model_args, args.output_dir, tasks=args.tasks.split(","), limit=args.limit,
             topk_tokens=args.topk_tokens, batch_size=args.batch_size, extra_forms=_extra(args),
             progress=not args.no_progress)
    t = r["ldar"]
    t = t[t.subset == "all"].pivot_table(index="layer", columns=["follow", "site"], values="ldar")
    print(f"LDAR by layer ({r['n']} samples):")
    print(t.round(3).to_string())
    print(f"tables and plots in {r['out']}")
    return 0


def _cmd_knockout(args) -> int:
    from mf_harness.analysis.report import knockout
    from mf_harness.analysis.samples import TOKEN_SETS
    from mf_harness.errors import MfHarnessError

    pairs = []
    for p in args.edges.split(","):
        if "->" not in p:
            raise MfHarnessError(f"--edges: write source->destination pairs, e.g. image->instruction; got {p!r}")
        a, b = (x.strip() for x in p.split("->", 1))
        for x in (a, b):
            if x not in TOKEN_SETS:
                raise MfHarnessError(f"--edges: unknown token set {x!r}; choose from {', '.join(TOKEN_SETS)}")
        pairs.append((a, b))
    r = knockout(args.model_args, args.output_dir, pairs, tasks=args.tasks.split(","), limit=args.limit,
                 window=args.window, batch_size=args.batch_size, extra_forms=_extra(args),
                 progress=not args.no_progress)
    t = r["nssd"]
    print(t[["follow", "src", "dest", "layer", "window", "nssd_mean", "nssd_std", "mfr_before", "mfr_after"]]
          .round(4).to_string(index=False))
    print(f"tables and plots in {r['out']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mf-harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("embedded-path", help="print the directory of the embedded default checkpoint")
    s.set_defaults(func=_cmd_embedded_path)
    s = sub.add_parser("spec", help="validate, build or convert an intervention spec")
    s.add_argument("file", nargs="?", help="spec JSON file")
    s.add_argument("--block", help="heads to block, e.g. L14H3+L20H0")
    s.add_argument("--amplify", help="heads to amplify")
    s.add_argument("--coefficient", type=float, help="amplification factor")
    s.add_argument("--scope", help="instruction | prompt_text | prompt | last | all")
    s.add_argument("--decode", type=lambda v: v.lower() in ("1", "true", "yes", "on"), help="also act on generated tokens")
    s.add_argument("--name", help="spec name")
    s.add_argument("--model", help="checkpoint (hub id, directory or 'embedded') whose layer/head ranges to check")
    s.add_argument("-o", "--output", help="write the spec JSON here")
    s.set_defaults(func=_cmd_spec)
    s = sub.add_parser("discover", help="rank heads by their contribution to the arbitration margin; write head sets")
    _common(s)
    s.add_argument("--k", default="10,20,30,40", help="head-set sizes (capped at the model's head count)")
    s.add_argument("--method", default="dla", choices=["dla", "ablation", "both"],
                   help="dla: direct logit attribution (paper, Eq. 9); ablation: total effect of blocking each "
                        "head; both: rank by DLA and report the rank correlation")
    s.add_argument("--site", default="instruction", choices=["instruction", "last"],
                   help="where the margin is read (and the written specs' scope, for dla)")
    s.add_argument("--ablation-scope", default="instruction", choices=["instruction", "prompt_text", "last", "prompt"])
    s.set_defaults(func=_cmd_discover)
    s = sub.add_parser("lens", help="logit lens: LDAR by layer at the instruction tokens and the last position")
    _common(s)
    s.set_defaults(func=_cmd_lens)
    s = sub.add_parser("knockout", help="attention knockout: NSSD and decision change by layer")
    _common(s)
    s.add_argument("--edges", default="image->instruction,context->instruction,instruction->last",
                   help="comma-separated source->destination token sets")
    s.add_argument("--window", type=int, default=9, help="layers per knockout window, centred on each layer")
    s.set_defaults(func=_cmd_knockout)
    s = sub.add_parser("demo", help="MFR on the embedded model, with and without a head intervention")
    s.add_argument("--limit", type=int, default=None, help="docs per task")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from mf_harness.errors import MfHarnessError

    args = build_parser().parse_args(argv)
    if args.command in ("discover", "lens", "knockout"):
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    try:
        return int(args.func(args) or 0)
    except MfHarnessError as e:
        print(f"mf-harness: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
