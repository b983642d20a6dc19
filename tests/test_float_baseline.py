"""The float16 pass and the all-high plan on small graphs built in code: validity rules, FP32 nodes, measured regions.

The real graphs these rules came from are in ``test_real_graphs``; here each rule gets a graph that needs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtmix.errors import CompileError, PlanError, TrtmixError
from trtmix.evaluate import sample_cosine, score
from trtmix.ir.graph import load_onnx, save_onnx
from trtmix.job.float_baseline import DATA_MAX, choose_float_baseline, magnitude_nodes, observed_magnitudes
from trtmix.job.outputs import write_original_outputs
from trtmix.job.validity import check_graph
from trtmix.quant.float_rules import float32_rules
from trtmix.quant.float_types import to_float16
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.runtime.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeRunner
from trtmix.search.journal import Journal


def _model(
    nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], output_shape: list | None = None
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape or ["n", 4])], initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _anchor_grid_model() -> onnx.ModelProto:
    """y = x + Range(0, rows(x), 1) as float, like YOLOv8's anchor grid: a shape computation feeding float math."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero_i"], ["rows"], name="rows", axis=0),
        helper.make_node("Cast", ["rows"], ["rows_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Range", ["start", "rows_f", "step"], ["grid"], name="range"),
        helper.make_node("Unsqueeze", ["grid", "one_i"], ["column"], name="unsqueeze"),
        helper.make_node("Add", ["x", "column"], ["sum"], name="add"),
        helper.make_node("Mul", ["sum", "half"], ["y"], name="mul"),
    ]
    constants = [numpy_helper.from_array(np.array(0, np.int64), "zero_i"),
                 numpy_helper.from_array(np.array([1], np.int64), "one_i"),
                 numpy_helper.from_array(np.array(0, np.float32), "start"),
                 numpy_helper.from_array(np.array(1, np.float32), "step"),
                 numpy_helper.from_array(np.array(0.5, np.float32), "half")]  # fmt: skip
    return _model(nodes, constants)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    with OnnxRuntimeRunner(model.SerializeToString()) as runner:
        return runner.infer({"x": x})[0]


def test_shape_computations_and_range_stay_float32():
    model = _anchor_grid_model()
    rules = float32_rules(model)
    assert {"shape", "rows", "cast", "range", "unsqueeze"} <= set(rules.nodes)
    assert "add" not in rules.nodes and "mul" not in rules.nodes, "float compute on data is float16"
    half = to_float16(model, lambda name: False)
    check_graph(half, "the anchor-grid graph")  # before the rules: Range read a float16 limit, ORT refused it
    types = {n.name: n for n in half.graph.node}
    assert "add" in types and any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16
                                  for n in half.graph.node)  # fmt: skip
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(half, x), _run(model, x), atol=2e-3)


def test_an_op_without_float16_form_stays_float32():
    """``Range`` on data (its limit computed from x's values) has no float16 form: the node stays float32."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["top"], name="top", keepdims=0),
             helper.make_node("Range", ["start", "top", "step"], ["y"], name="range")]  # fmt: skip
    constants = [numpy_helper.from_array(np.array(0, np.float32), "start"),
                 numpy_helper.from_array(np.array(1, np.float32), "step")]  # fmt: skip
    model = _model(nodes, constants, ["m"])
    assert "type constraint" in float32_rules(model).nodes["range"]
    check_graph(to_float16(model, lambda name: False), "the data Range graph")


def test_an_invalid_graph_is_one_error_naming_the_node_and_op():
    model = _anchor_grid_model()
    for tensor in model.graph.initializer:
        if tensor.name == "start":
            tensor.CopyFrom(numpy_helper.from_array(np.array(0, np.float16), "start"))
    with pytest.raises(CompileError) as raised:
        check_graph(model, "a graph with a float16 Range input")
    message = str(raised.value)
    assert "range (Range)" in message and "ONNX" in message and "fp32_nodes" in message


def test_magnitudes_beyond_float16_reach_keep_their_nodes_float32():
    """AutoCast's data_max rule: a node whose input or output passes 512 is FP32; the rest float16."""
    nodes = [helper.make_node("Mul", ["x", "big"], ["scaled"], name="scale"),
             helper.make_node("Sub", ["scaled", "mean"], ["centred"], name="centre"),
             helper.make_node("Mul", ["centred", "small"], ["y"], name="shrink")]  # fmt: skip
    constants = [numpy_helper.from_array(np.array(16000, np.float32), "big"),
                 numpy_helper.from_array(np.array(15990, np.float32), "mean"),
                 numpy_helper.from_array(np.array(0.01, np.float32), "small")]  # fmt: skip
    model = _model(nodes, constants)
    x = (1 + np.random.default_rng(1).uniform(0, 1e-3, (8, 4))).astype(np.float32)
    magnitudes = observed_magnitudes(model, [{"x": x}])
    assert magnitudes["scaled"] > DATA_MAX and magnitudes["y"] < 1
    kept = magnitude_nodes(model, magnitudes)
    assert set(kept) == {"scale", "centre"} and "reaches 1.6" in kept["scale"]
    masked = _model([helper.make_node("Add", ["x", "mask"], ["y"], name="mask")],
                    [numpy_helper.from_array(np.array(-3.4e38, np.float32), "mask")])  # fmt: skip
    assert "beyond float16" in magnitude_nodes(masked, {})["mask"], "AutoCast's init_max: a mask constant"
    reference = _run(model, x)
    all_half = _run(to_float16(model, lambda name: False), x)
    careful = _run(to_float16(model, lambda name: name in kept), x)
    assert sample_cosine(careful, reference).mean() > 0.9999
    assert sample_cosine(all_half, reference).mean() < sample_cosine(careful, reference).mean()


def _chain(length: int) -> onnx.ModelProto:
    nodes, previous = [], "x"
    for index in range(length):
        output = "y" if index == length - 1 else f"t{index}"
        nodes.append(helper.make_node("Relu" if index % 2 else "Neg", [previous], [output], name=f"n{index}"))
        previous = output
    return _model(nodes, [])


def test_measured_regions_keep_what_float16_loses(tmp_path: Path):
    """A scripted measurement: only plans with node n13 in FP32 keep FP32's score; the region holding it is kept."""
    model = _chain(32)
    journal = Journal(tmp_path / "journal.sqlite", "identity")
    measured = []

    def measure(plan: PrecisionPlan) -> float:
        measured.append(plan.stable_hash())
        return 1.0 if plan.default is Precision.FP32 or "n13" in plan.fp32_nodes else 0.95

    baseline = choose_float_baseline(model, Precision.FP16, {}, measure, 1.0, 0.001, journal)
    assert "n13" in baseline.plan.fp32_nodes and len(baseline.plan.fp32_nodes) == 2  # 16 regions of 2 nodes
    assert baseline.record["all_high"] == 1.0 and len(baseline.record["regions"]) == 1
    count = len(measured)
    again = choose_float_baseline(model, Precision.FP16, {}, measure, 1.0, 0.001, journal)
    assert again.plan == baseline.plan and len(measured) == count, "a resumed job measures nothing again"


def test_a_baseline_float32_cannot_reach_is_a_clear_error(tmp_path: Path):
    journal = Journal(tmp_path / "journal.sqlite", "identity")
    with pytest.raises(TrtmixError, match=r"Even with every node in FP32.*95\.0000%"):
        choose_float_baseline(_chain(4), Precision.FP16, {}, lambda plan: 0.95, 1.0, 0.001, journal)


def test_plan_fp32_nodes_round_trip_and_keep_old_hashes(tmp_path: Path):
    plain = PrecisionPlan.with_int8(["a"])
    assert plain.stable_hash() == PrecisionPlan.from_dict({"default": "fp16", "units": {"a": "int8"}}).stable_hash()
    kept = PrecisionPlan.with_int8(["a"], fp32_nodes=["n1", "n2"])
    kept.save(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text())["fp32_nodes"] == ["n1", "n2"]
    assert PrecisionPlan.load(tmp_path / "plan.json") == kept and kept.stable_hash() != plain.stable_hash()
    with pytest.raises(PlanError, match="n3"):
        PrecisionPlan(fp32_nodes=frozenset({"n3"})).validate_nodes(["n1", "n2"])
    with pytest.raises(PlanError, match="fp32_nodes"):
        PrecisionPlan.from_dict({"default": "fp16", "fp32_nodes": "n1"})


def test_sample_cosine_scores_whole_maps_not_rows():
    """A map that is mostly zero: row cosine is noise, per-sample cosine sees the map (DESIGN.md §12)."""
    rng = np.random.default_rng(0)
    reference = np.zeros((4, 1, 32, 32))
    reference[:, :, 10:14, 5:20] = rng.uniform(0.5, 1, (4, 1, 4, 15))
    noisy = reference + rng.normal(0, 1e-6, reference.shape)
    assert score("sample-cosine", noisy, reference) > 0.9999
    assert score("cosine", noisy, reference) < 0.5, "rows of near-zero values score noise"
    with_empty = np.concatenate([reference, np.zeros((2, 1, 32, 32))])  # two images with nothing to find
    candidate = with_empty + rng.normal(0, 1e-7, with_empty.shape)
    assert score("sample-cosine", candidate, with_empty) > 0.99, "two empty maps agree"
    assert score("cosine", candidate, with_empty) < 0.5


def test_the_original_graph_ships_loadable_from_a_moved_folder(tmp_path: Path):
    model = _anchor_grid_model()
    source = save_onnx(model, tmp_path / "user.onnx")
    artifact = OnnxRuntimeBackend().build(source, tmp_path / "artifact.onnx")
    folder = tmp_path / "job"
    folder.mkdir()
    files = write_original_outputs(folder, load_onnx(source), artifact, "onnxruntime")
    moved = folder.rename(tmp_path / "elsewhere")
    assert PrecisionPlan.load(moved / files["plan"]) == PrecisionPlan(default=Precision.FP32)
    x = np.ones((3, 4), np.float32)
    for name in (files["onnx"], files["artifact"]):
        with OnnxRuntimeRunner(moved / name) as runner:
            np.testing.assert_allclose(runner.infer({"x": x})[0], _run(model, x))
    assert "chosen.original.onnx" in (moved / "trtexec.txt").read_text()
