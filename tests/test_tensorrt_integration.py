"""On a TensorRT host: build and time the tiny conv net's all-FP16, all-INT8 and mixed graphs, verify each engine's
precisions against its plan, and compare outputs with ONNX Runtime.  Skipped where TensorRT or CUDA is missing."""

import numpy as np
import pytest

from trtmix.ir.units import find_units
from trtmix.job.engine_check import check_layers, check_plan, describe, mismatches
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.runtime.tensorrt import tensorrt_available

from .conftest import batches_for, run_ort

pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(not tensorrt_available(), reason="needs a real TensorRT and a CUDA device"),
]


@pytest.mark.parametrize("plan_kind", ["fp16", "int8", "mixed"])
def test_engine_runs_the_plan_and_matches_onnxruntime(calibrated, tmp_path, plan_kind):
    from trtmix.runtime.tensorrt import BuildSettings, TensorRTBackend

    model, ranges = calibrated["convnet"]
    units = find_units(model)
    plan = {
        "fp16": PrecisionPlan(),
        "int8": PrecisionPlan.with_int8(u.name for u in units),
        "mixed": PrecisionPlan(Precision.FP16, {units[0].name: Precision.INT8, units[2].name: Precision.INT8}),
    }[plan_kind]
    compiled = compile_plan(model, plan, ranges, "tensorrt")
    path = tmp_path / "model.onnx"
    path.write_bytes(compiled.SerializeToString())
    backend = TensorRTBackend(BuildSettings(timing_cache=tmp_path / "timing.cache"))
    engine = backend.build(path, tmp_path / "model.engine")
    checks = check_plan(backend.engine_information(engine), units, plan)
    assert not mismatches(checks), describe(checks)
    feed = batches_for("convnet", 1, seed=11)[0]
    with_context = check_layers(backend.engine_layers(engine, feed), units, plan)  # inspector given a context
    assert not mismatches(with_context), describe(with_context)
    reference = run_ort(compiled, feed)
    output = backend.run(engine, feed)[0].astype(np.float32)
    np.testing.assert_allclose(output, reference, atol=0.05 * np.abs(reference).max())
    stats = backend.time(engine, feed, runs=20, warmup=5)
    assert stats.median_ms > 0 and stats.runs == 20 and stats.settings["cuda_graph"] == "True"
    assert (tmp_path / "timing.cache").is_file()


def test_layer_profile_attributes_every_unit(calibrated, tmp_path):
    """TensorRT's IProfiler times each layer; the latency model names every unit of the conv net in both builds."""
    from trtmix.runtime.attribution import latency_model
    from trtmix.runtime.tensorrt import BuildSettings, TensorRTBackend

    model, ranges = calibrated["convnet"]
    units = find_units(model)
    backend = TensorRTBackend(BuildSettings(timing_cache=tmp_path / "timing.cache"))
    feed = batches_for("convnet", 1, seed=11)[0]
    builds = []
    for name, plan in (("high", PrecisionPlan()), ("int8", PrecisionPlan.with_int8(u.name for u in units))):
        compiled = compile_plan(model, plan, ranges, "tensorrt")
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(compiled.SerializeToString())
        layers = backend.layer_profile(backend.build(path, tmp_path / f"{name}.engine"), feed, runs=5)
        assert layers and all(layer.ms is not None and layer.ms >= 0 for layer in layers)
        builds.append((layers, compiled))
    result = latency_model(builds[0], builds[1], units)
    assert result.unattributed == [], result.units
