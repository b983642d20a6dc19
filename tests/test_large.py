"""Models over protobuf's 2 GiB limit go through their skeleton: each path gives what the one-message path gives.

A real 2 GiB model costs minutes and more memory than CI has (``benchmarks/scaling.py --models mlp-2.3gb`` runs
one).  Here the limit is lowered so the tiny models take the very same skeleton paths, and their results are
compared with the one-message paths on the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.conftest import TINY_RECIPE as RECIPE
from tests.conftest import batches_for
from trtmix.cli import main
from trtmix.ir import large
from trtmix.ir.graph import load_onnx, save_onnx
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner


@pytest.fixture()
def everything_large(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model counts as over the limit."""
    monkeypatch.setattr(large, "LARGE_BYTES", 1)


def _opset13_matmul() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "weight")
    shape = numpy_helper.from_array(np.array([2, 32], dtype=np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["input", "weight"], ["mm"], name="mm"),
             helper.make_node("Reshape", ["mm", "shape"], ["output"], name="reshape")]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [2, 32])],
                              [weight, shape])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_the_skeleton_leaves_the_model_whole_and_holds_no_weights(exported: dict) -> None:
    model = load_onnx(exported[("convnet", "dynamo")])
    before = model.SerializeToString(deterministic=True)
    light = large.skeleton(model)
    assert model.SerializeToString(deterministic=True) == before
    assert light.ByteSize() < len(before)
    kept = [t for t in light.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert all(len(large.raw_bytes(t)) < large.THRESHOLD for t in kept)
    assert [t.name for t in light.graph.initializer] == [t.name for t in model.graph.initializer]


def test_the_hash_of_a_large_model_follows_every_weight(exported: dict, everything_large: None) -> None:
    model = load_onnx(exported[("convnet", "dynamo")])
    first = large.model_sha256(model)
    assert large.model_sha256(model) == first
    biggest = max(model.graph.initializer, key=lambda t: len(large.raw_bytes(t)))
    array = numpy_helper.to_array(biggest).copy()
    array.flat[-1] += 1.0
    biggest.CopyFrom(numpy_helper.from_array(array, biggest.name))
    assert large.model_sha256(model) != first


def test_shapes_sessions_and_files_match_the_one_message_paths(
    exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_onnx(exported[("transformer", "dynamo")])
    feed = batches_for("transformer", 1, seed=3)[0]
    whole = {v.name: v.type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    assert {v.name: v.type for v in large.shape_view(model).graph.value_info} == whole  # inferred without weights
    small_outputs = OnnxRuntimeRunner(model, threads=1).infer(feed)
    monkeypatch.setattr(large, "LARGE_BYTES", 1)
    for ours, reference in zip(OnnxRuntimeRunner(model, threads=1).infer(feed), small_outputs, strict=True):
        np.testing.assert_array_equal(ours, reference)
    large.check_model(model, full_check=True)
    path = save_onnx(model, tmp_path / "model.onnx")
    weights = sum(len(large.raw_bytes(t)) for t in model.graph.initializer if len(large.raw_bytes(t)) >= 1024)
    assert (tmp_path / "model.onnx.data").stat().st_size >= weights > 0
    assert path.stat().st_size < model.ByteSize() - weights + 1024
    reloaded = load_onnx(path)
    for ours, theirs in zip(reloaded.graph.initializer, model.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(ours), numpy_helper.to_array(theirs))


def test_the_version_converter_keeps_the_weights_of_a_large_model(everything_large: None) -> None:
    model = _opset13_matmul()
    converted = large.convert_version(model, 19)
    assert converted.opset_import[0].version == 19
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in converted.graph.initializer)
    feed = {"input": np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)}
    np.testing.assert_array_equal(OnnxRuntimeRunner(converted, threads=1).infer(feed)[0],
                                  OnnxRuntimeRunner(model, threads=1).infer(feed)[0])  # fmt: skip


def _compile(output: Path, recipe: Path) -> dict:
    args = ["-q", "compile", "trtmix.models.tiny:convnet", "--data", str(recipe), "--metric", "cosine",
            "-o", str(output), "--runs", "3", "--max-drop", "0.5%", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    return json.loads((output / "report.json").read_text())


def test_a_large_model_compiles_end_to_end_with_the_same_measurements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    small = _compile(tmp_path / "small", recipe)
    monkeypatch.setattr(large, "LARGE_BYTES", 1)
    big = _compile(tmp_path / "large", recipe)
    assert (tmp_path / "large" / "chosen.tensorrt.onnx").is_file()
    accuracy = {p["k"]: p["accuracy"] for p in small["probes"] if p["status"] == "ok"}
    shared = [p for p in big["probes"] if p["status"] == "ok" and p["k"] in accuracy]
    assert shared, "the two jobs probe common points"
    for probe in shared:
        assert probe["accuracy"] == pytest.approx(accuracy[probe["k"]], abs=1e-6), probe["k"]


def _bfloat16_weight_model() -> onnx.ModelProto:
    """A MatMul whose weight is stored as bfloat16 (a type numpy does not hold) and cast to float."""
    rng = np.random.default_rng(2)
    values = rng.standard_normal((64, 32)).astype(np.float32)
    weight = helper.make_tensor("weight", onnx.TensorProto.BFLOAT16, values.shape, values.flatten().tolist())
    nodes = [helper.make_node("Cast", ["weight"], ["weight_f"], to=onnx.TensorProto.FLOAT),
             helper.make_node("MatMul", ["input", "weight_f"], ["output"], name="mm")]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [2, 32])],
                              [weight])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("which", ["transformer", "fp16 compiled", "bfloat16"])
def test_sessions_read_weights_in_place_as_the_serialized_model_would(exported: dict, calibrated: dict,
                                                                       which: str) -> None:  # fmt: skip
    """An in-memory model reaches ONNX Runtime as a hollow graph plus its weights as arrays: same outputs as bytes."""
    from trtmix.quant.compile import compile_plan
    from trtmix.quant.plan import PrecisionPlan
    from trtmix.runtime.onnxruntime import ort_session

    if which == "bfloat16":
        model, feed = _bfloat16_weight_model(), {"input": np.ones((2, 64), np.float32)}
    else:
        model, ranges = calibrated["transformer"]
        if which == "fp16 compiled":  # float16 weights with Q/DQ: the tensorrt flavour's graph
            model = compile_plan(model, PrecisionPlan.with_int8([model.graph.node[0].name]), ranges, "tensorrt")
        feed = batches_for("transformer", 1, seed=5)[0]
    assert any(large.is_placeholder(t) for t in large.hollow(model).graph.initializer), "weights go by array"
    plain = ort_session(model.SerializeToString(), threads=1, optimize=False)  # the bytes, weights and all
    ours = ort_session(model, threads=1, optimize=False)
    for mine, theirs in zip(ours.run(None, feed), plain.run(None, feed), strict=True):
        np.testing.assert_array_equal(mine, theirs)
