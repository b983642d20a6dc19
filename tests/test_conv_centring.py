"""Centring the one-sided (ReLU6) inputs of convolutions for symmetric int8 (issue 33, EfficientNet-Lite0).

A ReLU6 output spans [0, 6]; symmetric int8 spends half its levels below 0.  ``plan_conv_centring`` has the
convolutions read X − z (z the middle of the range, one for every channel) and moves z·W into their biases; a
convolution that pads gets an explicit Pad of −z (the shifted zero) in front.  The model: a stem conv + ReLU6, a
padded depthwise 3×3 conv + ReLU6 and a pointwise 1×1 conv, like the start of an MBConv block.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from trtmix.calibration.calibrate import CalibrationConfig, calibrate
from trtmix.ir.units import find_units
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import PrecisionPlan
from trtmix.quant.smooth import plan_conv_centring, smoothed_range
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

BATCH, CHANNELS, SIZE = 2, 8, 12


def _mbconv(seed: int = 0) -> onnx.ModelProto:
    """input → stem 3×3 conv → ReLU6 → depthwise 3×3 conv (pads 1) → ReLU6 → pointwise 1×1 conv → y."""
    rng = np.random.default_rng(seed)

    def weight(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    depthwise = rng.standard_normal((CHANNELS, 1, 3, 3)) * 0.6
    depthwise -= depthwise.mean(axis=(2, 3), keepdims=True)  # edge detectors: they amplify their input's rounding
    inits = [weight("w_stem", (CHANNELS, 3, 3, 3), 0.8), weight("b_stem", (CHANNELS,), 1.0),
             numpy_helper.from_array(depthwise.astype(np.float32), "w_dw"), weight("b_dw", (CHANNELS,), 1.0),
             weight("w_pw", (CHANNELS, CHANNELS, 1, 1), 0.4), weight("b_pw", (CHANNELS,), 0.1),
             numpy_helper.from_array(np.asarray(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.asarray(6.0, np.float32), "six")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["input", "w_stem", "b_stem"], ["stem"], name="stem/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["stem", "zero", "six"], ["relu6"], name="stem/Clip"),
             helper.make_node("Conv", ["relu6", "w_dw", "b_dw"], ["dw"], name="dw/Conv", pads=[1, 1, 1, 1],
                              group=CHANNELS),
             helper.make_node("Clip", ["dw", "zero", "six"], ["relu6_1"], name="dw/Clip"),
             helper.make_node("Conv", ["relu6_1", "w_pw", "b_pw"], ["y"], name="pw/Conv")]  # fmt: skip
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "mbconv", [value("input", onnx.TensorProto.FLOAT, [BATCH, 3, SIZE, SIZE])],
                              [value("y", onnx.TensorProto.FLOAT, [BATCH, CHANNELS, SIZE, SIZE])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32)} for _ in range(count)]


def _outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    with OnnxRuntimeRunner(model, threads=1, optimize=False) as runner:
        return np.concatenate([runner.infer(feed)[0] for feed in feeds]).astype(np.float64)


def _error(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(outputs - reference) / np.linalg.norm(reference))


def _without_activation_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its activation Q/DQ pairs bypassed: the float semantics of what the graph computes."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    constants = {init.name for init in model.graph.initializer}
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants]
    source = {q.output[0]: q.input[0] for q in quantizers}
    dequantizers = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in source]
    rewire = {dq.output[0]: source[dq.input[0]] for dq in dequantizers}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rewire.get(name, name)
    for node in [*quantizers, *dequantizers]:
        model.graph.node.remove(node)
    return model


def _setup(seed: int = 0) -> tuple[onnx.ModelProto, list, object, list, np.ndarray]:
    model = _mbconv(seed)
    units = find_units(model)
    ranges = calibrate(model, units, _feeds(4, 1), CalibrationConfig(batches=4), progress=False)
    feeds = _feeds(4, 2)
    with OnnxRuntimeRunner(model, threads=1) as runner:
        reference = np.concatenate([runner.infer(feed)[0] for feed in feeds]).astype(np.float64)
    return model, units, ranges, feeds, reference


def test_one_sided_conv_inputs_are_centred_and_padded_exactly() -> None:
    """Both ReLU6 outputs are centred (z = 3, range ±3), the padded depthwise conv through an explicit Pad of −z.

    Without the Pad (the Conv padding X − z with 0, i.e. X with z) the border pixels are off by z·ΣW of the taps that
    read padding; with it, the graph without its activation Q/DQ computes what the uncentred one does.
    """
    model, units, ranges, feeds, _ = _setup()
    centred, report = plan_conv_centring(model, units, ranges)
    assert report["centred"] == ["relu6", "relu6_1"]  # the stem's input is two-sided
    for tensor in report["centred"]:
        assert np.allclose(centred.shifts[tensor], 3.0) and smoothed_range(centred, tensor).amax <= 3.0 + 1e-6
    plan = PrecisionPlan.with_int8([unit.name for unit in units])
    plain = _outputs(_without_activation_qdq(compile_plan(model, plan, ranges, "tensorrt")), feeds)
    compiled = compile_plan(model, plan, centred, "tensorrt")
    pads = [n for n in compiled.graph.node if n.op_type == "Pad"]
    assert len(pads) == 1 and pads[0].input[0] == "relu6/centred"
    float_path = _outputs(_without_activation_qdq(compiled), feeds)
    assert _error(float_path, plain) < 2e-3  # float16 rounding of X − z and of the moved biases only


@pytest.mark.parametrize("seed", [0, 1])
def test_centring_lowers_the_error(seed: int) -> None:
    """All-INT8 error to FP32 falls with the ReLU6 inputs centred (one bit back on each; measured 0.90× and 0.93×).

    The rest of the error is the weights' rounding and float16, which centring does not touch.
    """
    model, units, ranges, feeds, reference = _setup(seed)
    plan = PrecisionPlan.with_int8([unit.name for unit in units])
    before = _error(_outputs(compile_plan(model, plan, ranges, "tensorrt"), feeds), reference)
    centred, _ = plan_conv_centring(model, units, ranges)
    after = _error(_outputs(compile_plan(model, plan, centred, "tensorrt"), feeds), reference)
    assert after < 0.95 * before, (before, after)
    corrected = replace(centred, bias_correction=True)  # bias correction composes with the shift
    assert _error(_outputs(compile_plan(model, plan, corrected, "tensorrt"), feeds), reference) < before


def test_unpadded_only_leaves_padded_readers_alone() -> None:
    """``padded=False`` centres only what a pointwise conv reads, and says why the depthwise input was refused."""
    model, units, ranges, _, _ = _setup()
    centred, report = plan_conv_centring(model, units, ranges, padded=False)
    assert report["centred"] == ["relu6_1"]
    assert "pads its input" in report["refused"]["relu6"]
    assert "relu6" not in centred.shifts


def test_switched_graph_refuses_a_padded_centred_conv() -> None:
    """The kl ordering's switched graph cannot flip the Pad of −z; it says so instead of mis-measuring the borders."""
    from trtmix.errors import CompileError
    from trtmix.quant.switched import compile_switched

    model, units, ranges, _, _ = _setup()
    with pytest.raises(CompileError, match="pads"):
        compile_switched(model, units, plan_conv_centring(model, units, ranges)[0], "tensorrt")
    compile_switched(model, units, plan_conv_centring(model, units, ranges, padded=False)[0], "tensorrt")
