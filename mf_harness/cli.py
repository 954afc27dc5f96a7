"""The ``mf-harness`` command: thin subcommands over library functions.

    mf-harness embedded-path              # directory of the embedded default checkpoint
    mf-harness spec FILE [--model PATH]   # validate a spec (and bind it to a model's config)
    mf-harness spec --block L1H0+L2H3 --scope last -o heads.json   # write a spec file
    mf-harness demo                       # MFR with and without a head intervention

Input errors print one line (``mf-harness: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import sys

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
    s = sub.add_parser("demo", help="MFR on the embedded model, with and without a head intervention")
    s.add_argument("--limit", type=int, default=None, help="docs per task")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from mf_harness.errors import MfHarnessError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MfHarnessError as e:
        print(f"mf-harness: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
