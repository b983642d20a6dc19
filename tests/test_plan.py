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


def test_ort_cpu_weight_bits_follow_the_cpu_and_the_flag(calibrated, tmp_path):
    """7-bit weights stay within ±63, 8-bit use the full ±127; the default follows VNNI/AMX detection."""
    import onnx
    from onnx import numpy_helper

    from trtmix import api
    from trtmix.runtime.cpu import cpu_features

    model, ranges = calibrated["convnet"]
    source = tmp_path / "convnet.onnx"
    onnx.save(model, source)
    peaks = {}
    for bits in (7, 8, None):
        out = tmp_path / f"w{bits}.onnx"
        result = api.build(source, "int8", out, flavour="ort-cpu", ranges=ranges, weight_bits=bits)
        compiled = onnx.load(out)
        weights = [numpy_helper.to_array(i) for i in compiled.graph.initializer if i.data_type == onnx.TensorProto.INT8]
        peaks[bits] = max(int(abs(w.astype(int)).max()) for w in weights)
        props = {p.key: p.value for p in compiled.metadata_props}
        assert props["trtmix.weight_bits"] == str(result.weight_bits)
    assert peaks[7] <= 63 and peaks[8] == 127
    expected = 8 if cpu_features().int8_exact else 7
    assert peaks[None] == peaks[expected]


def test_weight_bits_7_is_refused_for_the_tensorrt_flavour(calibrated, tmp_path):
    import onnx
    import pytest

    from trtmix import api
    from trtmix.errors import CompileError

    model, ranges = calibrated["convnet"]
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(CompileError, match="ort-cpu flavour only"):
        api.build(tmp_path / "m.onnx", "int8", tmp_path / "o.onnx", flavour="tensorrt", ranges=ranges, weight_bits=7)
