"""Outlier-aware scaling (SmoothQuant) and bias correction: what they write, that they keep the float semantics, and
that they reduce the int8 error where they should."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from trtmix.calibration.calibrate import CalibrationConfig, calibrate
from trtmix.cli import main
from trtmix.errors import TrtmixError
from trtmix.ir.units import find_units
from trtmix.quant.bias import shift_product
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import PrecisionPlan
from trtmix.quant.smooth import SmoothSettings, plan_smoothing, scaled_weight, unit_scales, unit_shift
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

from .conftest import layernorm_feeds, layernorm_model

OUTLIER_RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(4):
        x = rng.standard_normal((2, 8, 16)).astype(np.float32)
        x[..., 3] *= 40.0
        x[..., 11] *= 20.0
        yield {"input": x}
"""


def _outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    with OnnxRuntimeRunner(model, threads=1, optimize=False) as runner:
        return np.concatenate([runner.infer(feed)[0] for feed in feeds])


def _relative_error(model: onnx.ModelProto, reference: np.ndarray, feeds: list[dict[str, np.ndarray]]) -> float:
    return float(np.linalg.norm(_outputs(model, feeds) - reference) / np.linalg.norm(reference))


@pytest.mark.parametrize("flavour", ["tensorrt", "ort-cpu"])
def test_smoothing_lowers_the_int8_error_of_outlier_channels(flavour: str) -> None:
    model = layernorm_model(residual=True)
    units = find_units(model)
    ranges = calibrate(model, units, layernorm_feeds(4, 0), CalibrationConfig(), progress=False)
    smoothed, report = plan_smoothing(model, units, ranges, SmoothSettings(), flavour == "tensorrt")
    assert report["tensors"] == 1 and report["kept_units"] == ["k/MatMul", "q/MatMul"] and report["noise_ratio"] < 1
    test = layernorm_feeds(2, 7)
    reference = _outputs(model, test)
    plan = PrecisionPlan.with_int8([u.name for u in units])
    plain = _relative_error(compile_plan(model, plan, replace(ranges, smoothing={}), flavour), reference, test)
    scaled = _relative_error(compile_plan(model, plan, smoothed, flavour), reference, test)
    # ort-cpu also quantizes the units' outputs and the Adds (QLinearAdd), whose error smoothing cannot touch
    bound = 0.7 if flavour == "tensorrt" else 0.98
    assert scaled < bound * plain, f"{flavour}: smoothing {scaled:.4f} vs plain {plain:.4f}"


def test_a_layernorm_read_only_by_int8_units_is_folded_else_an_explicit_mul() -> None:
    for residual, expect_mul in ((True, True), (False, False)):
        model = layernorm_model(residual)
        units = find_units(model)
        ranges = calibrate(model, units, layernorm_feeds(4, 0), CalibrationConfig(), progress=False)
        smoothed, _ = plan_smoothing(model, units, ranges, SmoothSettings(alpha=0.5), False)
        compiled = compile_plan(model, PrecisionPlan.with_int8([u.name for u in units]), smoothed, "ort-cpu")
        muls = [n for n in compiled.graph.node if n.op_type == "Mul" and "smooth" in n.name]
        assert bool(muls) == expect_mul
        gamma = {i.name: numpy_helper.to_array(i) for i in compiled.graph.initializer}
        folded = [name for name in gamma if name.endswith("/gamma_smoothed")]
        assert bool(folded) != expect_mul, "γ is divided by s exactly when there is no Mul"
        only_q = compile_plan(model, PrecisionPlan.with_int8(["q/MatMul"]), smoothed, "ort-cpu")
        assert any(n.op_type == "Mul" and "smooth" in n.name for n in only_q.graph.node), "K reads X as exported"


def test_scaled_weights_and_divided_inputs_compute_the_float_product() -> None:
    model = layernorm_model(residual=True)
    units = find_units(model)
    ranges = calibrate(model, units, layernorm_feeds(4, 0), CalibrationConfig(), progress=False)
    smoothed, _ = plan_smoothing(model, units, ranges, SmoothSettings(alpha=0.5), False)
    x = np.random.default_rng(3).standard_normal((5, 16))
    for unit in units:
        s = unit_scales(unit, smoothed)
        weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == unit.weight))
        np.testing.assert_allclose((x / s) @ scaled_weight(unit, weight, s), x @ weight, rtol=1e-5, atol=1e-5)


def test_a_shifted_input_keeps_the_float_product_through_the_bias() -> None:
    model = layernorm_model(residual=True)
    units = find_units(model)
    ranges = calibrate(model, units, layernorm_feeds(4, 0), CalibrationConfig(), progress=False)
    shifted, report = plan_smoothing(model, units, ranges, SmoothSettings(alpha=0.5), True, centre=True)
    assert report["shifted"] == 1
    x = np.random.default_rng(4).standard_normal((5, 16))
    for unit in units:
        s, z = unit_scales(unit, shifted), unit_shift(unit, shifted)
        weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == unit.weight))
        moved = ((x - z) / s) @ scaled_weight(unit, weight, s) + shift_product(unit, weight, z)
        np.testing.assert_allclose(moved, x @ weight, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flavour", ["tensorrt", "ort-cpu"])
def test_the_switched_kl_graph_applies_every_quantizer_as_compile_does(flavour: str) -> None:
    from trtmix.quant.switched import compile_switched, switch_feeds

    model = layernorm_model(residual=True)
    units = find_units(model)
    ranges = calibrate(model, units, layernorm_feeds(4, 0), CalibrationConfig(), progress=False)
    prepared, _ = plan_smoothing(model, units, ranges, SmoothSettings(alpha=0.5), flavour == "tensorrt",
                                 centre=flavour == "tensorrt")  # fmt: skip
    prepared = replace(prepared, bias_correction=True)
    graph, switches = compile_switched(model, units, prepared, flavour)
    feed = layernorm_feeds(1, 9)[0]
    with OnnxRuntimeRunner(graph, threads=1, optimize=True) as runner:
        switched = {u.name: runner.infer({**feed, **switch_feeds(switches, u.name)})[0] for u in units}
    for unit in units:
        expected = _outputs(compile_plan(model, PrecisionPlan.with_int8([unit.name]), prepared, flavour), [feed])
        error = np.abs(switched[unit.name] - expected).max() / np.abs(expected).max()
        assert error < 2e-3, f"{flavour} {unit.name}: switched differs from its single-unit graph by {error:.2e}"


def test_alpha_outside_the_open_interval_is_refused() -> None:
    for alpha in (0.0, 1.0, -0.5, 2.0):
        with pytest.raises(TrtmixError, match=r"outside \(0, 1\)"):
            SmoothSettings(alpha=alpha).validate()


def test_a_scale_that_would_overflow_float16_is_clamped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = layernorm_model(residual=True)
    units = find_units(model)
    feeds = layernorm_feeds(4, 0)
    for feed in feeds:
        feed["input"][:, 5] *= 1e4  # with γ = 30 on channel 2 and this, s leaves float16 unless clamped
    ranges = calibrate(model, units, feeds, CalibrationConfig(), progress=False)
    huge = replace(ranges, channels={t: replace(c, maximum=tuple(v * 1e9 for v in c.maximum))
                                     for t, c in ranges.channels.items()})  # fmt: skip
    with caplog.at_level(logging.WARNING):
        smoothed, report = plan_smoothing(model, units, huge, SmoothSettings(alpha=0.8), True)
    assert report["clamped"] and "q/MatMul" in caplog.text
    for unit in units:
        s = unit_scales(unit, smoothed)
        weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == unit.weight))
        assert np.isfinite(scaled_weight(unit, weight, s).astype(np.float16)).all() and (1 / s >= 6e-5).all()


def _depthwise_model(channels: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A depthwise 3×3 conv with a bias: 9 weights per channel, where rounding shifts the mean."""
    rng = np.random.default_rng(seed)
    weight = rng.uniform(-1, 1, (channels, 1, 3, 3)).astype(np.float32)
    weight[:, 0, 0, 0] = 1.0  # the channel max: every other weight rounds on a coarse grid
    bias = rng.standard_normal(channels).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["y"], name="dw", group=channels, pads=[1, 1, 1, 1])],
        "dw", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [2, channels, 12, 12])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, channels, 12, 12])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_bias_correction_removes_the_mean_shift_of_int8_weights() -> None:
    model = _depthwise_model()
    units = find_units(model)
    rng = np.random.default_rng(0)
    feeds = [{"input": (rng.standard_normal((2, 8, 12, 12)) + 4.0).astype(np.float32)} for _ in range(4)]
    ranges = calibrate(model, units, feeds, CalibrationConfig(), progress=False)
    reference = _outputs(model, feeds)
    plan = PrecisionPlan.with_int8(["dw"])
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # away from the zero padding

    def channel_shift(corrected: bool) -> np.ndarray:
        compiled = compile_plan(model, plan, replace(ranges, bias_correction=corrected), "ort-cpu")
        return np.abs((_outputs(compiled, feeds) - reference)[inner].mean(axis=(0, 2, 3)))

    before, after = channel_shift(False), channel_shift(True)
    assert after.mean() < 0.5 * before.mean(), f"mean |shift| {after.mean():.4f} vs {before.mean():.4f}"


def test_compile_and_build_record_the_quantizer_settings(tmp_path: Path) -> None:
    (tmp_path / "recipe.py").write_text(OUTLIER_RECIPE)
    out = tmp_path / "job"
    args = ["-q", "compile", "trtmix.models.tiny:transformer", "--data", str(tmp_path / "recipe.py"), "--metric",
            "cosine", "--max-drop", "1%", "--runs", "3", "--final-rounds", "0",
            "--backend", "onnxruntime", "--flavour", "ort-cpu", "--smooth-alpha", "0.5", "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    smoothing = report["quantizers"]["smoothing"]
    chosen = smoothing["option"].removesuffix(", no bias correction")  # bias correction is measured last
    rounding = report["quantizers"]["weight_rounding"]["label"]  # measured last, on what was chosen before it
    assert set(smoothing["measured"]) - {rounding} == {"off", "α=0.5", "α=0.5, per-tensor ranges",
                                                      f"{chosen}, no bias correction"}  # fmt: skip
    assert smoothing["measured"]["α=0.5"] > smoothing["measured"]["off"], "the planted outliers make smoothing pay"
    assert smoothing["option"].startswith("α=0.5") and not smoothing["searched"] and smoothing["tensors"] > 0
    correction = report["quantizers"]["bias_correction"]
    assert correction["requested"], "on by default, and then measured against the chosen option without it"
    assert correction["enabled"] == (not smoothing["option"].endswith("no bias correction"))
    saved = json.loads((out / "ranges.json").read_text())
    assert saved["bias_correction"] == correction["enabled"] and len(saved["smoothing"]) == smoothing["tensors"]
    centred = tmp_path / "centred"
    assert main([*args[:-8], "-o", str(centred)]) == 0  # the defaults: tensorrt flavour on OpenVINO
    measured = json.loads((centred / "report.json").read_text())["quantizers"]["smoothing"]["measured"]
    assert {"off", "α=0.5", "α=0.8", "α=0.8, centred"} < set(measured), "ort-cpu has no centring; tensorrt has"
    builds = ((["--smooth-alpha", "0.5"], True), ([], False), (["--no-smooth", "--no-bias-correction"], False))
    for flag, expect in builds:
        target = tmp_path / f"built{'-'.join(flag)}.onnx"  # build measures nothing: it smooths only when asked
        assert main(["-q", "build", str(out / "model.onnx"), "--plan", "int8", "--data", str(tmp_path / "recipe.py"),
                     "--flavour", "ort-cpu", *flag, "-o", str(target)]) == 0  # fmt: skip
        names = [n.name for n in onnx.load(str(target)).graph.node]
        assert any("smooth" in name for name in names) == expect


def _shared_parameters_model(shared: bool) -> onnx.ModelProto:
    """Two LayerNorm → MatMul + bias blocks whose γ, β and bias are equal; ``shared`` makes them one initializer each,
    as exporters do for equal values (every zero bias and unit γ of a model at init)."""
    rng = np.random.default_rng(5)
    gamma, beta, bias = np.ones(16, np.float32), np.zeros(16, np.float32), np.zeros(16, np.float32)
    inits, nodes, current = [], [], "input"
    names = {"gamma": "gamma", "beta": "beta", "bias": "bias"}
    for block in range(2):
        if not shared or block == 0:
            names = {key: f"{key}{block}" for key in names}
            inits += [numpy_helper.from_array(value, names[key])
                      for key, value in (("gamma", gamma), ("beta", beta), ("bias", bias))]  # fmt: skip
        inits.append(numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32) * 0.3, f"w{block}"))
        nodes += [helper.make_node("LayerNormalization", [current, names["gamma"], names["beta"]], [f"ln{block}"],
                                   name=f"ln{block}", axis=-1),
                  helper.make_node("MatMul", [f"ln{block}", f"w{block}"], [f"mm{block}"], name=f"mm{block}"),
                  helper.make_node("Add", [f"mm{block}", names["bias"]], [f"out{block}"],
                                   name=f"add{block}")]  # fmt: skip
        current = f"out{block}"
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "shared", [value("input", onnx.TensorProto.FLOAT, [4, 16])],
                              [value(current, onnx.TensorProto.FLOAT, [4, 16])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("flavour", ["tensorrt", "ort-cpu"])
def test_initializers_shared_between_units_are_moved_for_each_unit_alone(flavour: str) -> None:
    feeds = layernorm_feeds(4, 0)
    for feed in feeds:
        feed["input"][:, 3] *= 25  # an outlier channel, so both LayerNorms' outputs are smoothed
    compiled = {}
    for shared in (True, False):
        model = _shared_parameters_model(shared)
        units = find_units(model)
        ranges = calibrate(model, units, feeds, CalibrationConfig(), progress=False)
        prepared, report = plan_smoothing(model, units, ranges, SmoothSettings(alpha=0.5), flavour == "tensorrt")
        assert report["tensors"] == 2
        compiled[shared] = compile_plan(model, PrecisionPlan.with_int8([u.name for u in units]),
                                        replace(prepared, bias_correction=True), flavour)  # fmt: skip
        names = [init.name for init in compiled[shared].graph.initializer]
        assert len(names) == len(set(names))
    test = layernorm_feeds(2, 3)
    np.testing.assert_allclose(_outputs(compiled[True], test), _outputs(compiled[False], test), rtol=0, atol=1e-6)
