"""Graphs trtmix did not write: ``transformers`` models exported by ``torch.onnx.export`` directly, as users do.

Small configurations (2 layers, narrow), seeded random init. For each graph: ``units``, ``calibrate``, ``build`` in
both flavours (the INT8 graph's outputs compared with the float model's on ONNX Runtime), ``profile`` on OpenVINO,
and ``compile --max-drop 1%`` end to end, ending in a plan. Plus an opset-13 graph, dynamic axes, external data,
a graph fused by ONNX Runtime's transformer optimizer, and the faults those graphs bring.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from trtmix.cli import main
from trtmix.data.recipes import load_batches
from trtmix.evaluate import cosine
from trtmix.ir.store import STORE, references
from trtmix.models.zoo import ZOO, export_as_user, zoo_model
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

RECIPE = str(Path(__file__).resolve().parents[1] / "calib" / "zoo.py")
CNNS = ("resnet", "mobilenetv2")
FAST = ["--runs", "3", "--timing-target", "0", "--final-rounds", "2", "--eval-batches", "2"]
# The least all-INT8 mean cosine to the float model's first output (calib/zoo.py's first search batch, ONNX Runtime)
# per model and flavour. Measured on this repository's tests (both exporters; the opset-13, dynamic-axes and
# external-data graphs too), min over them: bert 0.9998 tensorrt / 1.0000 ort-cpu, distilbert 0.9999 / 1.0000,
# gpt2 0.9998 / 0.9997, vit 0.9992 / 0.9995, resnet 0.9999 / 0.9999, mobilenetv2 0.816 / 0.709 (its random-init
# depthwise convs; legacy 0.853 / 0.723 and dynamo 0.816 / 0.782 before commit 1a3c9bd unified the weight quantizer,
# 0.825 / 0.709 and 0.826 / 0.786 after it). Each bound allows about 5-10x the measured loss (1 - cosine) where it is
# small, and about 0.07 below the least value measured for MobileNetV2, whose loss is large already and moved by 0.03
# with that commit.
INT8_COSINE = {
    "bert": {"tensorrt": 0.998, "ort-cpu": 0.998},
    "distilbert": {"tensorrt": 0.998, "ort-cpu": 0.998},
    "gpt2": {"tensorrt": 0.997, "ort-cpu": 0.997},
    "vit": {"tensorrt": 0.995, "ort-cpu": 0.995},
    "resnet": {"tensorrt": 0.998, "ort-cpu": 0.998},
    "mobilenetv2": {"tensorrt": 0.75, "ort-cpu": 0.65},
}


def data_flags(kind: str) -> list[str]:
    return ["--data", RECIPE, "--data-arg", f"kind={kind}"]


def first_output(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    with OnnxRuntimeRunner(path, threads=1, optimize=True) as runner:
        return runner.infer(feed)[0]


def check_graph(
    path: Path,
    name: str,
    kind: str,
    tmp_path: Path,
    compile_flavours: tuple[str, ...] = ("tensorrt",),
    ordering: str = "kl",
) -> None:
    """units, calibrate, build (both flavours, outputs close to float), profile, compile: every step exits 0.

    All-INT8 cosine to the float outputs must reach the model's bound in ``INT8_COSINE`` for each flavour. The CNNs'
    compiles use the data-free ``noise`` ordering: ``kl``'s compile per unit (53 for MobileNetV2) would cost a
    minute here.
    """
    data = data_flags(kind)
    ranges = tmp_path / "ranges.json"
    assert main(["-q", "units", str(path)]) == 0
    assert main(["-q", "calibrate", str(path), *data, "-o", str(ranges)]) == 0
    feed = next(iter(load_batches(RECIPE, "search", kind=kind)))
    reference = first_output(path, feed)
    float_outputs = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    for flavour in ("tensorrt", "ort-cpu"):
        built = tmp_path / f"int8.{flavour}.onnx"
        assert main(["-q", "build", str(path), "--plan", "int8", "--flavour", flavour, "--ranges", str(ranges),
                     "-o", str(built)]) == 0  # fmt: skip
        assert [o.name for o in onnx.load(str(built)).graph.output] == float_outputs  # scored output keeps its index
        similarity = cosine(first_output(built, feed), reference).mean()
        bound = INT8_COSINE[name][flavour]
        assert similarity >= bound, f"{name} {flavour}: all-INT8 cosine {similarity:.4f} to the float model < {bound}"
    assert main(["-q", "profile", str(tmp_path / "int8.tensorrt.onnx"), "--backend", "openvino", *data,
                 "--runs", "3"]) == 0  # fmt: skip
    metric = "cosine" if kind == "text" else "agreement"
    for flavour in compile_flavours:
        out = tmp_path / f"out-{flavour}"
        assert main(["-q", "compile", str(path), *data, "--metric", metric, "--max-drop", "1%", "--flavour", flavour,
                     "--ordering", ordering, "-o", str(out), *FAST]) == 0  # fmt: skip
        report = json.loads((out / "report.json").read_text())
        assert report["chosen"], report["stop_reason"]
        assert (out / "plan.json").is_file()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_graph_end_to_end(name: str, exporter: str, tmp_path: Path) -> None:
    model = zoo_model(name)
    path = export_as_user(model, tmp_path / f"{name}.{exporter}.onnx", exporter)
    check_graph(path, name, model.kind, tmp_path, ordering="noise" if name in CNNS else "kl")


def test_opset_13_graph_both_flavours(tmp_path: Path) -> None:
    model = zoo_model("bert", attention="eager")
    path = export_as_user(model, tmp_path / "bert13.onnx", "legacy", opset=13)
    assert onnx.load(str(path)).opset_import[0].version == 13
    check_graph(path, "bert", "text", tmp_path, compile_flavours=("tensorrt", "ort-cpu"))


def test_external_data_graph_builds_self_contained_artifacts(tmp_path: Path) -> None:
    model = zoo_model("resnet")
    path = export_as_user(model, tmp_path / "resnet.onnx", "dynamo")
    assert Path(f"{path}.data").is_file(), "the dynamo exporter keeps weights in external data"
    check_graph(path, "resnet", "image", tmp_path, compile_flavours=("tensorrt", "ort-cpu"))
    for backend in ("onnxruntime", "openvino"):  # the user's graph itself, weights in its .data file
        assert main(["-q", "profile", str(path), "--backend", backend, "--runs", "2", *data_flags("image")]) == 0
    for artifact in (tmp_path / "out-tensorrt" / "artifacts").glob("float.*.onnx"):  # the job's own copy
        stored = references(artifact)
        assert stored and all(file.parent == artifact.parent / STORE and file.is_file() for file in stored)


def test_dynamic_axes_need_dims_or_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = zoo_model("bert")
    path = export_as_user(model, tmp_path / "bert_dynamic.onnx", "legacy", dynamic=True)
    assert main(["-q", "profile", str(path), "--runs", "2"]) == 2
    err = capsys.readouterr().err
    assert "'batch'" in err and "'sequence'" in err and "--dim batch=N sequence=N" in err and "Traceback" not in err
    assert main(["-q", "profile", str(path), "--runs", "2", "--dim", "batch=1", "sequence=8", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["median_ms"] > 0
    check_graph(path, "bert", "text", tmp_path)


def test_graph_fused_by_onnxruntime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnxruntime.transformers import optimizer

    source = export_as_user(zoo_model("bert", attention="eager"), tmp_path / "bert.onnx", "legacy")
    fused = optimizer.optimize_model(str(source), model_type="bert", num_heads=2, hidden_size=64, opt_level=0)
    path = tmp_path / "bert_fused.onnx"
    fused.save_model_to_file(str(path))
    assert any(node.domain == "com.microsoft" and node.op_type == "Attention" for node in fused.model.graph.node)

    assert main(["-q", "units", str(path)]) == 0
    listed = capsys.readouterr()
    assert "com.microsoft Attention" in listed.err and "no plan can quantize" in listed.err
    data = data_flags("text")
    out = tmp_path / "refused"
    assert main(["-q", "compile", str(path), *data, "--metric", "cosine", "--max-drop", "1%", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "TensorRT's ONNX parser cannot parse" in err and "--flavour ort-cpu" in err and "Traceback" not in err
    assert not (out / "ranges.json").exists(), "refused before calibration"
    out = tmp_path / "ort"
    assert main(["-q", "compile", str(path), *data, "--metric", "cosine", "--max-drop", "1%", "--flavour", "ort-cpu",
                 "-o", str(out), *FAST]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"] and "TensorRT cannot parse com.microsoft ops" in report["files"]["tensorrt_note"]
    assert not (out / "chosen.tensorrt.onnx").exists()


def test_op_the_engine_cannot_run_names_the_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
         helper.make_node("Frobnicate", ["m"], ["y"], name="odd_node", domain="example.custom")],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")],
    )  # fmt: skip
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("example.custom", 1)]), path)  # fmt: skip
    for backend, engine_words in (("onnxruntime", "not a registered function/op"), ("openvino", "conversion rule")):
        assert main(["-q", "profile", str(path), "--backend", backend, "--runs", "2"]) == 2
        err = capsys.readouterr().err
        assert engine_words in err and "odd_node (example.custom.Frobnicate)" in err and "Traceback" not in err


def test_two_outputs_say_which_is_scored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = zoo_model("bert")
    path = export_as_user(model, tmp_path / "bert.onnx", "legacy")
    outputs = [o.name for o in onnx.load(str(path)).graph.output]
    assert len(outputs) == 2  # last_hidden_state, pooler_output
    base = ["compile", str(path), *data_flags("text"), "--metric", "cosine", "--max-drop", "1%", *FAST]
    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    assert f"scored output: {outputs[0]} (the first; --score-output NAME" in capsys.readouterr().out
    assert main([*base, "-o", str(tmp_path / "b"), "--score-output", outputs[1]]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["scored_output"].startswith(f"scored output: {outputs[1]} (chosen with --score-output")
    assert main([*base, "-o", str(tmp_path / "c"), "--score-output", "logits"]) == 2
    err = capsys.readouterr().err
    assert "no output of that name" in err and outputs[1] in err
