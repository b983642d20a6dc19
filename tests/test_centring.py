"""Centring a one-sided input, (X − z)/s with the shift moved into the bias (issue 33).

In float the shift is exact; in int8 it must not cost more than it gains.  Before the fix the bias took z·W of the
float weight, so the int8 unit was off by the constant z·ΔW per output channel, and centring lowered MiniLM's
all-INT8 cosine from 0.9873 to 0.9607.  The model here is an FFN whose second unit reads a GELU-like output.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from trtmix.calibration.calibrate import CalibrationConfig, calibrate
from trtmix.calibration.ranges import Ranges
from trtmix.ir.units import find_units
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import PrecisionPlan
from trtmix.quant.smooth import SmoothSettings, plan_smoothing, smoothed_range, unit_scales, unit_shift
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

ROWS, WIDTH, HIDDEN = 32, 16, 256


def _ffn(seed: int = 0) -> onnx.ModelProto:
    """input → fc1 (MatMul + bias) → x·sigmoid(1.702x) (GELU's shape: one-sided) → fc2 (MatMul + bias) → y."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((WIDTH, HIDDEN)) / np.sqrt(WIDTH)).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(HIDDEN) * 0.5 - 1.0).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((HIDDEN, WIDTH)) / np.sqrt(HIDDEN)).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal(WIDTH) * 0.1).astype(np.float32), "b2"),
             numpy_helper.from_array(np.asarray(1.702, np.float32), "k")]  # fmt: skip
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h"], name="fc1/MatMul"),
             helper.make_node("Add", ["h", "b1"], ["pre"], name="fc1/Add"),
             helper.make_node("Mul", ["pre", "k"], ["scaled"], name="gelu/Mul"),
             helper.make_node("Sigmoid", ["scaled"], ["gate"], name="gelu/Sigmoid"),
             helper.make_node("Mul", ["pre", "gate"], ["gelu"], name="gelu/Mul_1"),
             helper.make_node("MatMul", ["gelu", "w2"], ["o"], name="fc2/MatMul"),
             helper.make_node("Add", ["o", "b2"], ["y"], name="fc2/Add")]  # fmt: skip
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "ffn", [value("input", onnx.TensorProto.FLOAT, [ROWS, WIDTH])],
                              [value("y", onnx.TensorProto.FLOAT, [ROWS, WIDTH])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((ROWS, WIDTH)).astype(np.float32)} for _ in range(count)]


def _outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    with OnnxRuntimeRunner(model, threads=1, optimize=False) as runner:
        return np.concatenate([runner.infer(feed)[0] for feed in feeds]).astype(np.float64)


def _error(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(outputs - reference) / np.linalg.norm(reference))


def _centred_ranges(model: onnx.ModelProto, bias_correction: bool) -> tuple[Ranges, Ranges]:
    """The fc2 input's ranges smoothed and centred, and the same scales without the shift."""
    units = find_units(model)
    ranges = calibrate(model, units, _feeds(8, 0), CalibrationConfig(), progress=False)
    centred, report = plan_smoothing(model, units, ranges, SmoothSettings(alpha=0.5), True, centre=True)
    assert "gelu" in centred.shifts, report
    centred = replace(centred, bias_correction=bias_correction)
    return centred, replace(centred, shifts={})


def _without_activation_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every per-tensor (activation) Q→DQ pair removed: the readers take the float tensor."""
    scalar = {init.name for init in model.graph.initializer if not init.dims}
    pairs = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in scalar:
            pairs[node.output[0]] = node.input[0]
    bypass = {node.output[0]: pairs[node.input[0]] for node in model.graph.node
              if node.op_type == "DequantizeLinear" and node.input[0] in pairs}  # fmt: skip
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    kept = [node for node in stripped.graph.node if node.output[0] not in pairs and node.output[0] not in bypass]
    for node in kept:
        node.input[:] = [bypass.get(name, name) for name in node.input]
    del stripped.graph.node[:]
    stripped.graph.node.extend(kept)
    return stripped


@pytest.mark.parametrize("bias_correction", [False, True])
def test_centring_a_one_sided_input_does_not_raise_the_int8_unit_error(bias_correction: bool) -> None:
    model = _ffn()
    centred, plain = _centred_ranges(model, bias_correction)
    plan = PrecisionPlan.with_int8(["fc2/MatMul"])  # fc1 stays float: the error is fc2's alone, at its output
    test = _feeds(4, 11)
    reference = _outputs(model, test)
    with_shift = _error(_outputs(compile_plan(model, plan, centred, "tensorrt"), test), reference)
    without = _error(_outputs(compile_plan(model, plan, plain, "tensorrt"), test), reference)
    # one-sided: (X − z)/s spans half of X/s, so the activation's step halves; nothing else may grow
    assert with_shift <= without, f"centred {with_shift:.5f} vs not {without:.5f}"
    assert smoothed_range(centred, "gelu").amax < 0.6 * smoothed_range(plain, "gelu").amax


@pytest.mark.parametrize(("flavour", "tolerance"), [("tensorrt", 3e-3), ("ort-cpu", 1e-5)])
def test_the_shift_alone_is_exact_in_float_with_the_int8_weight(flavour: str, tolerance: float) -> None:
    """Activation Q/DQ removed: the centred and the uncentred graphs must compute the same function.

    The bias takes z times the weight as the unit holds it (int8, dequantized), so X'·Q(W·s) + z·Q(W·s)/s equals
    X·Q(W·s)/s; with the float weight's z·W (the bug) the two differed by z·ΔW (1.3e-2 here in the tensorrt
    flavour).  Float16 (tensorrt) rounds X − z and the larger bias, so its tolerance is float16's; float32 is exact.
    """
    model = _ffn()
    centred, plain = _centred_ranges(model, bias_correction=False)
    plan = PrecisionPlan.with_int8(["fc2/MatMul"])
    test = _feeds(4, 12)
    shifted = _outputs(_without_activation_qdq(compile_plan(model, plan, centred, flavour)), test)
    unshifted = _outputs(_without_activation_qdq(compile_plan(model, plan, plain, flavour)), test)
    gap = _error(shifted, unshifted)
    assert gap < tolerance, f"{flavour}: the shift changed the float function by {gap:.2e}"


def test_the_applied_shift_lies_on_the_activation_grid() -> None:
    """X = 0 (the bulk of a one-sided channel) must stay a level of the quantizer after the shift."""
    model = _ffn()
    centred, _ = _centred_ranges(model, bias_correction=False)
    unit = next(u for u in find_units(model) if u.name == "fc2/MatMul")
    z, s = unit_shift(unit, centred), unit_scales(unit, centred)
    step = smoothed_range(centred, "gelu").amax / 127
    levels = z / s / step
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-6)
    raw = np.asarray(centred.shifts["gelu"])
    assert np.abs(z - raw).max() <= (s * step).max() / 2 + 1e-12, "moved by at most half a step"
