"""Centring the one-sided (ReLU6) inputs of convolutions for symmetric int8 (issue 33, EfficientNet-Lite0).

A ReLU6 output spans [0, 6]; symmetric int8 spends half its levels below 0.  ``plan_conv_centring`` has the
convolutions read X − z (z the middle of the range, one for every channel) and moves z·W into their biases; a
convolution that pads keeps its zero padding of X − z and gets a constant border map added after it where its input's
spatial sizes are static, an explicit Pad of −z (the shifted zero) in front where they are dynamic.  The model: a
stem conv + ReLU6, a padded 3×3 conv (depthwise by default; grouped, ordinary or strided too) + ReLU6 and a
pointwise 1×1 conv, like the start of an MBConv block.
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


def _mbconv(seed: int = 0, group: int = CHANNELS, stride: int = 1, dynamic: bool = False) -> onnx.ModelProto:
    """input → stem 3×3 conv → ReLU6 → 3×3 conv (pads 1, ``group``, ``stride``) → ReLU6 → pointwise 1×1 conv → y.

    ``dynamic``: the input's height and width are symbolic, so shape inference leaves the spatial sizes open.
    """
    rng = np.random.default_rng(seed)

    def weight(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    depthwise = rng.standard_normal((CHANNELS, CHANNELS // group, 3, 3)) * 0.6 / np.sqrt(CHANNELS // group)
    depthwise -= depthwise.mean(axis=(2, 3), keepdims=True)  # edge detectors: they amplify their input's rounding
    inits = [weight("w_stem", (CHANNELS, 3, 3, 3), 0.8), weight("b_stem", (CHANNELS,), 1.0),
             numpy_helper.from_array(depthwise.astype(np.float32), "w_dw"), weight("b_dw", (CHANNELS,), 1.0),
             weight("w_pw", (CHANNELS, CHANNELS, 1, 1), 0.4), weight("b_pw", (CHANNELS,), 0.1),
             numpy_helper.from_array(np.asarray(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.asarray(6.0, np.float32), "six")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["input", "w_stem", "b_stem"], ["stem"], name="stem/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["stem", "zero", "six"], ["relu6"], name="stem/Clip"),
             helper.make_node("Conv", ["relu6", "w_dw", "b_dw"], ["dw"], name="dw/Conv", pads=[1, 1, 1, 1],
                              group=group, strides=[stride, stride]),
             helper.make_node("Clip", ["dw", "zero", "six"], ["relu6_1"], name="dw/Clip"),
             helper.make_node("Conv", ["relu6_1", "w_pw", "b_pw"], ["y"], name="pw/Conv")]  # fmt: skip
    value = helper.make_tensor_value_info
    size, out = ("height", "width"), (None, None)
    if not dynamic:
        size, out = (SIZE, SIZE), ((SIZE - 1) // stride + 1,) * 2
    graph = helper.make_graph(nodes, "mbconv", [value("input", onnx.TensorProto.FLOAT, [BATCH, 3, *size])],
                              [value("y", onnx.TensorProto.FLOAT, [BATCH, CHANNELS, *out])], inits)  # fmt: skip
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


def _setup(seed: int = 0, **shape: int | bool) -> tuple[onnx.ModelProto, list, object, list, np.ndarray]:
    model = _mbconv(seed, **shape)  # type: ignore[arg-type]
    units = find_units(model)
    ranges = calibrate(model, units, _feeds(4, 1), CalibrationConfig(batches=4), progress=False)
    feeds = _feeds(4, 2)
    with OnnxRuntimeRunner(model, threads=1) as runner:
        reference = np.concatenate([runner.infer(feed)[0] for feed in feeds]).astype(np.float64)
    return model, units, ranges, feeds, reference


def _border(outputs: np.ndarray) -> np.ndarray:
    """The outer ring of pixels of an NCHW batch: where a 3×3 conv padding 1 reads padding."""
    ring = np.ones(outputs.shape[2:], dtype=bool)
    ring[1:-1, 1:-1] = False
    return outputs[:, :, ring]


def test_one_sided_conv_inputs_are_centred_and_padded_exactly() -> None:
    """Both ReLU6 outputs are centred (z = 3, range ±3); the padded depthwise conv keeps its padding plus a border map.

    Without the map (the Conv padding X − z with 0, i.e. X with z) the border pixels are off by z·ΣW of the taps that
    read padding; with it, the graph without its activation Q/DQ computes what the uncentred one does, and no Pad
    is written: the input's sizes are static.
    """
    model, units, ranges, feeds, _ = _setup()
    centred, report = plan_conv_centring(model, units, ranges)
    assert report["centred"] == ["relu6", "relu6_1"]  # the stem's input is two-sided
    for tensor in report["centred"]:
        assert np.allclose(centred.shifts[tensor], 3.0) and smoothed_range(centred, tensor).amax <= 3.0 + 1e-6
    plan = PrecisionPlan.with_int8([unit.name for unit in units])
    plain = _outputs(_without_activation_qdq(compile_plan(model, plan, ranges, "tensorrt")), feeds)
    compiled = compile_plan(model, plan, centred, "tensorrt")
    assert not [n for n in compiled.graph.node if n.op_type == "Pad"]
    adds = [n for n in compiled.graph.node if n.op_type == "Add"]
    assert [n.name for n in adds] == ["dw/border/Add"] and adds[0].output[0] == "dw"
    conv = next(n for n in compiled.graph.node if n.name == "dw/Conv")
    assert next(list(a.ints) for a in conv.attribute if a.name == "pads") == [1, 1, 1, 1]
    float_path = _outputs(_without_activation_qdq(compiled), feeds)
    assert _error(float_path, plain) < 2e-3  # float16 rounding of X − z and of the moved biases only
    assert _error(_border(float_path), _border(plain)) < 2e-3


@pytest.mark.parametrize(("group", "stride"), [(CHANNELS, 2), (2, 1), (1, 2)])
def test_border_map_of_grouped_and_strided_convs(group: int, stride: int) -> None:
    """Grouped (2 groups), ordinary and strided padded convs: the map makes the centred graph the uncentred one.

    Measured through the graph without activation Q/DQ, border ring too; no Pad where the sizes are static.
    """
    model, units, ranges, feeds, _ = _setup(group=group, stride=stride)
    centred, report = plan_conv_centring(model, units, ranges)
    assert "relu6" in report["centred"]
    plan = PrecisionPlan.with_int8([unit.name for unit in units])
    plain = _outputs(_without_activation_qdq(compile_plan(model, plan, ranges, "tensorrt")), feeds)
    compiled = compile_plan(model, plan, centred, "tensorrt")
    assert not [n for n in compiled.graph.node if n.op_type == "Pad"]
    float_path = _outputs(_without_activation_qdq(compiled), feeds)
    assert float_path.shape[2:] == ((SIZE - 1) // stride + 1,) * 2
    assert _error(float_path, plain) < 2e-3
    assert _error(_border(float_path), _border(plain)) < 2e-3


def _conv_model(weight: np.ndarray, bias: np.ndarray, attrs: dict, shape: tuple[int, ...]) -> onnx.ModelProto:
    """One float32 Conv x → y with ``weight``, ``bias`` and ``attrs``, for the map's arithmetic alone."""
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w"), numpy_helper.from_array(bias, "b")]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    value = helper.make_tensor_value_info
    graph = helper.make_graph([node], "conv", [value("x", onnx.TensorProto.FLOAT, list(shape))],
                              [value("y", onnx.TensorProto.FLOAT, None)], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("attrs", [
    {"group": 6, "pads": [1, 1, 1, 1]},  # depthwise
    {"group": 2, "pads": [1, 2, 0, 1], "strides": [2, 1]},  # grouped, uneven pads, strided
    {"group": 1, "pads": [2, 2, 2, 2], "dilations": [2, 2]},  # ordinary, dilated
    {"group": 3, "pads": [1, 1, 1, 1], "strides": [2, 2], "dilations": [1, 2]},
])  # fmt: skip
def test_border_map_is_exact_on_the_conv_alone(attrs: dict) -> None:
    """Conv(X − z, W, b + z·ΣW) + map = Conv(X, W, b) in float32, per-channel z, for an exact-weight conv.

    ``border_map`` counts a tap as reading padding from the Conv's own pads, strides, dilations and groups.
    """
    import onnx_graphsurgeon as gs

    from trtmix.quant.smooth import border_map

    rng = np.random.default_rng(3)
    channels, outputs, groups = 6, 6, attrs["group"]
    weight = rng.integers(-127, 128, (outputs, channels // groups, 3, 3)).astype(np.float64) / 64  # on a 2⁻⁶ grid
    bias = rng.standard_normal(outputs).astype(np.float32)
    z = np.linspace(0.5, 3.0, channels)
    x = rng.uniform(0, 6, (2, channels, 9, 10)).astype(np.float32)
    per_channel = z.reshape(groups, -1)[np.arange(outputs) // (outputs // groups)]
    moved = (bias + (weight.sum(axis=(2, 3)) * per_channel).sum(axis=1)).astype(np.float32)
    with OnnxRuntimeRunner(_conv_model(weight, bias, attrs, x.shape), threads=1, optimize=False) as runner:
        expected = runner.infer({"x": x})[0]
    with OnnxRuntimeRunner(_conv_model(weight, moved, attrs, x.shape), threads=1, optimize=False) as runner:
        centred = runner.infer({"x": (x - z.reshape(1, -1, 1, 1)).astype(np.float32)})[0]
    node = gs.Node("Conv", "conv", attrs)
    corrected = centred + border_map(node, weight, z, x.shape[2:])
    assert corrected.shape == expected.shape
    scale = np.abs(expected).max()
    assert np.abs(centred - expected).max() > 0.05 * scale  # the borders are off without the map
    np.testing.assert_allclose(corrected, expected, rtol=0, atol=1e-5 * scale)


def test_dynamic_spatial_sizes_fall_back_to_a_pad() -> None:
    """With symbolic height and width the map has no shape: X − z is padded with −z in a Pad, still exact."""
    model, units, ranges, _, _ = _setup(dynamic=True)
    feeds = _feeds(2, 2)
    centred, report = plan_conv_centring(model, units, ranges)
    assert report["centred"] == ["relu6", "relu6_1"]
    plan = PrecisionPlan.with_int8([unit.name for unit in units])
    plain = _outputs(_without_activation_qdq(compile_plan(model, plan, ranges, "tensorrt")), feeds)
    compiled = compile_plan(model, plan, centred, "tensorrt")
    pads = [n for n in compiled.graph.node if n.op_type == "Pad"]
    assert len(pads) == 1 and pads[0].input[0] == "relu6/centred"
    assert not [n for n in compiled.graph.node if n.op_type == "Add"]
    float_path = _outputs(_without_activation_qdq(compiled), feeds)
    assert _error(float_path, plain) < 2e-3
    assert _error(_border(float_path), _border(plain)) < 2e-3


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


def test_switched_graph_adds_the_border_map_behind_the_switch() -> None:
    """The kl ordering's switched graph: the padded centred conv's switch gives its single-unit graph, map included.

    With every switch off it is the float graph (the map is added only while the conv's switch is on).
    """
    from trtmix.quant.switched import compile_switched, switch_feeds

    model, units, ranges, feeds, _ = _setup()
    centred = plan_conv_centring(model, units, ranges)[0]
    graph, switches = compile_switched(model, units, centred, "tensorrt")
    feed = feeds[0]
    with OnnxRuntimeRunner(graph, threads=1, optimize=False) as runner:
        on = runner.infer({**feed, **switch_feeds(switches, "dw/Conv")})[0].astype(np.float64)
        off = runner.infer({**feed, **switch_feeds(switches, None)})[0].astype(np.float64)
    single = _outputs(compile_plan(model, PrecisionPlan.with_int8(["dw/Conv"]), centred, "tensorrt"), [feed])
    high = _outputs(compile_plan(model, PrecisionPlan(), centred, "tensorrt"), [feed])
    assert _error(on, single) < 2e-3 and _error(_border(on), _border(single)) < 2e-3
    assert _error(off, high) < 1e-3


def test_switched_graph_refuses_a_padded_centred_conv_of_dynamic_size() -> None:
    """With dynamic sizes ``compile`` writes a Pad of −z, which a switch cannot flip: the switched graph says so."""
    from trtmix.errors import CompileError
    from trtmix.quant.switched import compile_switched

    model, units, ranges, _, _ = _setup(dynamic=True)
    with pytest.raises(CompileError, match="dynamic spatial size"):
        compile_switched(model, units, plan_conv_centring(model, units, ranges)[0], "tensorrt")
    compile_switched(model, units, plan_conv_centring(model, units, ranges, padded=False)[0], "tensorrt")


def test_border_map_of_a_conv_writing_a_graph_output() -> None:
    """The Add takes the conv output's name, so a graph output written by a centred padded conv keeps its name."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.standard_normal((CHANNELS, 3, 3, 3)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(CHANNELS).astype(np.float32), "b"),
             numpy_helper.from_array(np.asarray(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.asarray(6.0, np.float32), "six")]  # fmt: skip
    clip = helper.make_node("Clip", ["input", "zero", "six"], ["relu6"], name="Clip")
    nodes = [clip, helper.make_node("Conv", ["relu6", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2])]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "one", [value("input", onnx.TensorProto.FLOAT, [BATCH, 3, SIZE, SIZE])],
                              [value("y", onnx.TensorProto.FLOAT, None)], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    units = find_units(model)
    feeds = [{"input": np.abs(feed["input"]) * 2} for feed in _feeds(4, 1)]
    ranges = calibrate(model, units, feeds, CalibrationConfig(batches=4), progress=False)
    centred, report = plan_conv_centring(model, units, ranges)
    assert report["centred"] == ["relu6"]
    plan = PrecisionPlan.with_int8([unit.name for unit in units])
    compiled = compile_plan(model, plan, centred, "tensorrt")
    assert [output.name for output in compiled.graph.output] == ["y"]
    assert not [n for n in compiled.graph.node if n.op_type == "Pad"]
    plain = _outputs(_without_activation_qdq(compile_plan(model, plan, ranges, "tensorrt")), feeds)
    float_path = _outputs(_without_activation_qdq(compiled), feeds)
    assert _error(float_path, plain) < 2e-3 and _error(_border(float_path), _border(plain)) < 2e-3


def test_pads_and_spatial_sizes_read_alike_from_the_onnx_proto_and_graphsurgeon() -> None:
    """One reader of plain values serves both: compile (graphsurgeon) and the measured orderings (the proto)."""
    import onnx_graphsurgeon as gs

    from trtmix.quant.smooth import conv_pads, explicit_pads, spatial_sizes, static_spatial

    padded = helper.make_node("Conv", ["x", "w"], ["y"], name="padded", pads=[1, 1, 1, 1])
    unpadded = helper.make_node("Conv", ["x", "w"], ["y"], name="unpadded", pads=[0, 0, 0, 0])
    bare = helper.make_node("Conv", ["x", "w"], ["y"], name="bare")
    for node, expected in ((padded, (1, 1, 1, 1)), (unpadded, ()), (bare, ())):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert conv_pads(node) == conv_pads(gs.Node("Conv", node.name, attrs)) == explicit_pads(attrs) == expected
    assert spatial_sizes((1, 8, 5, 6), 2) == (5, 6) and spatial_sizes(("N", 8, 5, 6), 2) == (5, 6)
    assert spatial_sizes((1, 8, "H", 6), 2) is None and spatial_sizes((1, 8, 0, 6), 2) is None  # 0: proto's unset
    assert spatial_sizes((1, 8, 5), 2) is None and spatial_sizes(None, 2) is None
    assert static_spatial(gs.Variable("x", np.float32, (1, 8, 5, 6)), 2) == (5, 6)
