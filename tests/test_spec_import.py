"""Head sets from elsewhere as specs (`spec import`), the literature file, and comparing head sets."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mf_harness.analysis.headsets import HeadRanking, compare_heads, layer_profile, load_rankings, spearman
from mf_harness.core.spec import Head, InterventionSpec, SpecError
from mf_harness.core.spec_import import import_spec, parse_head_name

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1")
H = Head


def test_csv_top_k_by_score_rank_and_follow(tmp_path):
    p = tmp_path / "scores.csv"
    p.write_text("layer,head,score\n3,1,0.2\n0,4,0.9\n2,2,-1.0\n1,0,0.5\n")
    spec = import_spec(p, k=2)
    assert spec.block == (H(0, 4), H(1, 0)) and spec.provenance["score_column"] == "score"
    assert import_spec(p, k=3, by="score").block == (H(0, 4), H(1, 0), H(3, 1))
    q = tmp_path / "heads.csv"  # discover's layout: a follow column and a rank
    q.write_text("follow,layer,head,rank\ntext,2,0,2\ntext,1,1,1\nvision,3,3,1\ntext,0,0,3\n")
    with pytest.raises(SpecError, match="pick one with --follow"):
        import_spec(q, k=1)
    assert import_spec(q, k=2, follow="text").block == (H(1, 1), H(2, 0))
    with pytest.raises(SpecError, match="--k 9 asks for more"):
        import_spec(q, k=9, follow="text")
    amp = import_spec(q, k=1, follow="vision", coefficient=8)
    assert amp.amplify == (H(3, 3),) and amp.coefficient == 8.0 and not amp.block


def test_transformerlens_and_plain_names(tmp_path):
    assert parse_head_name("blocks.14.attn.hook_z:3") == H(14, 3)
    assert parse_head_name("blocks.14.attn.hook_z[3]") == H(14, 3)
    assert parse_head_name("blocks.14.attn.hook_result head 3") == H(14, 3)
    assert parse_head_name("L14H3") == H(14, 3) and parse_head_name("(14, 3)") == H(14, 3)
    with pytest.raises(SpecError, match="cannot read head name 'blocks.14.mlp.hook_post:3'"):
        parse_head_name("blocks.14.mlp.hook_post:3")
    f = tmp_path / "heads.txt"
    f.write_text("# from a TransformerLens notebook\nblocks.2.attn.hook_z:1\nL0H3, (5, 6)\n")
    assert import_spec(f).block == (H(0, 3), H(2, 1), H(5, 6))
    assert import_spec("L1H2+L0H0", "names").block == (H(0, 0), H(1, 2))  # inline
    j = tmp_path / "heads.json"
    j.write_text(json.dumps(["blocks.1.attn.hook_z:0", [3, 2]]))
    assert import_spec(j).block == (H(1, 0), H(3, 2))


def test_layer_head_lists_with_alpha(tmp_path):
    """The configs of arXiv 2507.01790's public code: layer_idx / head_idx / alpha (and layer_ids / head_ids)."""
    c = tmp_path / "cfg.json"
    c.write_text(json.dumps({"model_name": "Qwen/Qwen2.5-VL-7B-Instruct", "alpha": 10.0, "layer_idx": [11, 20],
                             "head_idx": [14, 16]}))
    spec = import_spec(c, scope="all")
    assert spec.amplify == (H(11, 14), H(20, 16)) and spec.coefficient == 10.0 and spec.scope == "all"
    assert spec.provenance["format"] == "layer-head" and spec.provenance["model_name"].endswith("7B-Instruct")
    c.write_text(json.dumps({"layer_ids": [11, 20], "head_ids": [14, 16]}))
    assert import_spec(c).block == (H(11, 14), H(20, 16))  # no alpha: a block
    c.write_text(json.dumps({"alpha": -10, "layer_idx": [11], "head_idx": [14]}))
    with pytest.raises(SpecError, match="alpha -10 < 0"):
        import_spec(c)
    c.write_text(json.dumps({"alpha": 2, "layer_idx": [11, 3], "head_idx": [14]}))
    with pytest.raises(SpecError, match="same length"):
        import_spec(c)


def test_spec_files_round_trip(tmp_path):
    spec = InterventionSpec(amplify=["L2H1", "L0H3"], coefficient=12, scope="last", decode=True, name="x")
    p = spec.save(tmp_path / "x.json")
    back = import_spec(p)
    assert back == spec and back.spec_hash == spec.spec_hash


def test_the_literature_file_fits_qwen2_5_vl_7b():
    """Validated against Qwen2.5-VL-7B-Instruct's geometry (config built offline: 28 layers x 28 heads)."""
    from transformers import Qwen2_5_VLConfig

    from mf_harness.core.arch import geometry

    cfg = Qwen2_5_VLConfig(text_config={"num_hidden_layers": 28, "num_attention_heads": 28, "hidden_size": 3584,
                                        "num_key_value_heads": 4, "intermediate_size": 18944})
    geo = geometry(cfg)
    assert (geo.num_layers, geo.num_heads, geo.head_dim) == (28, 28, 128)
    path = REPO / "interventions" / "literature" / "qwen2_5_vl_7b_router_heads_example.json"
    spec = InterventionSpec.load(path)
    spec.validate_for(geo.num_layers, geo.num_heads, model_name="Qwen/Qwen2.5-VL-7B-Instruct")
    assert spec.amplify == (H(11, 14), H(20, 16)) and spec.coefficient == 10.0
    assert "example configuration" in spec.provenance["what"] and "2507.01790" in spec.provenance["source"]
    with pytest.raises(SpecError, match="out of range"):
        spec.replace(amplify=["L28H0"]).validate_for(geo.num_layers, geo.num_heads, model_name="7B")


def test_spec_import_cli(tmp_path):
    p = tmp_path / "scores.csv"
    p.write_text("layer,head,score\n3,1,0.2\n0,4,0.9\n1,0,0.5\n")
    out = tmp_path / "top2.json"
    r = subprocess.run([str(BIN / "mf-harness"), "spec", "import", str(p), "--k", "2", "--action", "amplify",
                        "--coefficient", "8", "--model", "embedded", "-o", str(out)], env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    spec = InterventionSpec.load(out)
    assert spec.amplify == (H(0, 4), H(1, 0)) and spec.coefficient == 8.0 and "ok: fits embedded" in r.stderr


def _rank(name, heads, layers):
    return HeadRanking(name, tuple(heads), {h: float(len(heads) - i) for i, h in enumerate(heads)}, layers)


def test_overlap_rank_correlation_and_relative_depth():
    a = _rank("a", [H(0, 0), H(1, 1), H(2, 2), H(3, 3)], 4)
    b = _rank("b", [H(0, 0), H(2, 2), H(1, 1), H(3, 0)], 4)
    rev = _rank("rev", list(reversed(a.heads)), 4)
    assert spearman(a, a)[0] == pytest.approx(1.0) and spearman(a, rev)[0] == pytest.approx(-1.0)
    (c,) = compare_heads({"text": a}, {"text": b}, [1, 2, 3, 4])
    assert c["jaccard"] == {1: 1.0, 2: pytest.approx(1 / 3), 3: 1.0, 4: pytest.approx(3 / 5)}
    assert c["spearman"] == pytest.approx(0.5) and c["spearman_n"] == 3  # common heads ranked 1,2,3 vs 1,3,2
    # depth is relative: layer 3 of 4 and layer 21 of 28 both sit at 0.75
    deep = _rank("deep", [H(21, 5)], 28)
    assert layer_profile(_rank("x", [H(3, 0)], 4), 1) == layer_profile(deep, 1)
    assert layer_profile(deep, 1)[7] == 1.0
    s = HeadRanking("set", (H(0, 0), H(3, 3)), None, 4)
    (c,) = compare_heads({"all": s}, {"text": a}, [2])
    assert c["jaccard"][2] == pytest.approx(1 / 3) and math.isnan(c["spearman"])


def test_heads_compare_on_the_embedded_rankings(tmp_path):
    """The README's example: DLA vs total effect (ablation) on the committed embedded ranking."""
    import pandas as pd

    src = REPO / "interventions" / "embedded" / "heads.csv"
    r = subprocess.run([str(BIN / "mf-harness"), "heads", "compare", f"{src}:dla_mean", f"{src}:ablation_mean",
                        "--k", "2,4,8", "--output-dir", str(tmp_path)], env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(src)
    for follow, g in df.groupby("follow"):
        rho = g["dla_mean"].rank().corr(g["ablation_mean"].rank())  # Spearman = Pearson of the ranks
        assert f"Spearman rank correlation: {rho:.3f} over 32 heads" in r.stdout
        # the README shows this command on the committed ranking: its numbers are this file's
        assert f"Spearman rank correlation: {rho:.3f} over 32 heads" in (REPO / "README.md").read_text()
    saved = json.loads((tmp_path / "heads_compare.json").read_text())
    assert [c["follow"] for c in saved] == ["text", "vision"] and (tmp_path / "heads_compare.png").stat().st_size > 0
    assert load_rankings(f"{src}:dla_mean")["text"].heads[0] != load_rankings(f"{src}:ablation_mean")["text"].heads[0]
