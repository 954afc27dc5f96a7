"""The ``mf-harness`` subcommands: each reads its parsed arguments and calls the library (see `mf_harness.cli`)."""

from __future__ import annotations

import sys
from pathlib import Path

from mf_harness.checks import atomic_write_text
from mf_harness.errors import MfHarnessError

__all__ = ["forms_file"] + [f"cmd_{n}" for n in ("embedded_path", "spec", "demo", "discover", "lens", "knockout",
                                                 "sweep", "leaderboard", "compare", "heads", "train_embedded")]


def cmd_embedded_path(args) -> int:
    from mf_harness.embedded import embedded_path

    print(embedded_path())
    return 0


def cmd_spec(args) -> int:
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
        spec.validate_for(geo.num_layers, geo.num_heads, model_name=args.model, head_layers=geo.attn_layers)
        print(f"ok: fits {args.model} ({geo.num_layers} layers x {geo.num_heads} heads)", file=sys.stderr)
    if args.output:
        spec.save(args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    print(spec.to_json())
    print(f"# {spec.describe()} (hash {spec.spec_hash})", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from mf_harness.demo import main as demo_main

    return demo_main(limit=args.limit, out=args.output_dir, overwrite=args.overwrite)


def forms_file(args):
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


def cmd_discover(args) -> int:
    from mf_harness.analysis.report import discover

    r = discover(args.model_args, args.output_dir, tasks=args.tasks.split(","), limit=args.limit,
                 k_list=args.k, topk_tokens=args.topk_tokens, method=args.method,
                 site=args.site, ablation_scope=args.ablation_scope, batch_size=args.batch_size,
                 extra_forms=forms_file(args), progress=not args.no_progress)
    if r.get("rank", 0) != 0:  # data parallel: rank 0 reports
        return 0
    t = r["heads"]
    for follow, g in t.groupby("follow"):
        top = ", ".join(f"L{a}H{b}" for a, b in zip(g["layer"][:10], g["head"][:10]))
        print(f"{follow}-following top heads: {top}")
    for c in r["correlation"]:
        print(f"{c['follow']}: Spearman(DLA, ablation) = {c['spearman_dla_vs_ablation']:.3f} over {c['n_heads']} heads")
        if "spearman_atp_vs_ablation" in c:
            print(f"{c['follow']}: Spearman(AtP, exact ablation) = {c['spearman_atp_vs_ablation']:.3f} over "
                  f"{c['n_heads']} heads")
    for p in r["specs"]:
        print(f"wrote {p}")
    print(f"tables and plots in {r['out']}")
    return 0


def cmd_lens(args) -> int:
    from mf_harness.analysis.report import lens

    r = lens(args.model_args, args.output_dir, tasks=args.tasks.split(","), limit=args.limit,
             topk_tokens=args.topk_tokens, batch_size=args.batch_size, extra_forms=forms_file(args),
             progress=not args.no_progress)
    t = r["ldar"]
    t = t[t.subset == "all"].pivot_table(index="layer", columns=["follow", "site"], values="ldar")
    print(f"LDAR by layer ({r['n']} samples):")
    print(t.round(3).to_string())
    print(f"tables and plots in {r['out']}")
    return 0


def cmd_knockout(args) -> int:
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
                 window=args.window, batch_size=args.batch_size, extra_forms=forms_file(args),
                 progress=not args.no_progress)
    t = r["nssd"]
    print(t[["follow", "src", "dest", "layer", "window", "nssd_mean", "nssd_std", "mfr_before", "mfr_after"]]
          .round(4).to_string(index=False))
    print(f"tables and plots in {r['out']}")
    return 0


def cmd_sweep(args) -> int:
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
    if r.get("rank", 0) != 0:  # data parallel: rank 0 reports
        return 0
    from mf_harness.runs.leaderboard import render_markdown, specificity_tables, write_leaderboard

    written = write_leaderboard(r["records"], Path(args.output_dir) / cfg.name)
    print(render_markdown(specificity_tables(r["records"])))
    print(f"cells: {r['cells']} ({r['cells_run']} run, {r['cells_skipped']} resumed from disk); "
          f"model forwards: {r['forwards']}; wall time: {r['wall_s']:.1f}s")
    print(f"records: {r['out'] / 'records.jsonl'}")
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_score(args) -> int:
    from mf_harness.core.spec_import import import_spec
    from mf_harness.runs.score import run_score

    specs = [import_spec(src, k=args.k, by=args.by, follow=args.follow, action=args.action,
                         coefficient=args.coefficient, scope=args.scope) for src in args.specs]
    tasks = None if args.tasks is None else [t for t in args.tasks.split(",") if t and t != "none"]
    r = run_score(specs, args.output_dir, model_args=args.model_args, follows=[f for f in args.follows.split(",") if f],
                  capability_tasks=tasks, seeds=args.seeds, controls=[c for c in args.controls.split(",") if c],
                  limit=args.limit, batch_size=args.batch_size, engine=args.engine, mfr_task=args.mfr_task,
                  progress=not args.no_progress)
    if r.get("rank", 0) != 0:  # data parallel: rank 0 reports
        return 0
    print((r["out"] / "score.md").read_text())
    print(f"{len(r['sets'])} head set(s) in {r['wall_s']:.1f}s")
    for s in r["sets"]:
        print(f"wrote {s['out'] / 'card.md'}")
    for name in ("score.md", "score.csv", "records.jsonl"):
        print(f"wrote {r['out'] / name}")
    return 0


def cmd_leaderboard(args) -> int:
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


def cmd_compare(args) -> int:
    import tempfile

    from mf_harness.runs.leaderboard import compare_records
    from mf_harness.runs.records import read_records
    from mf_harness.runs.rerun import trusted_rerun
    from mf_harness.runs.sweep import SweepConfig, run_sweep

    header, baseline = read_records(args.baseline)
    if header is not None and isinstance(header.get("score"), dict):
        raise MfHarnessError(f"{args.baseline} is the combined records of `mf-harness score`: compare each head set's "
                             f"own sweep, sets/<name>/records.jsonl beside it")
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


def cmd_heads(args) -> int:
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


def cmd_train_embedded(args) -> int:
    from mf_harness.embedded.train import main as train_main

    return int(train_main(args.train_args) or 0)
