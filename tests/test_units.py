from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtmix.errors import ModelLoadError
from trtmix.ir.graph import load_onnx
from trtmix.ir.units import find_units, require_units


def test_convnet_units(exported):
    for exporter in ("dynamo", "legacy"):
        units = find_units(load_onnx(exported[("convnet", exporter)]))
        assert [u.name for u in units] == [
            "/stem/Conv",
            "/block_conv1/Conv",
            "/block_conv2/Conv",
            "/down/Conv",
            "/fc/Gemm",
        ]
        assert [u.kind for u in units] == ["conv"] * 4 + ["linear"]
        # Activations fuse into the unit; the conv before the residual Add has none.
        assert [len(u.nodes) for u in units] == [2, 2, 1, 2, 1]
        assert [u.module for u in units] == ["stem", "block_conv1", "block_conv2", "down", "fc"]
        assert units[0].weight_shape == (8, 3, 3, 3) and units[0].weight_axis == 0
        assert units[0].macs == 2 * 8 * 16 * 16 * 3 * 3 * 3
        assert units[4].weight_axis == 0  # Gemm with transB=1: output channels on axis 0


def test_transformer_units(exported):
    for exporter in ("dynamo", "legacy"):
        units = find_units(load_onnx(exported[("transformer", exporter)]))
        kinds = Counter(u.kind for u in units)
        assert kinds == {"linear": 13, "attention": 4}, exporter  # proj + 2 × (q, k, v, out, ffn_in, ffn_out)
        linear = [u for u in units if u.kind == "linear"]
        assert all(u.op == "MatMul" and len(u.nodes) == 2 and u.weight_axis == 1 for u in linear)
        assert {u.module for u in linear} >= {"layers.0.query", "layers.1.ffn_out", "proj"}
        attention = [u for u in units if u.kind == "attention"]
        assert all(u.weight is None and len(u.inputs) == 2 for u in attention)


def test_unit_names_are_stable_across_exports(exported, tmp_path):
    from trtmix.export import export_onnx
    from trtmix.models import tiny

    model, samples = tiny.transformer()
    again = export_onnx(model, samples, tmp_path / "again.onnx", exporter="dynamo").path
    first = [u.name for u in find_units(load_onnx(exported[("transformer", "dynamo")]))]
    assert [u.name for u in find_units(load_onnx(again))] == first


def _relu_only_model(path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))


def test_model_without_units_is_an_error(tmp_path):
    _relu_only_model(tmp_path / "relu.onnx")
    with pytest.raises(ModelLoadError, match="no quantizable unit"):
        require_units(load_onnx(tmp_path / "relu.onnx"), "relu.onnx")


def test_already_quantized_model_is_an_error(tmp_path):
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(np.float32(0.1), "s")],
    )
    with pytest.raises(ModelLoadError, match="already contains QuantizeLinear"):
        find_units(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))


def test_unreadable_files(tmp_path, exported):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a protobuf\n" * 20)
    with pytest.raises(ModelLoadError):
        load_onnx(text)
    data = exported[("convnet", "dynamo")].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_onnx(truncated)
