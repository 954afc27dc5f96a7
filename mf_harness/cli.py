"""The ``mf-harness`` command: thin subcommands over library functions.

    mf-harness embedded-path              # directory of the embedded default checkpoint
    mf-harness spec FILE [--model PATH]   # validate a spec (and bind it to a model's config)
    mf-harness spec --block L1H0+L2H3 --scope last -o heads.json   # write a spec file
    mf-harness demo                       # MFR with and without a head intervention
    mf-harness discover --output-dir out/discover   # attribution -> head-set spec files
    mf-harness lens --output-dir out/lens           # LDAR by layer
    mf-harness knockout --output-dir out/ko         # attention knockout, NSSD by layer
    mf-harness sweep --rankings out/discover --output-dir out/sweep   # head sets x k x controls
    mf-harness leaderboard out/sweep/records.jsonl --out leaderboards/mymodel
    mf-harness compare --baseline leaderboards/embedded_ci.jsonl      # regression check

Input errors print one line (``mf-harness: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mf_harness.errors import MfHarnessError

__all__ = ["main"]


def _cmd_embedded_path(args) -> int:
    from mf_harness.embedded import embedded_path

    print(embedded_path())
    return 0


def _cmd_spec(args) -> int:
    from mf_harness.core.spec import InterventionSpec

    spec = InterventionSpec.load(args.file) if args.file else InterventionSpec()
    changes = {k: v for k, v in {
        "block": args.block, "amplify": args.amplify, "coefficient": args.coefficient, "scope": args.scope,
        "decode": args.decode, "name": args.name}.items() if v is not None}
    if changes:
        spec = spec.replace(**changes)
    if args.model:
        from transformers import AutoConfig

        from mf_harness.core.arch import geometry
        from mf_harness.lmms.loading import resolve_pretrained

        geo = geometry(AutoConfig.from_pretrained(resolve_pretrained(args.model)))
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

    return demo_main(limit=args.limit, out=args.output_dir)


def _common(s) -> None:
    s.add_argument("--model-args", default="pretrained=embedded",
                   help="the same comma-separated model_args as lmms-eval's intervened_hf (no spec keys)")
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


def _floats(v: str) -> list[float]:
    return [float(x) for x in v.split(",") if x.strip()]


def _ints(v: str) -> list[int]:
    return [int(x) for x in v.split(",") if x.strip()]


def _cmd_sweep(args) -> int:
    import json

    from mf_harness.runs.sweep import SweepConfig, run_sweep

    if args.config:
        cfg = SweepConfig.from_dict(json.loads(Path(args.config).read_text()))
    else:
        cfg = SweepConfig(model_args=args.model_args, rankings=str(args.rankings), ks=_ints(args.k),
                          seeds=args.seeds, block=not args.no_block, coefficients=_floats(args.coefficients),
                          scopes=args.scopes.split(","), follows=args.follows.split(","),
                          controls=[c for c in args.controls.split(",") if c],
                          capability_tasks=[t for t in args.capability_tasks.split(",") if t], limit=args.limit,
                          batch_size=args.batch_size, name=args.name, engine=args.engine, mfr_task=args.mfr_task)
    r = run_sweep(cfg, args.output_dir, progress=not args.no_progress)
    from mf_harness.runs.leaderboard import render_markdown, specificity_tables, write_leaderboard

    written = write_leaderboard(r["records"], Path(args.output_dir) / cfg.name)
    print(render_markdown(specificity_tables(r["records"])))
    print(f"cells: {r['cells']} ({r['cells_run']} run, {r['cells_skipped']} resumed from disk); "
          f"model forwards: {r['forwards']}; wall time: {r['wall_s']:.1f}s")
    print(f"records: {r['out'] / 'records.jsonl'}")
    for p in written:
        print(f"wrote {p}")
    return 0


def _cmd_leaderboard(args) -> int:
    from mf_harness.runs.leaderboard import cross_model_table, render_markdown, write_leaderboard
    from mf_harness.runs.records import read_records

    sets = [read_records(p)[1] for p in args.records]
    if len(sets) == 1:
        written = write_leaderboard(sets[0], args.out)
        print(Path(written[0]).read_text())
    else:
        table = cross_model_table(sets)
        md = render_markdown([table])
        out = Path(args.out).with_suffix(".md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md)
        print(md)
        written = [out]
    for p in written:
        print(f"wrote {p}")
    return 0


def _cmd_compare(args) -> int:
    import tempfile

    from mf_harness.runs.leaderboard import compare_records
    from mf_harness.runs.records import read_records
    from mf_harness.runs.sweep import SweepConfig, run_sweep

    header, baseline = read_records(args.baseline)
    if header is None:
        raise MfHarnessError(f"{args.baseline} has no sweep header: it cannot be re-scored")
    cfg = SweepConfig.from_dict(header["config"])
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="mf-compare-"))
    new = run_sweep(cfg, out, progress=not args.no_progress)["records"]
    failures, missing = compare_records(baseline, new, args.tolerance, args.mode)
    if not failures and not missing:
        print(f"ok: {len(baseline)} records within tolerance ({args.mode} {args.tolerance:g}) of {args.baseline}")
        return 0
    print(f"REGRESSION against {args.baseline} ({args.mode} tolerance {args.tolerance:g}):")
    print(f"{'head set':<10} {'follow':<7} {'k':>3} {'seed':>4} {'action':<8} {'scope':<12} {'task':<14} "
          f"{'metric':<10} {'subset':<9} {'old':>8} {'new':>8} {'delta':>8}  allowed")
    for f in failures:
        _, hs, follow, k, seed, action, coef, scope, _, task, metric, subset = f["key"]
        fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"{hs:<10} {str(follow):<7} {str(k):>3} {str(seed):>4} {action:<8} {str(scope):<12} {task:<14} "
              f"{metric:<10} {subset:<9} {fmt(f['old']):>8} {fmt(f['new']):>8} {fmt(f['delta']):>8}  {f['allowed']}")
    for m in missing:
        print(f"missing in the new run: {m}")
    return 1


def _cmd_train_embedded(args) -> int:
    from mf_harness.embedded.train import main as train_main

    return int(train_main(args.train_args) or 0)


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
    s = sub.add_parser("sweep", help="head sets x k x coefficient x scope with controls, resumable")
    s.add_argument("--config", help="sweep config JSON (the keys of SweepConfig); overrides the flags")
    s.add_argument("--model-args", default="pretrained=embedded")
    s.add_argument("--rankings", default="", help="heads.csv (or its folder) from `mf-harness discover`")
    s.add_argument("--k", default="10,20,30,40")
    s.add_argument("--seeds", type=int, default=5, help="random control sets per k")
    s.add_argument("--no-block", action="store_true", help="skip blocking cells")
    s.add_argument("--coefficients", default="", help="amplification coefficients, e.g. 8,10,12")
    s.add_argument("--scopes", default="instruction")
    s.add_argument("--follows", default="text,vision")
    s.add_argument("--controls", default="random,shared,layers",
                   help="comma-separated: random (layer-matched, the paper's), random_any (any layer), shared, layers")
    s.add_argument("--capability-tasks", default="", help="e.g. mf_capability task names, comma-separated")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--name", default="sweep")
    s.add_argument("--mfr-task", default="mfr",
                   help="MFR task family scored per direction: <name>_text / <name>_vision (mfr, mfr_mc2, mfr_dev, ...)")
    s.add_argument("--engine", choices=["fast", "lmms"], default="fast",
                   help="fast: every spec of a sample in one prefix-shared batch; lmms: one lmms-eval run per cell")
    s.add_argument("--output-dir", required=True, type=Path)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_sweep)
    s = sub.add_parser("leaderboard", help="Markdown/CSV tables and plots from records files")
    s.add_argument("records", nargs="+", type=Path, help="records.jsonl files (several: cross-model table)")
    s.add_argument("--out", required=True, type=Path, help="output prefix, e.g. leaderboards/embedded")
    s.set_defaults(func=_cmd_leaderboard)
    s = sub.add_parser("compare", help="re-score a committed records file and fail on regressions")
    s.add_argument("--baseline", required=True, type=Path)
    s.add_argument("--tolerance", type=float, default=0.02, help="absolute, in metric units (0.02 = 2 points)")
    s.add_argument("--mode", choices=["abs", "ci"], default="abs")
    s.add_argument("--output-dir", type=Path, default=None, help="where to re-run (default: a temp dir)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_compare)
    s = sub.add_parser("train-embedded", help="train the embedded tiny VLM (CPU, deterministic); args go to "
                                              "python -m mf_harness.embedded.train (see --help there)", add_help=False)
    s.add_argument("train_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_train_embedded)
    s = sub.add_parser("demo", help="MFR on the embedded model: original vs targeted vs random heads (make demo)")
    s.add_argument("--limit", type=int, default=None, help="docs per task")
    s.add_argument("--output-dir", default="out/demo", help="where the records, tables and plots go (replaced)")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train-embedded"]:  # every option (--help included) belongs to the trainer's own parser
        from mf_harness.embedded.train import main as train_main

        return int(train_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    if args.command in ("discover", "lens", "knockout", "sweep", "compare"):
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
