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

from mf_harness.checks import finite_nonnegative, parse_bool, positive_int, safe_name
from mf_harness import commands
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mf-harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("embedded-path", help="print the directory of the embedded default checkpoint")
    s.set_defaults(func=commands.cmd_embedded_path)
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
    s.set_defaults(func=commands.cmd_spec)
    s = sub.add_parser("discover", help="rank heads by their contribution to the arbitration margin; write head sets")
    _common(s)
    s.add_argument("--k", type=_typed(_int_list, "--k must be comma-separated integers >= 1"), default="10,20,30,40",
                   help="head-set sizes (capped at the model's head count)")
    s.add_argument("--method", default="dla", choices=["dla", "ablation", "both", "atp"],
                   help="dla: direct logit attribution (paper, Eq. 9); ablation: total effect of blocking each "
                        "head (exact, prefix-shared); both: rank by DLA and report the rank correlation; atp: "
                        "attribution patching (one forward + backward), ranked by it, with its Spearman against "
                        "exact ablation")
    s.add_argument("--site", default="instruction", choices=["instruction", "last"],
                   help="where the margin is read (and the written specs' scope, for dla)")
    s.add_argument("--ablation-scope", default="instruction", choices=["instruction", "prompt_text", "last", "prompt"])
    s.set_defaults(func=commands.cmd_discover)
    s = sub.add_parser("lens", help="logit lens: LDAR by layer at the instruction tokens and the last position")
    _common(s)
    s.set_defaults(func=commands.cmd_lens)
    s = sub.add_parser("knockout", help="attention knockout: NSSD and decision change by layer")
    _common(s)
    s.add_argument("--edges", default="image->instruction,context->instruction,instruction->last",
                   help="comma-separated source->destination token sets")
    s.add_argument("--window", type=_pos_int("--window"), default=9,
                   help="layers per knockout window, centred on each layer")
    s.set_defaults(func=commands.cmd_knockout)
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
    s.set_defaults(func=commands.cmd_sweep)
    s = sub.add_parser("score", help="score head sets for specificity: MFR vs matched random controls, capability "
                                     "beside it, one card per set and one table",
                       description="mf-harness score SPEC [SPEC ...]: each SPEC is a spec JSON file, a heads CSV "
                                   "(top --k), head names (L14H3+L20H0, blocks.14.attn.hook_z:3) or a layer_idx/"
                                   "head_idx JSON, as `mf-harness spec import` reads them")
    s.add_argument("specs", nargs="+", metavar="SPEC")
    s.add_argument("--model-args", default="pretrained=embedded")
    s.add_argument("--tasks", default=None,
                   help="capability tasks, comma-separated (default: mf_shapes_* on pretrained=embedded, else "
                        "the offline fixtures mf_textvqa_val_fixture,mf_mmlu_fixture; 'none' for MFR only)")
    s.add_argument("--follows", default="text,vision", help="MFR directions to score each set on")
    s.add_argument("--seeds", type=_typed(lambda v: positive_int(v, "--seeds"), "--seeds must be an integer >= 1"),
                   default=5, help="random control sets per control")
    s.add_argument("--controls", default="random,random_any",
                   help="random (same count per layer), random_any (any layer), comma-separated")
    s.add_argument("--k", type=_pos_int("--k"), default=None, help="a heads CSV: its top k (required for a CSV)")
    s.add_argument("--by", default=None, help="a heads CSV: the score column (default: score, else rank)")
    s.add_argument("--follow", default=None, help="a heads CSV with a follow column: which direction's ranking")
    s.add_argument("--action", choices=["block", "amplify"], default=None,
                   help="for sources that are not spec files (default: block, amplify with a coefficient/alpha)")
    s.add_argument("--coefficient", type=_typed(lambda v: finite_nonnegative(v, "--coefficient"),
                                                "--coefficient must be a finite number >= 0"), default=None)
    s.add_argument("--scope", default="instruction", help="for sources that are not spec files")
    s.add_argument("--mfr-task", default="mfr", help="MFR task family: <name>_text / <name>_vision")
    s.add_argument("--limit", type=_pos_int("--limit"), default=None, help="docs per task (default: all)")
    s.add_argument("--batch-size", type=_pos_int("--batch-size"), default=8)
    s.add_argument("--engine", choices=["fast", "lmms"], default="fast")
    s.add_argument("--output-dir", required=True, type=Path)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=commands.cmd_score)
    s = sub.add_parser("leaderboard", help="Markdown/CSV tables and plots from records files")
    s.add_argument("records", nargs="+", type=Path, help="records.jsonl files (several: cross-model table)")
    s.add_argument("--out", required=True, type=Path, help="output prefix, e.g. leaderboards/embedded")
    s.set_defaults(func=commands.cmd_leaderboard)
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
    s.set_defaults(func=commands.cmd_compare)
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
    c.set_defaults(func=commands.cmd_heads)
    s = sub.add_parser("train-embedded", help="train the embedded tiny VLM (CPU, deterministic); args go to "
                                              "python -m mf_harness.embedded.train (see --help there)", add_help=False)
    s.add_argument("train_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=commands.cmd_train_embedded)
    s = sub.add_parser("demo", help="MFR on the embedded model: original vs targeted vs random heads (make demo)")
    s.add_argument("--limit", type=_pos_int("--limit"), default=None, help="docs per task")
    s.add_argument("--output-dir", default="out/demo", help="where the records, tables and plots go")
    s.add_argument("--overwrite", action="store_true", help="replace --output-dir if it exists (never without this)")
    s.set_defaults(func=commands.cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train-embedded"]:  # every option (--help included) belongs to the trainer's own parser
        from mf_harness.embedded.train import main as train_main

        return int(train_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    if args.command in ("discover", "lens", "knockout", "sweep", "compare", "score"):
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
