import json

import pytest

from trtmix.errors import PlanError
from trtmix.quant.plan import Precision, PrecisionPlan


def test_round_trip(tmp_path):
    plan = PrecisionPlan(Precision.FP16, {"/b/Conv": Precision.INT8, "/a/Conv": Precision.FP32})
    plan.save(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data == {"default": "fp16", "units": {"/a/Conv": "fp32", "/b/Conv": "int8"}}
    loaded = PrecisionPlan.load(tmp_path / "plan.json")
    assert loaded == plan
    assert loaded.stable_hash() == plan.stable_hash()
    assert loaded.precision_of("/b/Conv") is Precision.INT8 and loaded.precision_of("/c/Conv") is Precision.FP16


def test_hash_ignores_order_and_redundant_entries():
    a = PrecisionPlan(Precision.FP16, {"x": Precision.INT8, "y": Precision.INT8})
    b = PrecisionPlan(Precision.FP16, {"y": Precision.INT8, "x": Precision.INT8, "z": Precision.FP16})
    c = PrecisionPlan(Precision.FP16, {"x": Precision.INT8})
    assert a.stable_hash() == b.stable_hash() != c.stable_hash()
    assert len(a.stable_hash()) == 16


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"default": "int4"}', "Unknown precision 'int4'"),
        ('{"units": {"a": "bf8"}}', "Unknown precision 'bf8'"),
        ('{"units": ["a"]}', "must map unit names"),
        ('{"default": "fp16", "extra": 1}', "unknown keys"),
    ],
)
def test_bad_plan_files(tmp_path, content, message):
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(PlanError, match=message):
        PrecisionPlan.load(path)


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        PrecisionPlan.load(tmp_path / "nope.json")


def test_unknown_unit_lists_close_matches():
    plan = PrecisionPlan.with_int8(["/layers.0.query/MatMull"])
    with pytest.raises(PlanError, match=r"did you mean '/layers\.0\.query/MatMul'"):
        plan.validate(["/layers.0.query/MatMul", "/layers.0.key/MatMul", "/fc/Gemm"])
    PrecisionPlan.with_int8(["/fc/Gemm"]).validate(["/fc/Gemm"])
