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

from mf_harness.checks import atomic_write_text, finite_nonnegative, parse_bool, positive_int, safe_name
from mf_harness.errors import MfHarnessError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's promise: a usage error is one ``mf-harness: error:`` line and exit 2."""

    def error(self, message):  # noqa: D102
        self.exit(2, f"mf-harness: error: {self.prog.replace('mf-harness ', '')}: {message}\n"
                     if self.prog != "mf-harness" else f"mf-harness: error: {message}\n")


def _typed(fn, what):
    def parse(v):
        try:
            return fn(v)
        except (MfHarnessError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e) if isinstance(e, MfHarnessError) else f"{what}; got {v!r}")
    parse.__name__ = what
    return parse


def _pos_int(name):
    return _typed(lambda v: positive_int(v, name), f"{name} must be an integer >= 1")


def _int_list(v: str) -> list[int]:
    out = [positive_int(x, "k (heads per set)") for x in v.split(",") if x.strip()]
    if not out:
        raise MfHarnessError(f"give at least one head count, e.g. 4,8; got {v!r}")
    return out


def _float_list(v: str) -> list[float]:
    return [finite_nonnegative(x, "coefficient") for x in v.split(",") if x.strip()]


def _cmd_embedded_path(args) -> int:
    from mf_harness.embedded import embedded_path

    print(embedded_path())
    return 0


def _cmd_spec(args) -> int:
    from mf_harness.core.spec import InterventionSpec

    for key in ("block", "amplify"):
        if getattr(args, key) is not None and not getattr(args, key).strip():
            raise MfHarnessError(f"--{key} names no heads; name at least one (e.g. --{key} L14H3+L20H0) or leave it out")
    files = list(args.file)
    if files[:1] == ["import"]:
        if len(files) != 2:
            raise MfHarnessError("spec import takes one SOURCE: a CSV, a file of head names (or the names "
                                 "inline), a layer_idx/head_idx JSON config, or a spec file")
        from mf_harness.core.spec_import import import_spec

        spec = import_spec(files[1], args.format, k=args.k, by=args.by, follow=args.follow, action=args.action,
                           coefficient=args.coefficient, scope=args.scope or "instruction", name=args.name)
        args.block = args.amplify = args.coefficient = args.scope = args.name = None  # consumed by the import
    elif len(files) > 1:
        raise MfHarnessError(f"spec takes one FILE (or 'import SOURCE'); got {files}")
    else:
        spec = InterventionSpec.load(files[0]) if files else InterventionSpec()
    changes = {k: v for k, v in {
        "block": args.block, "amplify": args.amplify, "coefficient": args.coefficient, "scope": args.scope,
        "decode": args.decode, "name": args.name}.items() if v is not None}
    if changes:
        spec = spec.replace(**changes)
    if args.model:
        from mf_harness.core.arch import geometry
        from mf_harness.lmms.loading import load_config

        geo = geometry(load_config(args.model))
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

    return demo_main(limit=args.limit, out=args.output_dir, overwrite=args.overwrite)


def _common(s) -> None:
    s.add_argument("--model-args", default="pretrained=embedded",
                   help="the same comma-separated model_args as lmms-eval's intervened_hf (no spec keys)")
    s.add_argument("--tasks", default="mfr_text,mfr_vision", help="comma-separated mfr tasks (docs and prompts)")
    s.add_argument("--limit", type=_pos_int("--limit"), default=None, help="docs per task")
    s.add_argument("--output-dir", required=True, type=Path)
    s.add_argument("--batch-size", type=_pos_int("--batch-size"), default=8)
    s.add_argument("--topk-tokens", type=_pos_int("--topk-tokens"), default=3,
                   help="k of the instruction readout (top-k tokens)")
    s.add_argument("--extra-forms", type=Path, default=None,
                   help='JSON {"answer": ["other surface form", ...]} (e.g. Chinese forms, as the paper)')
    s.add_argument("--no-progress", action="store_true")


def _extra(args):
    if args.extra_forms is None:
        return None
    import json

    try:
        forms = json.loads(args.extra_forms.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MfHarnessError(f"--extra-forms: file not found: {str(args.extra_forms)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as e:
        raise MfHarnessError(f"--extra-forms: {args.extra_forms} is not a JSON file ({type(e).__name__})") from None
    if not isinstance(forms, dict) or not all(isinstance(v, list) for v in forms.values()):
        raise MfHarnessError('--extra-forms: expected a JSON object {"answer": ["form", ...], ...}')
    return forms


def _cmd_discover(args) -> int:
    from mf_harness.analysis.report import discover

    r = discover(args.model_args, args.output_dir, tasks=args.tasks.split(","), limit=args.limit,
                 k_list=args.k, topk_tokens=args.topk_tokens, method=args.method,
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


def _cmd_sweep(args) -> int:
    import json

    from mf_harness.runs.sweep import SweepConfig, run_sweep

    if args.config:
        try:
            d = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MfHarnessError(f"--config: file not found: {args.config!r}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as e:
            raise MfHarnessError(f"--config: {args.config} is not a JSON file ({type(e).__name__})") from None
        if not isinstance(d, dict):
            raise MfHarnessError(f"--config: {args.config} must hold a JSON object with SweepConfig's keys")
        cfg = SweepConfig.from_dict(d)
    else:
        cfg = SweepConfig(model_args=args.model_args, rankings=str(args.rankings), ks=args.k,
                          seeds=args.seeds, block=not args.no_block, coefficients=args.coefficients,
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
    for p, records in zip(args.records, sets):
        if not records:
            raise MfHarnessError(f"{p} holds no records: nothing to tabulate")
    if len(sets) == 1:
        written = write_leaderboard(sets[0], args.out)
        print(Path(written[0]).read_text())
    else:
        table = cross_model_table(sets)
        md = render_markdown([table])
        out = Path(args.out).with_suffix(".md")
        atomic_write_text(out, md)
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
    if header is None or not isinstance(header.get("config"), dict):
        raise MfHarnessError(f"{args.baseline} has no sweep header: it cannot be re-scored")
    if not baseline:
        raise MfHarnessError(f"{args.baseline} holds no records: nothing to compare")
    cfg = trusted_rerun(SweepConfig.from_dict(header["config"]), args.baseline, args.model_args, args.rankings,
                        args.allow_model)
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


# model_args keys a records header may carry into a re-run; anything else (trust_remote_code, a spec file,
# ...) is refused: records files are shared artifacts, and re-scoring one must not run what it asks for
SAFE_MODEL_KEYS = frozenset({"pretrained", "revision", "dtype", "attn_implementation", "min_pixels", "max_pixels",
                             "max_new_tokens", "system_prompt", "instruction_field", "batch_size"})


def trusted_rerun(cfg, baseline: Path, model_args: str | None, rankings: str | None, allow: list[str]):
    """The sweep config to re-run for ``compare``: the header's, with the model and rankings that the user named
    (or allowed). Refuses a header that asks for remote code, carries other model_args than `SAFE_MODEL_KEYS`,
    names a model the user did not, or a rankings file outside the working directory."""
    import dataclasses

    from lmms_eval.utils import simple_parse_args_string

    def parse(text, where):
        try:
            return simple_parse_args_string(text or "")
        except ValueError:
            raise MfHarnessError(f"{where}: model_args must be key=value pairs separated by commas; got {text!r}") \
                from None

    head = parse(cfg.model_args, f"{baseline} header")
    if "trust_remote_code" in head:
        raise MfHarnessError(f"{baseline} asks for trust_remote_code={head['trust_remote_code']!r}: a records file may "
                             f"not make mf-harness run a checkpoint's own code; re-run that sweep yourself")
    extra = sorted(set(head) - SAFE_MODEL_KEYS)
    if extra:
        raise MfHarnessError(f"{baseline} header carries model_args {extra}, which compare does not take from a "
                             f"records file (allowed: {', '.join(sorted(SAFE_MODEL_KEYS))})")
    model = str(head.get("pretrained", "embedded"))
    if model_args is not None:
        mine = parse(model_args, "--model-args")
        if str(mine.get("pretrained", "embedded")) != model:
            raise MfHarnessError(f"{baseline} was measured on {model!r}, but --model-args names "
                                 f"{mine.get('pretrained', 'embedded')!r}")
        cfg = dataclasses.replace(cfg, model_args=model_args)
    elif model != "embedded" and model not in allow:
        raise MfHarnessError(f"{baseline} names the model {model!r}; compare loads only a model you name: pass "
                             f"--model-args pretrained={model} (or --allow-model {model})")
    if rankings is not None:
        cfg = dataclasses.replace(cfg, rankings=rankings)
    elif cfg.rankings:
        here = Path.cwd().resolve()
        p = (here / cfg.rankings).resolve()
        if Path(cfg.rankings).is_absolute() or (p != here and here not in p.parents):
            raise MfHarnessError(f"{baseline} points at rankings {cfg.rankings!r} outside the working directory; "
                                 f"pass --rankings PATH to name them yourself")
    return cfg


def _cmd_heads(args) -> int:
    import json

    from mf_harness.analysis.headsets import compare_heads, load_rankings, plot_comparison

    a = load_rankings(args.a, args.layers_a)
    b = load_rankings(args.b, args.layers_b)
    pairs = compare_heads(a, b, args.k)
    for c in pairs:
        print(f"{c['follow']}: {c['a']} ({c['layers_a']} layers) vs {c['b']} ({c['layers_b']} layers)")
        print("  Jaccard of the top k: " + ", ".join(f"k={k}: {v:.2f}" for k, v in c["jaccard"].items()))
        print(f"  Spearman rank correlation: {c['spearman']:.3f} over {c['spearman_n']} heads")
        edges = [f"{i / len(c['profile_a']):.1f}" for i in range(len(c["profile_a"]))]
        print(f"  top-{c['profile_k']} heads by relative depth (layer / layers, from): "
              + "  ".join(f"{e}: {pa:.2f}/{pb:.2f}" for e, pa, pb in zip(edges, c["profile_a"], c["profile_b"])))
    if args.output_dir:
        out = Path(args.output_dir)
        atomic_write_text(out / "heads_compare.json", json.dumps(pairs, indent=2, default=str) + "\n")
        print(f"wrote {out / 'heads_compare.json'}")
        print(f"wrote {plot_comparison(pairs, out / 'heads_compare.png')}")
    return 0


def _cmd_train_embedded(args) -> int:
    from mf_harness.embedded.train import main as train_main

    return int(train_main(args.train_args) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mf-harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("embedded-path", help="print the directory of the embedded default checkpoint")
    s.set_defaults(func=_cmd_embedded_path)
    s = sub.add_parser("spec", help="validate, build, import or convert an intervention spec",
                       description="mf-harness spec FILE | mf-harness spec import SOURCE (see --format)")
    s.add_argument("file", nargs="*", metavar="FILE | import SOURCE",
                   help="a spec JSON file; or 'import' and a head set from elsewhere")
    s.add_argument("--format", default="auto", choices=["auto", "csv", "names", "layer-head", "spec"],
                   help="import: csv (layer, head, score; top --k), names (L14H3, blocks.14.attn.hook_z:3), "
                        "layer-head (layer_idx/head_idx/alpha JSON, arXiv 2507.01790), spec")
    s.add_argument("--k", type=_pos_int("--k"), default=None, help="import: the top k heads")
    s.add_argument("--by", default=None, help="import csv: the score column (default: score, else rank)")
    s.add_argument("--follow", default=None, help="import csv: the direction, when the table has a follow column")
    s.add_argument("--action", choices=["block", "amplify"], default=None,
                   help="import: what to do to the heads (default: amplify when a coefficient/alpha is given)")
    s.add_argument("--block", help="heads to block, e.g. L14H3+L20H0")
    s.add_argument("--amplify", help="heads to amplify")
    s.add_argument("--coefficient", type=_typed(lambda v: finite_nonnegative(v, "--coefficient"),
                                                "--coefficient must be a finite number >= 0"),
                   help="amplification factor")
    s.add_argument("--scope", help="instruction | prompt_text | prompt | last | all")
    s.add_argument("--decode", type=_typed(lambda v: parse_bool(v, "--decode"), "--decode must be true or false"),
                   help="also act on generated tokens (true/false)")
    s.add_argument("--name", help="spec name")
    s.add_argument("--model", help="checkpoint (hub id, directory or 'embedded') whose layer/head ranges to check")
    s.add_argument("-o", "--output", help="write the spec JSON here")
    s.set_defaults(func=_cmd_spec)
    s = sub.add_parser("discover", help="rank heads by their contribution to the arbitration margin; write head sets")
    _common(s)
    s.add_argument("--k", type=_typed(_int_list, "--k must be comma-separated integers >= 1"), default="10,20,30,40",
                   help="head-set sizes (capped at the model's head count)")
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
    s.add_argument("--window", type=_pos_int("--window"), default=9,
                   help="layers per knockout window, centred on each layer")
    s.set_defaults(func=_cmd_knockout)
    s = sub.add_parser("sweep", help="head sets x k x coefficient x scope with controls, resumable")
    s.add_argument("--config", help="sweep config JSON (the keys of SweepConfig); overrides the flags")
    s.add_argument("--model-args", default="pretrained=embedded")
    s.add_argument("--rankings", default="", help="heads.csv (or its folder) from `mf-harness discover`")
    s.add_argument("--k", type=_typed(_int_list, "--k must be comma-separated integers >= 1"), default="10,20,30,40")
    s.add_argument("--seeds", type=_typed(lambda v: positive_int(v, "--seeds", minimum=0), "--seeds must be an integer"),
                   default=5, help="random control sets per k (>= 1 with random controls)")
    s.add_argument("--no-block", action="store_true", help="skip blocking cells")
    s.add_argument("--coefficients", type=_typed(_float_list, "--coefficients must be numbers >= 0"), default="",
                   help="amplification coefficients, e.g. 8,10,12")
    s.add_argument("--scopes", default="instruction")
    s.add_argument("--follows", default="text,vision")
    s.add_argument("--controls", default="random,shared,layers",
                   help="comma-separated: random (layer-matched, the paper's), random_any (any layer), shared, layers")
    s.add_argument("--capability-tasks", default="", help="e.g. mf_capability task names, comma-separated")
    s.add_argument("--limit", type=_pos_int("--limit"), default=None, help="docs per task (default: all)")
    s.add_argument("--batch-size", type=_pos_int("--batch-size"), default=8)
    s.add_argument("--name", type=_typed(lambda v: safe_name(v, "--name"), "--name must be a plain name"),
                   default="sweep", help="names the tables inside --output-dir (letters, digits, . _ -)")
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
    s.add_argument("--tolerance", type=_typed(lambda v: finite_nonnegative(v, "--tolerance"),
                                              "--tolerance must be a finite number >= 0"),
                   default=0.02, help="absolute, in metric units (0.02 = 2 points)")
    s.add_argument("--mode", choices=["abs", "ci"], default="abs")
    s.add_argument("--output-dir", type=Path, default=None, help="where to re-run (default: a temp dir)")
    s.add_argument("--model-args", default=None,
                   help="the model to re-run on (default: the header's, only if it is the embedded model)")
    s.add_argument("--rankings", default=None,
                   help="the rankings to re-run with (default: the header's, only if inside the working directory)")
    s.add_argument("--allow-model", action="append", default=[], metavar="MODEL",
                   help="a model the header may name without --model-args (repeatable)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_compare)
    s = sub.add_parser("heads", help="compare two head sets or rankings: overlap, rank correlation, depth profile")
    hs = s.add_subparsers(dest="heads_command", required=True, parser_class=_Parser)
    c = hs.add_parser("compare", help="A and B: heads.csv[:COLUMN] or a spec file")
    c.add_argument("a", help="a ranking (heads.csv, optionally :COLUMN to rank by it) or a spec file")
    c.add_argument("b", help="the same for the other set")
    c.add_argument("--k", type=_typed(_int_list, "--k must be comma-separated integers >= 1"), default="1,2,4,8,16",
                   help="top-k sizes for the overlap (the largest also sets the depth profile)")
    c.add_argument("--layers-a", type=_pos_int("--layers-a"), default=None,
                   help="layers of A's model (default: highest listed layer + 1)")
    c.add_argument("--layers-b", type=_pos_int("--layers-b"), default=None, help="layers of B's model")
    c.add_argument("--output-dir", type=Path, default=None, help="write heads_compare.json and heads_compare.png")
    c.set_defaults(func=_cmd_heads)
    s = sub.add_parser("train-embedded", help="train the embedded tiny VLM (CPU, deterministic); args go to "
                                              "python -m mf_harness.embedded.train (see --help there)", add_help=False)
    s.add_argument("train_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_train_embedded)
    s = sub.add_parser("demo", help="MFR on the embedded model: original vs targeted vs random heads (make demo)")
    s.add_argument("--limit", type=_pos_int("--limit"), default=None, help="docs per task")
    s.add_argument("--output-dir", default="out/demo", help="where the records, tables and plots go")
    s.add_argument("--overwrite", action="store_true", help="replace --output-dir if it exists (never without this)")
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
    except OSError as e:  # the environment (a path, a permission, a full disk), not the input's meaning
        print(f"mf-harness: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
