"""The project's own regression check: re-score the committed embedded baseline and compare."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_embedded_baseline_still_holds(tmp_path):
    """`mf-harness compare` re-runs the sweep stored in leaderboards/embedded_ci.jsonl.

    Regenerate the baseline when the embedded checkpoint or the scoring changes on purpose:
    cp interventions/embedded/heads.csv leaderboards/embedded_ci_heads.csv
    mf-harness sweep --rankings leaderboards/embedded_ci_heads.csv --k 2,4 --seeds 5 --limit 24 \\
        --capability-tasks mf_shapes_image,mf_shapes_caption \\
        --controls random,random_any,shared,layers \\
        --output-dir out/ci --name embedded_ci && cp out/ci/records.jsonl leaderboards/embedded_ci.jsonl
    """
    p = subprocess.run([str(BIN / "mf-harness"), "compare", "--baseline", "leaderboards/embedded_ci.jsonl",
                        "--tolerance", "0.02", "--output-dir", str(tmp_path / "rerun"), "--no-progress"],
                       cwd=REPO, capture_output=True, text=True, timeout=1200, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert p.stdout.startswith("ok:")
