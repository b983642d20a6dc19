"""Learned weight rounding (issue 33, part 3): it lowers held-out error, travels in Ranges, and compile writes it.

The models are ONNX-only graphs built here with ``onnx.helper`` (no torch model exists for them): an MLP whose
input channels are correlated (MatMul with the weight as [in, out], Gemm with transB), and a 2-D Conv followed by
a strided depthwise Conv whose input is spatially smooth (im2col, groups).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtmix.calibration.calibrate import CalibrationConfig, calibrate
from trtmix.calibration.ranges import Ranges, rounding_path
from trtmix.errors import CalibrationError
from trtmix.ir.units import Unit, find_units
from trtmix.job.weight_rounding import measured_rounding, rounding_learner
from trtmix.quant.compile import compile_plan
from trtmix.quant.flavours import get_flavour
from trtmix.quant.plan import PrecisionPlan
from trtmix.quant.range_choice import _float_session, _float_tensors
from trtmix.quant.rounding import MIN_BATCHES, learn_rounding
from trtmix.quant.smooth import SmoothSettings, plan_smoothing
from trtmix.quant.weights import WeightQuantizer
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

TENSORRT = get_flavour("tensorrt")


def _model(nodes: list, inputs: list, initializers: dict[str, np.ndarray], shape: list) -> onnx.ModelProto:
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)
    arrays = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in initializers.items()]
    graph = helper.make_graph(nodes, "built", inputs, [output], arrays)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mlp_model(seed: int = 0, width: int = 48, hidden: int = 32, out: int = 16, shared: bool = False) -> onnx.ModelProto:
    """input → MatMul + bias → Relu → Gemm (transB) → output; ``shared``: a second MatMul reads fc1's weight too."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.standard_normal((width, hidden)) / np.sqrt(width), "b1": rng.standard_normal(hidden) * 0.1,
               "w2": rng.standard_normal((out, hidden)) / np.sqrt(hidden),
               "b2": rng.standard_normal(out) * 0.1}  # fmt: skip
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["g"], name="fc2", transB=1)]  # fmt: skip
    if shared:  # the same [width, hidden] weight read again, on the input scaled by two
        weights["two"] = np.array(2.0)
        nodes += [helper.make_node("Mul", ["input", "two"], ["doubled"], name="double"),
                  helper.make_node("MatMul", ["doubled", "w1"], ["second"], name="fc1_again")]  # fmt: skip
    nodes.append(helper.make_node("Identity", ["g"], ["output"], name="out"))
    source = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", width])
    model = _model(nodes, [source], weights, ["N", out])
    if shared:  # the second reader's output is a graph output too
        model.graph.output.append(helper.make_tensor_value_info("second", TensorProto.FLOAT, ["N", hidden]))
    return model


def mlp_feeds(count: int, seed: int, width: int = 48, rows: int = 32) -> list[dict[str, np.ndarray]]:
    """Inputs whose channels are correlated (a rank-8 mix plus noise): the same mix in every split."""
    rng, mix = np.random.default_rng(seed), np.random.default_rng(99).standard_normal((8, width))
    return [{"input": (rng.standard_normal((rows, 8)) @ mix + 0.3 * rng.standard_normal((rows, width))
                       ).astype(np.float32)} for _ in range(count)]  # fmt: skip


def conv_model(seed: int = 0) -> onnx.ModelProto:
    """input [N, 4, 8, 8] → Conv 3×3 (pads 1) → Relu → depthwise Conv 3×3 (group 8, stride 2) → output."""
    rng = np.random.default_rng(seed)
    weights = {"cw": rng.standard_normal((8, 4, 3, 3)) / 6, "cb": rng.standard_normal(8) * 0.1,
               "dw": rng.standard_normal((8, 1, 3, 3)) / 3, "db": rng.standard_normal(8) * 0.1}  # fmt: skip
    nodes = [helper.make_node("Conv", ["input", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "dw", "db"], ["output"], name="depthwise", pads=[1, 1, 1, 1], group=8,
                              strides=[2, 2])]  # fmt: skip
    source = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 8, 8])
    return _model(nodes, [source], weights, ["N", 8, 4, 4])


def conv_feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Spatially smooth inputs (noise at 4×4, repeated to 8×8, plus a little noise): neighbouring pixels correlate."""
    rng = np.random.default_rng(seed)
    coarse = [rng.standard_normal((4, 4, 4, 4)).repeat(2, axis=2).repeat(2, axis=3) for _ in range(count)]
    return [{"input": (c + 0.2 * rng.standard_normal(c.shape)).astype(np.float32)} for c in coarse]


MODELS = {"mlp": (mlp_model, mlp_feeds), "conv": (conv_model, conv_feeds)}


def _calibrated(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], bias: bool = True) -> Ranges:
    ranges = calibrate(model, find_units(model), feeds, CalibrationConfig(), progress=False)
    return replace(ranges, bias_correction=bias)


def _unit_output_error(model: onnx.ModelProto, unit: Unit, ranges: Ranges, feeds: list) -> float:
    """Σ ‖X·DQ(W) − X·W‖² of ``unit`` alone on ``feeds`` (its float input), the weight as the job quantizes it."""
    quantized = WeightQuantizer(ranges, TENSORRT).quantize(unit, _initializer(model, unit.weight))
    delta = quantized.effective_delta()
    session = _float_session(model, [unit.inputs[0]])
    total = 0.0
    for feed in feeds:
        x = _float_tensors(session, feed, [unit.inputs[0]])[unit.inputs[0]].astype(np.float64)
        if unit.op == "Conv":
            from onnx.reference import ReferenceEvaluator

            node = next(n for n in model.graph.node if n.name == unit.name)
            conv = helper.make_node("Conv", ["x", "w"], ["y"], **{a.name: helper.get_attribute_value(a)
                                                                  for a in node.attribute})  # fmt: skip
            graph = helper.make_graph([conv], "c", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None),
                                                    helper.make_tensor_value_info("w", TensorProto.DOUBLE, None)],
                                      [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])  # fmt: skip
            error = ReferenceEvaluator(helper.make_model(graph)).run(None, {"x": x, "w": delta})[0]
        else:
            oriented = delta if unit.weight_axis == 1 else delta.T
            error = x.reshape(-1, x.shape[-1]) @ oriented
        total += float(np.square(error).sum())
    return total


def _initializer(model: onnx.ModelProto, name: str | None) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_learned_rounding_lowers_the_unit_output_error_on_held_out_batches(name: str) -> None:
    build, feeder = MODELS[name]
    model = build()
    feeds, held_out = feeder(8, seed=1), feeder(4, seed=2)
    ranges = _calibrated(model, feeds)
    learned, record = learn_rounding(model, find_units(model), ranges, TENSORRT, feeds)
    assert record.rounded and learned.rounding, record.to_dict()
    for unit in find_units(model):
        if unit.name in record.rounded:
            with_rounding = _unit_output_error(model, unit, learned, held_out)
            assert with_rounding < _unit_output_error(model, unit, ranges, held_out), unit.name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_compiled_all_int8_graph_is_closer_to_float_with_learned_rounding(name: str) -> None:
    build, feeder = MODELS[name]
    model = build()
    feeds, held_out = feeder(8, seed=1), feeder(4, seed=2)
    ranges = _calibrated(model, feeds)
    learned, _ = learn_rounding(model, find_units(model), ranges, TENSORRT, feeds)
    errors = [_graph_error(model, r, held_out) for r in (ranges, learned)]
    assert errors[1] < errors[0]


def _graph_error(model: onnx.ModelProto, ranges: Ranges, feeds: list) -> float:
    """Σ ‖all-INT8 output − float output‖² over ``feeds``, both run by ONNX Runtime."""
    compiled = compile_plan(model, PrecisionPlan.with_int8([u.name for u in find_units(model)]), ranges, TENSORRT)
    total = 0.0
    with OnnxRuntimeRunner(compiled, threads=1) as int8, OnnxRuntimeRunner(model, threads=1) as exact:
        for feed in feeds:
            total += float(np.square(int8.infer(feed)[0].astype(np.float64) - exact.infer(feed)[0]).sum())
    return total


def test_ranges_round_trip_with_learned_rounding(tmp_path) -> None:
    model, feeds = mlp_model(), mlp_feeds(6, seed=1)
    ranges = _calibrated(model, feeds)
    learned, _ = learn_rounding(model, find_units(model), ranges, TENSORRT, feeds)
    assert learned.rounding and learned.stable_hash() != ranges.stable_hash()
    learned.save(tmp_path / "ranges.json")
    loaded = Ranges.load(tmp_path / "ranges.json")
    assert loaded.stable_hash() == learned.stable_hash()
    for name, value in learned.rounding.items():
        assert np.array_equal(loaded.rounding[name].values, value.values)
        assert np.array_equal(loaded.rounding[name].scale, value.scale)
    ranges.save(tmp_path / "plain.json")  # no rounding: no .npz, and it loads as before
    assert not rounding_path(tmp_path / "plain.json").exists()
    assert Ranges.load(tmp_path / "plain.json").stable_hash() == ranges.stable_hash()
    rounding_path(tmp_path / "ranges.json").unlink()
    with pytest.raises(CalibrationError, match="rounding"):
        Ranges.load(tmp_path / "ranges.json")


def test_stale_learned_rounding_is_not_applied() -> None:
    """Values learned for one quantizer apply to it alone: not after smoothing, bias correction or scales change."""
    model, feeds = mlp_model(), mlp_feeds(6, seed=1)
    units = find_units(model)
    ranges = _calibrated(model, feeds)
    learned, record = learn_rounding(model, units, ranges, TENSORRT, feeds)
    unit = next(u for u in units if u.name in record.rounded)
    exact = _initializer(model, unit.weight)
    quantized = WeightQuantizer(learned, TENSORRT).quantize(unit, exact)
    assert quantized.learned is not None and np.array_equal(quantized.int8(), learned.rounding[unit.weight].values)
    nearest = WeightQuantizer(ranges, TENSORRT).quantize(unit, exact).int8()
    assert not np.array_equal(quantized.int8(), nearest)
    smoothed, _ = plan_smoothing(model, units, ranges, SmoothSettings(alpha=0.5), True)
    stale = [replace(learned, bias_correction=False),
             replace(learned, weights={unit.weight: tuple(2 * np.abs(exact).max(axis=1 - unit.weight_axis))}),
             replace(smoothed, rounding=learned.rounding)]  # fmt: skip
    assert unit.inputs[0] in smoothed.smoothing
    for changed in stale:
        again = WeightQuantizer(changed, TENSORRT).quantize(unit, exact)
        assert again.learned is None
        assert np.array_equal(again.int8(), WeightQuantizer(replace(changed, rounding={}), TENSORRT)
                              .quantize(unit, exact).int8())  # fmt: skip


@pytest.mark.parametrize("flavour", [TENSORRT, get_flavour("ort-cpu", weight_bits=8)], ids=["tensorrt", "ort-cpu"])
def test_compile_writes_the_learned_int8_weights(flavour) -> None:  # type: ignore[no-untyped-def]
    model, feeds = mlp_model(), mlp_feeds(6, seed=1)
    units = find_units(model)
    ranges = _calibrated(model, feeds)
    learned, record = learn_rounding(model, units, ranges, flavour, feeds)
    compiled = compile_plan(model, PrecisionPlan.with_int8([u.name for u in units]), learned, flavour)
    initializers = {i.name: numpy_helper.to_array(i) for i in compiled.graph.initializer}
    for unit in units:
        if unit.name not in record.rounded:
            continue
        scale = initializers[f"{unit.name}/weight_scale"].astype(np.float64)
        shape = [1, 1]
        shape[unit.weight_axis] = -1  # type: ignore[index]
        if flavour.float_weights:  # Q→DQ on a float weight: what QuantizeLinear makes of it
            written = np.rint(initializers[f"{unit.name}/weight_float"].astype(np.float64) / scale.reshape(shape))
        else:
            written = initializers[f"{unit.name}/weight_int8"]
        assert np.array_equal(written.astype(np.int8), learned.rounding[unit.weight].values), unit.name


def test_too_few_calibration_batches_learn_nothing_and_say_how_many_are_needed() -> None:
    model, feeds = mlp_model(), mlp_feeds(MIN_BATCHES - 1, seed=1)
    ranges = _calibrated(model, mlp_feeds(4, seed=1))
    learned, record = learn_rounding(model, find_units(model), ranges, TENSORRT, feeds)
    assert not learned.rounding and not record.rounded
    assert record.note is not None and f"at least {MIN_BATCHES}" in record.note


def test_a_shared_weight_is_left_as_it_is_with_a_note() -> None:
    model = mlp_model(shared=True)
    feeds = mlp_feeds(6, seed=1)
    units = find_units(model)
    assert sum(u.weight == "w1" for u in units) == 2
    learned, record = learn_rounding(model, units, _calibrated(model, feeds), TENSORRT, feeds)
    assert "w1" not in learned.rounding
    for unit in units:
        if unit.weight == "w1":
            assert "shared" in record.skipped[unit.name]
    assert "fc2" in record.rounded  # the others are still learned


def _learner(model: onnx.ModelProto, feeds: list):  # type: ignore[no-untyped-def]
    units = find_units(model)
    return rounding_learner(model, units, TENSORRT, lambda: feeds, PrecisionPlan.with_int8([u.name for u in units]))


def _cosine_scorer(model: onnx.ModelProto, feeds: list, sign: float = 1.0):  # type: ignore[no-untyped-def]
    """The all-INT8 graph's mean cosine to float on ``feeds`` (times ``sign``: −1 makes a metric nearest wins)."""

    def score(ranges: Ranges) -> float:
        compiled = compile_plan(model, PrecisionPlan.with_int8([u.name for u in find_units(model)]), ranges, TENSORRT)
        values = []
        with OnnxRuntimeRunner(compiled, threads=1) as int8, OnnxRuntimeRunner(model, threads=1) as exact:
            for feed in feeds:
                a, b = int8.infer(feed)[0].astype(np.float64).ravel(), exact.infer(feed)[0].astype(np.float64).ravel()
                values.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        return sign * float(np.mean(values))

    return score


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["helps", "hurts"])
def test_the_job_option_is_measured_reported_and_kept_only_where_it_helps(sign: float) -> None:
    model, feeds, search = mlp_model(), mlp_feeds(8, seed=1), mlp_feeds(4, seed=3)
    ranges = _calibrated(model, feeds)
    score = _cosine_scorer(model, search, sign)
    measured = {"off": score(ranges)}
    chosen, report = measured_rounding(True, ranges, "off", measured, _learner(model, feeds), score)
    assert report["label"] in measured and report["score_without"] == measured["off"]
    assert report["units"]["rounded"] and report["seconds"] >= report["learn_seconds"] >= 0
    helped = report["score_with"] > report["score_without"]
    assert helped == (sign > 0)  # on this model the learned values bring the output closer to float
    assert report["enabled"] == helped and bool(chosen.rounding) == helped
    if not helped:  # a resumed job does not learn again what lost

        def never(_: Ranges):  # type: ignore[no-untyped-def]
            raise AssertionError("learned again")

        again, second = measured_rounding(True, ranges, "off", measured, never, score)
        assert not again.rounding and not second["enabled"]


def test_the_job_option_can_be_switched_off() -> None:
    model, feeds = mlp_model(), mlp_feeds(4, seed=1)
    ranges = _calibrated(model, feeds)

    def never(_: Ranges):  # type: ignore[no-untyped-def]
        raise AssertionError("learned while switched off")

    chosen, report = measured_rounding(False, ranges, "off", {"off": 1.0}, never, never)
    assert chosen is ranges and not report["enabled"] and "--no-weight-rounding" in report["note"]


def test_a_unit_whose_learned_rounding_does_not_beat_nearest_on_held_out_batches_keeps_nearest() -> None:
    """White-noise input: H is about diagonal, so GPTQ has nothing to trade and few rows make it overfit."""
    model = conv_model()
    rng = np.random.default_rng(5)
    feeds = [{"input": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    learned, record = learn_rounding(model, find_units(model), _calibrated(model, feeds), TENSORRT, feeds)
    not_better = [name for name, why in record.skipped.items() if why.startswith("not better")]
    assert not_better and all(u.weight not in learned.rounding for u in find_units(model) if u.name in not_better)
    assert all(ratio < 1 for ratio in record.rounded.values())


MLP_RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng, mix = np.random.default_rng(["calibration", "search", "holdout"].index(split)), None
    mix = np.random.default_rng(99).standard_normal((8, 48))
    for _ in range({batches}):
        yield {{"input": (rng.standard_normal((32, 8)) @ mix + 0.3 * rng.standard_normal((32, 48))).astype(np.float32)}}
"""


def _mlp_job(tmp_path, *extra: str, batches: int = 6) -> dict:  # type: ignore[no-untyped-def]
    """A compile job on the ONNX-only MLP (no torch model), all-INT8 within its 50% budget: its report."""
    import json

    from trtmix.cli import main

    tmp_path.mkdir(parents=True, exist_ok=True)
    onnx.save(mlp_model(), tmp_path / "mlp.onnx")
    (tmp_path / "recipe.py").write_text(MLP_RECIPE.format(batches=batches))
    args = ["compile", str(tmp_path / "mlp.onnx"), "--data", str(tmp_path / "recipe.py"), "--metric", "cosine",
            "--max-drop", "50%", "--runs", "3", "--final-rounds", "0", "--no-range-choice",
            "-o", str(tmp_path / "out"), *extra]  # fmt: skip
    assert main(["-q", *args]) == 0
    return json.loads((tmp_path / "out" / "report.json").read_text())


def test_the_job_measures_learned_rounding_reports_it_and_can_turn_it_off(tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = _mlp_job(tmp_path / "on")
    rounding, measured = report["quantizers"]["weight_rounding"], report["quantizers"]["smoothing"]["measured"]
    assert rounding["label"] in measured and rounding["score_with"] == measured[rounding["label"]]
    assert rounding["enabled"] == (rounding["score_with"] > rounding["score_without"])
    assert rounding["units"]["rounded"] and rounding["seconds"] >= rounding["learn_seconds"]
    ranges = Ranges.load(tmp_path / "on" / "out" / "ranges.json")
    assert bool(ranges.rounding) == rounding["enabled"]
    assert rounding_path(tmp_path / "on" / "out" / "ranges.json").exists() == rounding["enabled"]
    off = _mlp_job(tmp_path / "off", "--no-weight-rounding")["quantizers"]
    assert not off["weight_rounding"]["enabled"] and "--no-weight-rounding" in off["weight_rounding"]["note"]
    assert not any("rounding" in label for label in off["smoothing"]["measured"])
    assert not Ranges.load(tmp_path / "off" / "out" / "ranges.json").rounding


def test_a_small_h_budget_takes_more_passes_and_learns_the_same_values() -> None:
    """H is held for a few units at a time when memory is short: the values do not depend on the grouping."""
    model, feeds = mlp_model(), mlp_feeds(6, seed=1)
    ranges = _calibrated(model, feeds)
    whole, one = learn_rounding(model, find_units(model), ranges, TENSORRT, feeds)
    split, many = learn_rounding(model, find_units(model), ranges, TENSORRT, feeds, h_budget=1)
    assert one.passes == 1 and many.passes == len(find_units(model))
    assert whole.stable_hash() == split.stable_hash() and whole.rounding


def _refuse_learning(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def never(*_, **__):  # type: ignore[no-untyped-def]
        raise AssertionError("learned rounding again on a resumed job")

    monkeypatch.setattr("trtmix.job.weight_rounding.learn_rounding", never)


def _saved(out) -> tuple[str, bytes, set[str]]:  # type: ignore[no-untyped-def]
    """What a job left in ``out``: its ranges' hash, the learned values' file, the artifacts' names."""
    ranges = out / "ranges.json"
    artifacts = {path.name for path in (out / "artifacts").iterdir()}
    return Ranges.load(ranges).stable_hash(), rounding_path(ranges).read_bytes(), artifacts


def test_a_resumed_job_reuses_the_learned_rounding_it_saved(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    first = _mlp_job(tmp_path)["quantizers"]["weight_rounding"]
    assert first["enabled"] and not first["reused"] and first["units"]["rounded"]  # this MLP keeps it
    before = _saved(tmp_path / "out")
    _refuse_learning(monkeypatch)
    second = _mlp_job(tmp_path)["quantizers"]["weight_rounding"]
    assert second["enabled"] and second["reused"] and second["learn_seconds"] == 0
    assert second["weights"] == sorted(Ranges.load(tmp_path / "out" / "ranges.json").rounding)
    assert (second["score_with"], second["score_without"]) == (first["score_with"], first["score_without"])
    assert _saved(tmp_path / "out") == before  # the same ranges, so the same artifacts (none built again)


@pytest.mark.parametrize("change", ["removed", "altered", "unreadable"])
def test_a_resumed_job_learns_again_where_the_saved_values_cannot_be_trusted(tmp_path, change: str) -> None:  # type: ignore[no-untyped-def]
    _mlp_job(tmp_path)
    before = _saved(tmp_path / "out")
    npz = rounding_path(tmp_path / "out" / "ranges.json")
    if change == "removed":
        npz.unlink()
    elif change == "altered":  # a learned value moved by one level: its digest no longer matches ranges.json
        with np.load(npz) as stored:
            arrays = dict(stored)
        arrays["values_0"].flat[0] += 1 if arrays["values_0"].flat[0] < 0 else -1
        np.savez(npz, **arrays)
    else:
        npz.write_bytes(b"not an npz")
    second = _mlp_job(tmp_path)["quantizers"]["weight_rounding"]
    assert second["enabled"] and not second["reused"] and second["units"]["rounded"]
    assert _saved(tmp_path / "out") == before  # learned again, the same values


def test_saved_rounding_learned_for_other_ranges_is_not_reused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from trtmix.job.weight_rounding import saved_rounding

    model, feeds = mlp_model(), mlp_feeds(6, seed=1)
    ranges = _calibrated(model, feeds)
    learned, _ = learn_rounding(model, find_units(model), ranges, TENSORRT, feeds)
    assert learned.rounding
    learned.save(tmp_path / "ranges.json")
    assert saved_rounding(tmp_path / "ranges.json", ranges).keys() == learned.rounding.keys()
    assert saved_rounding(tmp_path / "ranges.json", replace(ranges, bias_correction=not ranges.bias_correction)) is None
    assert saved_rounding(tmp_path / "missing.json", ranges) is None and saved_rounding(None, ranges) is None
