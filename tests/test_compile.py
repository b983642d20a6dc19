from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtmix.calibration.ranges import Ranges
from trtmix.errors import CompileError, PlanError
from trtmix.evaluate import cosine
from trtmix.ir.graph import GraphIndex, opset_version
from trtmix.ir.units import find_units
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import Precision, PrecisionPlan

from .conftest import batches_for, run_ort

FLAVOURS = ("tensorrt", "ort-cpu")


def _compile_checked(model, plan, ranges, flavour):
    compiled = compile_plan(model, plan, ranges, flavour)
    onnx.checker.check_model(compiled, full_check=True)
    return compiled


def _reads_dq(index: GraphIndex, node_name: str, input_position: int) -> bool:
    producer = index.producer.get(index.nodes[node_name].input[input_position])
    return producer is not None and producer.op_type == "DequantizeLinear"


def _quantized_units(compiled, units):
    """Names of the units whose anchor reads a DequantizeLinear output on its activation input."""
    index = GraphIndex(compiled)
    return {u.name for u in units if _reads_dq(index, u.name, 0)}


@pytest.mark.parametrize("name", ["convnet", "transformer"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_high_precision_plans_reproduce_float(calibrated, name, flavour):
    model, ranges = calibrated[name]
    feed = batches_for(name, 1, seed=7)[0]
    reference = run_ort(model, feed)
    for default in (Precision.FP16, Precision.FP32):
        compiled = _compile_checked(model, PrecisionPlan(default=default), ranges, flavour)
        assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in compiled.graph.node)
        tolerance = 2e-3 if (flavour == "tensorrt" and default is Precision.FP16) else 1e-5
        np.testing.assert_allclose(run_ort(compiled, feed), reference, atol=tolerance * max(1, np.abs(reference).max()))


@pytest.mark.parametrize("name", ["convnet", "transformer"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_all_int8_stays_within_bound(calibrated, name, flavour):
    model, ranges = calibrated[name]
    units = find_units(model)
    compiled = _compile_checked(model, PrecisionPlan.with_int8(u.name for u in units), ranges, flavour)
    assert _quantized_units(compiled, units) == {u.name for u in units}
    feed = batches_for(name, 1, seed=7)[0]
    reference, quantized = run_ort(model, feed), run_ort(compiled, feed)
    assert np.abs(quantized - reference).max() < 0.05 * np.abs(reference).max()
    assert cosine(quantized, reference).min() > 0.99
    assert np.abs(quantized - reference).max() > 0  # it really is quantized


def test_tensorrt_convnet_qdq_nodes(calibrated):
    model, ranges = calibrated["convnet"]
    units = find_units(model)
    compiled = _compile_checked(model, PrecisionPlan.with_int8(u.name for u in units), ranges, "tensorrt")
    counts = Counter(n.op_type for n in compiled.graph.node)
    # 5 activation tensors feed the 5 units (the stem's ReLU output is shared with the residual Add), 5 weights.
    assert counts["QuantizeLinear"] == 10 and counts["DequantizeLinear"] == 10
    index = GraphIndex(compiled)
    for unit in units:
        assert _reads_dq(index, unit.name, 1), f"{unit.name} weight is not Q/DQ'd"
    add = next(n for n in compiled.graph.node if n.op_type == "Add")
    skip_inputs = [_reads_dq(index, add.name, i) for i in range(2)]
    assert skip_inputs.count(True) == 1, "exactly the skip branch of the residual Add is quantized"


def test_tensorrt_flavour_is_strongly_typed(calibrated):
    model, ranges = calibrated["convnet"]
    units = find_units(model)
    plan = PrecisionPlan(Precision.FP16, {units[0].name: Precision.INT8, units[1].name: Precision.FP32})
    compiled = _compile_checked(model, plan, ranges, "tensorrt")
    assert opset_version(compiled) >= 19
    index = GraphIndex(compiled)
    for node in compiled.graph.node:
        if node.op_type == "QuantizeLinear":
            scale, zero_point = (index.constant_value(node.input[i]) for i in (1, 2))
            assert scale.dtype == np.float16 and zero_point.dtype == np.int8 and not zero_point.any()
    float_initializers = {i.name: numpy_helper.to_array(i).dtype for i in compiled.graph.initializer}
    fp32_weights = [n for n, dtype in float_initializers.items() if dtype == np.float32]
    # Only the fp32 unit keeps float32 weights (its conv weight and bias).
    assert fp32_weights and all(n.startswith("block_conv1") for n in fp32_weights), fp32_weights
    graph_io = {i.name for i in compiled.graph.input} | {o.name for o in compiled.graph.output}
    fp32_unit_io = set(index.nodes[units[1].name].input) | set(index.nodes[units[1].nodes[-1]].output)
    for cast in (n for n in compiled.graph.node if n.op_type == "Cast"):
        touches = set(cast.input) | set(cast.output)
        assert touches & (graph_io | fp32_unit_io), f"Cast {cast.name} is neither at graph I/O nor at the fp32 unit"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_mixed_plan_quantizes_exactly_the_planned_units(calibrated, flavour):
    for name, chosen in (("convnet", [0, 2, 4]), ("transformer", [1, 4, 8, 15])):
        model, ranges = calibrated[name]
        units = find_units(model)
        planned = {units[i].name for i in chosen}
        compiled = _compile_checked(model, PrecisionPlan.with_int8(planned), ranges, flavour)
        expected = set(planned)
        if flavour == "ort-cpu":
            # An INT8 conv's output is quantized for every reader (QLinearConv writes u8), so a float unit right
            # after it reads dequantized data too; it still has a float weight.
            planned_conv_outputs = {u.output for u in units if u.name in planned and u.kind == "conv"}
            expected |= {u.name for u in units if u.inputs[0] in planned_conv_outputs}
            if name == "convnet":  # the residual Add reads two INT8 outputs, so it runs as QLinearAdd and writes u8
                expected.add("/down/Conv")
        assert _quantized_units(compiled, units) == expected
        index = GraphIndex(compiled)
        weighted = {u.name for u in units if u.weight is not None and _reads_dq(index, u.name, 1)}
        assert weighted == {u.name for u in units if u.name in planned and u.weight is not None}


def test_ort_cpu_runs_real_int8_kernels(calibrated, tmp_path):
    import onnxruntime as ort

    model, ranges = calibrated["convnet"]
    units = find_units(model)
    compiled = _compile_checked(model, PrecisionPlan.with_int8(u.name for u in units), ranges, "ort-cpu")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(compiled.SerializeToString(), options, providers=["CPUExecutionProvider"])
    kernels = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert kernels["QLinearConv"] == 4 and kernels["Conv"] == 0
    assert kernels["QGemm"] == 1
    # The residual Add runs in int8 and its Relu is gone (the u8 output's zero point 0 clamps instead).
    assert kernels["QLinearAdd"] == 1 and kernels["Add"] == 0 and kernels["Relu"] == 0


def test_ort_cpu_residual_add_stays_float_next_to_a_float_unit(calibrated):
    model, ranges = calibrated["convnet"]
    units = find_units(model)
    second_conv = next(u for u in units if u.name.startswith("/block_conv2"))
    plan = PrecisionPlan.with_int8(u.name for u in units if u is not second_conv)
    compiled = _compile_checked(model, plan, ranges, "ort-cpu")
    index = GraphIndex(compiled)
    add = next(n for n in compiled.graph.node if n.op_type == "Add")
    assert [n.op_type for n in index.consumers[add.output[0]]] == ["Relu"], "an Add with a float input keeps its Relu"
    assert not _reads_dq(index, add.name, 0) or not _reads_dq(index, add.name, 1)
    feed = batches_for("convnet", 1, seed=7)[0]
    assert cosine(run_ort(compiled, feed), run_ort(model, feed)).min() > 0.99


@pytest.mark.parametrize("name", ["convnet", "transformer"])
def test_ort_fused_kernels_compute_what_the_graph_says(calibrated, name):
    """Regression: full-range int8 weights made ORT's u8s8 kernels saturate (the reason for 7-bit weights)."""
    model, ranges = calibrated[name]
    units = find_units(model)
    compiled = _compile_checked(model, PrecisionPlan.with_int8(u.name for u in units), ranges, "ort-cpu")
    feed = batches_for(name, 1, seed=3)[0]
    fused, reference = run_ort(compiled, feed, optimize=True), run_ort(compiled, feed, optimize=False)
    assert np.abs(fused - reference).max() < 0.01 * np.abs(reference).max()


def test_missing_or_foreign_ranges(calibrated):
    model, ranges = calibrated["convnet"]
    plan = PrecisionPlan.with_int8([find_units(model)[0].name])
    with pytest.raises(CompileError, match="no activation ranges"):
        compile_plan(model, plan, None, "tensorrt")
    with pytest.raises(CompileError, match="No activation range for 1 tensor"):
        compile_plan(model, plan, Ranges(tensors={}, meta={}), "tensorrt")
    foreign = Ranges(tensors=ranges.tensors, meta={"model_sha256": "0" * 64})
    with pytest.raises(CompileError, match="different model"):
        compile_plan(model, plan, foreign, "ort-cpu")
    with pytest.raises(PlanError, match="does not have"):
        compile_plan(model, PrecisionPlan.with_int8(["/nope/Conv"]), ranges, "tensorrt")
    with pytest.raises(CompileError, match="Unknown flavour"):
        compile_plan(model, plan, ranges, "tflite")


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("default", [Precision.FP16, Precision.FP32])
def test_compile_does_not_modify_its_input(calibrated, flavour, default):
    """The working graph reads the float model's weights in place (not a copy): none may change, nor be renamed."""
    model, ranges = calibrated["transformer"]
    before = model.SerializeToString()
    names = [u.name for u in find_units(model)]
    for plan in (PrecisionPlan.with_int8(names, default), PrecisionPlan.with_int8(names[::2], default)):
        compiled = compile_plan(model, plan, ranges, flavour)
        compiled.graph.initializer[0].name = "changed"  # the compiled graph owns its tensors
        assert model.SerializeToString() == before
