"""One quantizer: the orderings' ΔW, the switched kl graph and ``compile`` see the same INT8 weights and biases.

Every check reads what ``compile`` actually wrote (its DequantizeLinear output, run by ONNX Runtime, and its bias
constants) under settings that are not the defaults: smoothed and centred inputs, mse weight ranges, bias
correction, and the ort-cpu flavour's 7-bit weights.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from trtmix.calibration.calibrate import CalibrationConfig, calibrate
from trtmix.calibration.ranges import Ranges
from trtmix.ir.graph import GraphIndex
from trtmix.ir.units import Unit, find_units
from trtmix.models import tiny
from trtmix.quant.compile import compile_plan
from trtmix.quant.flavours import get_flavour
from trtmix.quant.plan import PrecisionPlan
from trtmix.quant.qdq import fake_quantize_weight
from trtmix.quant.smooth import SmoothSettings, input_axis, plan_smoothing, unit_scales
from trtmix.quant.switched import compile_switched
from trtmix.quant.weights import WeightQuantizer
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner
from trtmix.search.orderings import order_units
from trtmix.sensitivity.mapping import map_units
from trtmix.sensitivity.run import weight_deltas

from .conftest import batches_for, layernorm_feeds, layernorm_model

FLAVOURS = {"tensorrt": get_flavour("tensorrt"), "ort-cpu-7bit": get_flavour("ort-cpu", weight_bits=7)}


def _prepared(model: onnx.ModelProto, units: list[Unit], feeds: list[dict[str, np.ndarray]], float16: bool) -> Ranges:
    """Calibrated with mse weight ranges, one tensor smoothed and centred (α 0.5), bias correction: nothing default.

    Smoothing is kept on the first tensor only, so that the units reading the others quantize with the mse ranges
    (a smoothed unit's weight takes its own max).
    """
    ranges = calibrate(model, units, feeds, CalibrationConfig(weights="mse"), progress=False)
    smoothed, _ = plan_smoothing(model, units, ranges, SmoothSettings(alpha=0.5), float16, centre=True)
    first = min(smoothed.smoothing)
    kept = replace(smoothed, smoothing={first: smoothed.smoothing[first]},
                   shifts={t: z for t, z in smoothed.shifts.items() if t == first}, bias_correction=True)  # fmt: skip
    assert kept.shifts and any(unit_scales(u, kept) is None and u.weight in kept.weights for u in units)
    return kept


def _compiled_weight(model: onnx.ModelProto, unit: Unit, ranges: Ranges, flavour, feed) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The dequantized weight of ``unit``'s single-unit graph, as ONNX Runtime computes it from what compile wrote."""
    compiled = compile_plan(model, PrecisionPlan.with_int8([unit.name]), ranges, flavour)
    scale = next(init for init in compiled.graph.initializer if init.name == f"{unit.name}/weight_scale")
    output = helper.make_tensor_value_info(f"{unit.name}/weight_dequantized", scale.data_type, None)
    compiled.graph.output.append(output)
    with OnnxRuntimeRunner(compiled, threads=1, optimize=False) as runner:
        outputs = runner.infer(feed)
    return np.asarray(outputs[-1], dtype=np.float64)


def _compiled_delta(model: onnx.ModelProto, unit: Unit, ranges: Ranges, flavour, feed) -> np.ndarray:  # type: ignore[no-untyped-def]
    """ΔW of compile's INT8 unit in the float weight's coordinates: DQ weight / s (where smoothed) − W."""
    dequantized = _compiled_weight(model, unit, ranges, flavour, feed)
    s = unit_scales(unit, ranges)
    if s is not None:
        shape = [1, 1]
        shape[input_axis(unit)] = -1
        dequantized = dequantized / s.reshape(shape)
    return dequantized - GraphIndex(model).constant_value(unit.weight).astype(np.float64)  # type: ignore[arg-type, union-attr]


@pytest.mark.parametrize("flavour_name", list(FLAVOURS))
def test_the_orderings_delta_w_is_compiles_weight_error(flavour_name: str) -> None:
    flavour = FLAVOURS[flavour_name]
    model = layernorm_model(off_centre=True, gemm_head=True)
    units = find_units(model)
    feeds = layernorm_feeds(4, 0)
    ranges = _prepared(model, units, feeds, flavour_name == "tensorrt")
    quantizer = WeightQuantizer(ranges, flavour)
    noise = order_units("noise", units, model, quantizer=quantizer)[1]
    index = GraphIndex(model)
    for unit in units:
        weight = index.constant_value(unit.weight)  # type: ignore[arg-type]
        expected = _compiled_delta(model, unit, ranges, flavour, feeds[0])
        delta = quantizer.quantize(unit, weight).effective_delta()  # type: ignore[arg-type]
        step = np.abs(expected).max()
        np.testing.assert_allclose(delta, expected, rtol=0, atol=1e-6 * step, err_msg=f"{flavour_name} {unit.name}")
        default = fake_quantize_weight(weight, unit.weight_axis) - weight  # type: ignore[arg-type, operator]
        assert not np.allclose(default, expected, rtol=0, atol=1e-3 * step), "the settings must change ΔW to bite"
        relative = float((expected**2).sum() / (weight.astype(np.float64) ** 2).sum())  # type: ignore[union-attr]
        assert noise[unit.name] == pytest.approx(relative, rel=1e-6)


@pytest.mark.parametrize("flavour_name", list(FLAVOURS))
def test_the_switched_graph_holds_compiles_weights_and_biases(flavour_name: str) -> None:
    flavour = FLAVOURS[flavour_name]
    model = layernorm_model(off_centre=True, gemm_head=True)
    units = find_units(model)
    feeds = layernorm_feeds(4, 0)
    ranges = _prepared(model, units, feeds, flavour_name == "tensorrt")
    switched, _ = compile_switched(model, units, ranges, flavour)
    constants = {init.name: numpy_helper.to_array(init) for init in switched.graph.initializer}
    biases_moved = 0
    for unit in units:
        expected = _compiled_weight(model, unit, ranges, flavour, feeds[0])
        fake = constants[f"{unit.name}/weight_fake_quantized"].astype(np.float64)
        np.testing.assert_allclose(fake, expected, rtol=0, atol=1e-6 * np.abs(expected).max(), err_msg=unit.name)
        compiled = compile_plan(model, PrecisionPlan.with_int8([unit.name]), ranges, flavour)
        written = {init.name: numpy_helper.to_array(init) for init in compiled.graph.initializer}
        if f"{unit.name}/bias_int32" in written:  # ort-cpu's Gemm: int32 bias × its scale
            bias = written[f"{unit.name}/bias_int32"] * written[f"{unit.name}/bias_scale"].astype(np.float64)
            np.testing.assert_array_equal(constants[f"{unit.name}/bias_fake_quantized"], bias.astype(np.float32))
            biases_moved += 1
            continue
        moved = [name for name in written if name.endswith("/bias_int8")]
        switched_bias = [name for name in constants if name.endswith(f"/s{unit.name}_bias")]
        assert len(moved) == len(switched_bias) == 1, f"{unit.name}: compile moved {moved}, switched {switched_bias}"
        np.testing.assert_array_equal(constants[switched_bias[0]], written[moved[0]])
        biases_moved += 1
    assert biases_moved == len(units)


def test_the_hessian_delta_w_is_compiles_weight_error(calibrated: dict) -> None:
    model, _ = calibrated["transformer"]
    units = find_units(model)
    feeds = batches_for("transformer", 4, seed=1)
    ranges = _prepared(model, units, feeds, float16=True)
    flavour = get_flavour("tensorrt")
    mapping = map_units(units, model, tiny.transformer()[0])
    deltas = weight_deltas(model, units, mapping, WeightQuantizer(ranges, flavour))
    assert len(deltas) >= 4
    by_name = {unit.name: unit for unit in units}
    for name, delta in deltas.items():
        expected = mapping.maps[name].to_torch(_compiled_delta(model, by_name[name], ranges, flavour, feeds[0]))
        np.testing.assert_allclose(delta, expected, rtol=0, atol=1e-6 * np.abs(expected).max(), err_msg=name)
