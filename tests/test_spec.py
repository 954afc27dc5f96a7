import json

import pytest

from lmms_eval.utils import simple_parse_args_string

from mf_harness.core.spec import SCHEMA_VERSION, Head, InterventionSpec, SpecError, spec_from_model_args


def test_heads_parse_in_every_form():
    assert Head.parse("L14H3") == Head(14, 3)
    assert Head.parse("l2h0") == Head(2, 0)
    assert Head.parse({"layer": 5, "head": 1}) == Head(5, 1)
    assert Head.parse((7, 2)) == Head(7, 2)
    assert str(Head(14, 3)) == "L14H3"


def test_json_round_trip_is_identity(tmp_path):
    spec = InterventionSpec(block=["L3H1", {"layer": 0, "head": 2}], amplify=["L1H1"], coefficient=10,
                            scope="last", decode=True, name="mixed", provenance={"method": "dla", "k": 3})
    again = InterventionSpec.from_json(spec.to_json())
    assert again == spec and again.provenance == {"method": "dla", "k": 3}
    path = spec.save(tmp_path / "s.json")
    assert InterventionSpec.load(path) == spec
    d = json.loads(path.read_text())
    assert d["schema_version"] == SCHEMA_VERSION
    assert d["block"] == ["L0H2", "L3H1"]  # canonical, sorted
    assert d["coefficient"] == 10.0


def test_file_name_becomes_spec_name(tmp_path):
    p = tmp_path / "text_top2.json"
    p.write_text(json.dumps({"schema_version": 1, "block": ["L1H1"]}))
    assert InterventionSpec.load(p).name == "text_top2"


def test_inline_model_args_survive_lmms_eval_split(tmp_path):
    # exactly what lmms-eval does with --model_args
    args = simple_parse_args_string("pretrained=embedded,block=L1H0+L2H3,scope=last,decode=true,spec_name=x")
    spec, rest = spec_from_model_args(args)
    assert rest == {"pretrained": "embedded"}
    assert spec.block == (Head(1, 0), Head(2, 3)) and spec.scope == "last" and spec.decode and spec.name == "x"
    args = simple_parse_args_string("pretrained=p,amplify=L0H1,coefficient=10")
    spec, _ = spec_from_model_args(args)
    assert spec.amplify == (Head(0, 1),) and spec.coefficient == 10.0


def test_inline_keys_override_the_file(tmp_path):
    p = tmp_path / "h.json"
    InterventionSpec(block=["L1H1", "L2H2"], name="base").save(p)
    spec, _ = spec_from_model_args(simple_parse_args_string(f"intervention={p},scope=prompt_text"))
    assert spec.block == (Head(1, 1), Head(2, 2)) and spec.scope == "prompt_text" and spec.name == "base"


def test_empty_spec_and_hash():
    assert InterventionSpec().is_empty
    assert InterventionSpec(amplify=["L1H1"], coefficient=1).is_empty
    assert not InterventionSpec(block=["L1H1"]).is_empty
    a = InterventionSpec(block=["L1H1"], name="a")
    b = InterventionSpec(block=[(1, 1)], name="b")
    assert a.spec_hash == b.spec_hash  # the name does not change what a spec does
    assert a.spec_hash != InterventionSpec(block=["L1H2"]).spec_hash


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"block": "L1H1+L1H1"}, "L1H1 is listed twice"),
        ({"block": ["L1H1"], "amplify": ["L1H1"], "coefficient": 2}, "in both 'block' and 'amplify'"),
        ({"amplify": ["L1H1"]}, "need a 'coefficient'"),
        ({"amplify": ["L1H1"], "coefficient": float("nan")}, "finite number >= 0"),
        ({"amplify": ["L1H1"], "coefficient": float("inf")}, "finite number >= 0"),
        ({"amplify": ["L1H1"], "coefficient": -1}, "finite number >= 0"),
        ({"amplify": ["L1H1"], "coefficient": "ten"}, "must be a number"),
        ({"block": "L1X2"}, "cannot parse head 'L1X2'"),
        ({"block": [{"layer": 1}]}, "exactly the keys 'layer' and 'head'"),
        ({"block": [(-1, 0)]}, "non-negative integer"),
        ({"scope": "image"}, "scope must be one of instruction, prompt_text, prompt, last, all"),
        ({"decode": "maybe"}, "decode must be one of true/false/1/0/yes/no"),
    ],
)
def test_bad_specs_name_the_value(kwargs, fragment):
    with pytest.raises(SpecError) as e:
        InterventionSpec(**kwargs)
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"schema_version": 99}', "unsupported spec schema_version 99"),
        ('{"blocks": ["L1H1"]}', "unknown spec field(s) ['blocks']"),
    ],
)
def test_bad_json(text, fragment):
    with pytest.raises(SpecError) as e:
        InterventionSpec.from_json(text)
    assert fragment in str(e.value)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(SpecError, match="intervention file not found"):
        InterventionSpec.load(tmp_path / "nope.json")


def test_binding_checks_ranges():
    InterventionSpec(block=["L3H3"]).validate_for(4, 4)
    with pytest.raises(SpecError) as e:
        InterventionSpec(block=["L4H0"]).validate_for(4, 4, "tiny")
    assert "L4H0" in str(e.value) and "layer must be 0..3" in str(e.value)
    with pytest.raises(SpecError) as e:
        InterventionSpec(amplify=["L0H9"], coefficient=2).validate_for(4, 4)
    assert "L0H9" in str(e.value) and "head must be 0..3" in str(e.value)
