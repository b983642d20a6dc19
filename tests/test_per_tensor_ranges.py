"""Range method chosen per tensor by the error at its readers' outputs (issue 33, ``quant/range_choice``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from trtmix.calibration.calibrate import METHODS, CalibrationConfig, calibrate
from trtmix.calibration.ranges import Ranges
from trtmix.errors import CalibrationError
from trtmix.ir.units import find_units
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import PrecisionPlan
from trtmix.quant.range_choice import MIN_BATCHES, choose_ranges
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

ROWS, WIDTH = 256, 16


def _two_branches(seed: int = 0) -> onnx.ModelProto:
    """Inputs a and b, each through its own MatMul.  The weights are k/128 with a ±127 in every output column, so
    int8 weights are exact (scale 1/128): a unit's int8 error is its activation quantizer's alone."""
    rng = np.random.default_rng(seed)
    inits, nodes, outputs = [], [], []
    for name in ("a", "b"):
        k = rng.integers(-127, 128, (WIDTH, WIDTH))
        k[rng.integers(0, WIDTH, WIDTH), np.arange(WIDTH)] = 127
        inits.append(numpy_helper.from_array((k / 128).astype(np.float32), f"w_{name}"))
        nodes.append(helper.make_node("MatMul", [name, f"w_{name}"], [f"y_{name}"], name=f"{name}/MatMul"))
        outputs.append(helper.make_tensor_value_info(f"y_{name}", onnx.TensorProto.FLOAT, [ROWS, WIDTH]))
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [ROWS, WIDTH]) for n in ("a", "b")]
    graph = helper.make_graph(nodes, "branches", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """a: Student's t with 2 degrees of freedom (a long tail a little clipping pays for); b: t with 1 (Cauchy: its
    tail is most of its energy, and entropy's clipping costs it 0.9 of its unit output)."""
    rng = np.random.default_rng(seed)
    return [{"a": rng.standard_t(2.0, (ROWS, WIDTH)).astype(np.float32),
             "b": rng.standard_t(1.0, (ROWS, WIDTH)).astype(np.float32)} for _ in range(count)]  # fmt: skip


def _unit_errors(model: onnx.ModelProto, ranges: object, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Relative error of each output (y_a, y_b) of the all-INT8 tensorrt graph against the float model."""
    plan = PrecisionPlan.with_int8([u.name for u in find_units(model)])
    with OnnxRuntimeRunner(model, threads=1) as exact, \
            OnnxRuntimeRunner(compile_plan(model, plan, ranges, "tensorrt"), threads=1) as quantized:  # type: ignore[arg-type]  # fmt: skip
        pairs = [(exact.infer(feed), quantized.infer(feed)) for feed in feeds]
    errors = []
    for output in range(2):
        reference = np.concatenate([p[0][output] for p in pairs]).astype(np.float64)
        outputs = np.concatenate([p[1][output] for p in pairs]).astype(np.float64)
        errors.append(np.linalg.norm(outputs - reference) / np.linalg.norm(reference))
    return np.asarray(errors)


def test_each_tensor_takes_the_method_of_least_error_at_its_unit_output() -> None:
    model = _two_branches()
    units = find_units(model)
    feeds = _feeds(4, 0)
    candidates = {m: calibrate(model, units, feeds, CalibrationConfig(method=m), progress=False) for m in METHODS}
    chosen, record = choose_ranges(model, units, candidates, feeds)
    assert set(record.tensors) == {"a", "b"} and record.batches == 4
    for tensor, choice in record.tensors.items():
        assert choice.errors[choice.method] == min(choice.errors.values())
        assert chosen.tensors[tensor] == candidates[choice.method].tensors[tensor]
    assert record.tensors["a"].method != "max" and record.tensors["b"].method != "entropy"
    assert chosen.meta["per_tensor"] == {"a": record.tensors["a"].method, "b": record.tensors["b"].method}
    # measured through compile (float16 graph, exact int8 weights): no global method does better on either unit,
    # and each does worse on one of them
    per_tensor = _unit_errors(model, chosen, feeds)
    for method, ranges in candidates.items():
        globally = _unit_errors(model, ranges, feeds)
        assert (per_tensor <= globally * 1.002).all() and (per_tensor < globally * 0.995).any(), method
    report = record.to_dict()
    assert report["scored"] == 2 and sum(report["counts"].values()) == 2 and "y_a" in report["unscored"]


def test_a_calibration_set_too_small_to_choose_says_how_many_batches_it_needs() -> None:
    model = _two_branches()
    units = find_units(model)
    feeds = _feeds(1, 0)
    candidates = {m: calibrate(model, units, feeds, CalibrationConfig(method=m), progress=False) for m in METHODS}
    with pytest.raises(CalibrationError, match=rf"at least {MIN_BATCHES} calibration batches; 1 given"):
        choose_ranges(model, units, candidates, feeds)


def _behind_a_contrib_op() -> onnx.ModelProto:
    """a → com.microsoft Gelu → MatMul: ONNX's shape inference knows no contrib op, so the MatMul's input has no
    value_info, as on Paddle2ONNX's text detector, where ``onnx.utils.Extractor`` then could run no unit alone."""
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32), "w")
    nodes = [helper.make_node("Gelu", ["a"], ["g"], name="gelu", domain="com.microsoft"),
             helper.make_node("MatMul", ["g", "w"], ["y"], name="MatMul")]  # fmt: skip
    graph = helper.make_graph(nodes, "contrib", [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT,
                              [ROWS, WIDTH])], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [weight])  # fmt: skip
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_a_unit_whose_input_shape_inference_cannot_see_is_still_scored() -> None:
    model = _behind_a_contrib_op()
    assert "g" not in {v.name for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    units = find_units(model)
    feeds = [{"a": feed["a"]} for feed in _feeds(2, 0)]
    candidates = {m: calibrate(model, units, feeds, CalibrationConfig(method=m), progress=False) for m in METHODS}
    _, record = choose_ranges(model, units, candidates, feeds)
    assert set(record.tensors) == {"g"}, record.unscored


def test_nothing_to_score_is_one_clear_error_not_an_empty_choice() -> None:
    model = _two_branches()
    feeds = _feeds(2, 0)
    units = find_units(model)
    candidates = {m: calibrate(model, units, feeds, CalibrationConfig(method=m), progress=False) for m in METHODS}
    with pytest.raises(CalibrationError, match="No activation could be scored") as raised:
        choose_ranges(model, [], candidates, feeds)
    assert "--no-range-choice" in str(raised.value)


LONG_TAIL_RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range({batches}):
        yield {{"a": rng.standard_t(2.0, (256, 16)).astype(np.float32),
                "b": rng.standard_t(2.0, (256, 16)).astype(np.float32)}}
"""


def _long_tail_job(tmp_path, *extra: str, batches: int = 4) -> tuple[dict, str]:
    """A compile job on the two-branch graph (an ONNX file, no torch model), fed Student's t data with 2 degrees
    of freedom: its report and printed summary.

    The long tail makes a range at the calibration max spend int8 steps on values the search split rarely holds:
    the per-tensor choice (mse here) scores higher with the job's own metric.  (Cauchy data does not show it: there
    ``max`` wins every tensor on the calibration batches, and loses on the search split to values beyond it.)
    All-INT8 meets the 50% budget, so the job measures little else.
    """
    import json

    from trtmix.cli import main

    tmp_path.mkdir(parents=True, exist_ok=True)
    onnx.save(_two_branches(), tmp_path / "branches.onnx")
    (tmp_path / "recipe.py").write_text(LONG_TAIL_RECIPE.format(batches=batches))
    args = ["compile", str(tmp_path / "branches.onnx"), "--data", str(tmp_path / "recipe.py"), "--metric", "cosine",
            "--max-drop", "50%", "--runs", "3", "--final-rounds", "0", "-o", str(tmp_path / "out"), *extra]  # fmt: skip
    import io
    from contextlib import redirect_stdout

    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["-q", *args]) == 0
    return json.loads((tmp_path / "out" / "report.json").read_text()), printed.getvalue()


def test_the_job_measures_per_tensor_ranges_and_keeps_them_where_its_metric_is_higher(tmp_path) -> None:
    report, printed = _long_tail_job(tmp_path)
    quantizers = report["quantizers"]
    record, measured = quantizers["per_tensor_ranges"], quantizers["smoothing"]["measured"]
    chosen_before = quantizers["smoothing"]["option"].removesuffix(", no bias correction")
    base = chosen_before.removesuffix(", per-tensor ranges")
    assert f"{base}, per-tensor ranges" in measured and base in measured  # both scored with the job's metric
    assert record["kept"] == (measured[f"{base}, per-tensor ranges"] > measured[base])
    assert record["kept"], measured  # long tails: max ranges lose to the per-tensor choice
    assert set(record["tensors"]) == {"a", "b"} and record["seconds"] >= 0
    ranges = Ranges.load(tmp_path / "out" / "ranges.json")
    assert ranges.meta["method"] == "per-tensor"
    assert ranges.meta["per_tensor"] == {t: c["method"] for t, c in record["tensors"].items()}
    assert "per-tensor ranges kept" in printed


def test_per_tensor_ranges_can_be_turned_off_and_need_two_batches(tmp_path) -> None:
    report, _ = _long_tail_job(tmp_path / "off", "--no-range-choice")
    assert "per_tensor_ranges" not in report["quantizers"]
    assert not any("per-tensor" in label for label in report["quantizers"]["smoothing"]["measured"])
    report, printed = _long_tail_job(tmp_path / "one", "--batches", "1", batches=1)
    skipped = report["quantizers"]["per_tensor_ranges"]["skipped"]
    assert f"at least {MIN_BATCHES} calibration batches" in skipped and "1 given" in skipped
    assert "per-tensor ranges not measured" in printed
