"""The TensorRT backend against a fake ``tensorrt`` and Polygraphy that record what it asks (runs on any CPU).

TF32 off for graphs computing in FP32, the device in every artifact key and timing cache name, plugins registered
before deserializing, a plugin library that does not load, an engine from another GPU or TensorRT, a feed outside
every profile, the inspector given the feed's shapes, profiles from the recipe's feeds, and bfloat16 I/O.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tests.fake_tensorrt import FakePolygraphy, FakeTensorRT
from trtmix.errors import BackendError
from trtmix.quant.builder import BuildKey
from trtmix.runtime import tensorrt as backend_module
from trtmix.runtime.tensorrt import BuildSettings, EngineMismatchError, TensorRTBackend, TensorRTRunner
from trtmix.runtime.trtexec import trtexec_lines


@pytest.fixture()
def trt(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    """The fakes installed, on a CPU torch that says it sees an H200."""
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", FakePolygraphy(fake))
    _on_gpu(monkeypatch, "NVIDIA H200", (9, 0))
    monkeypatch.setattr(torch.cuda, "Stream", lambda: types.SimpleNamespace(cuda_stream=7, synchronize=lambda: None))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(backend_module._ErrorLog, "_shared", None, raising=False)
    if hasattr(backend_module, "_runtime"):
        backend_module._runtime.cache_clear()
    yield fake
    if hasattr(backend_module, "_runtime"):
        backend_module._runtime.cache_clear()


def _on_gpu(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)


def _conv_graph(path: Path, dtype: int, batch: int | str = 1) -> Path:
    """One Conv on a ``dtype`` input [batch, 3, 8, 8]."""
    weight = helper.make_tensor("w", dtype, [4, 3, 3, 3], np.zeros(4 * 3 * 9, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"], name="/stem/Conv")], "g",
                              [helper.make_tensor_value_info("input", dtype, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", dtype, None)], [weight])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def _config(trt: FakeTensorRT) -> dict:
    return [call for call in trt.calls if call[0] == "CreateConfig"][-1][1]


def test_tf32_is_off_for_a_graph_computing_in_fp32(trt, tmp_path) -> None:
    fp32, fp16 = _conv_graph(tmp_path / "fp32.onnx", TensorProto.FLOAT), _conv_graph(tmp_path / "fp16.onnx",
                                                                                     TensorProto.FLOAT16)  # fmt: skip
    backend = TensorRTBackend(BuildSettings(timing_cache=tmp_path / "timing.cache"))
    backend.build(fp32, tmp_path / "fp32.engine")
    assert _config(trt)["tf32"] is False, "a unit planned FP32 must not run TF32"
    backend.build(fp16, tmp_path / "fp16.engine")
    assert _config(trt)["tf32"] is True, "TF32 stays allowed where nothing computes in float32"
    TensorRTBackend(BuildSettings(tf32=False)).build(fp16, tmp_path / "off.engine")
    assert _config(trt)["tf32"] is False
    lines = trtexec_lines("m.onnx", "m.engine", "t.cache", {"tf32": True}, fp32_layers=True)
    assert lines.count("--noTF32") == 2


def test_every_artifact_key_and_timing_cache_names_the_device(trt, monkeypatch, tmp_path) -> None:
    graph = _conv_graph(tmp_path / "g.onnx", TensorProto.FLOAT16)
    backend = TensorRTBackend(BuildSettings(timing_cache=tmp_path / "timing.cache"))
    h200 = backend.options()
    assert h200["device"] == {"gpu": "NVIDIA H200", "compute_capability": "9.0", "cuda": str(torch.version.cuda),
                              "tensorrt": "10.13.0.35"}  # fmt: skip
    backend.build(graph, tmp_path / "a.engine")
    _on_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    a100 = backend.options()
    backend.build(graph, tmp_path / "b.engine")
    keys = [BuildKey("m", "r", "p", {}, "tensorrt", "10.13.0.35", options).digest() for options in (h200, a100)]
    assert keys[0] != keys[1], "an engine built for one GPU is never served to another"
    caches = [call[1] for call in trt.calls if call[0] == "EngineBytesFromNetwork"]
    assert len(set(caches)) == 2 and all(Path(cache).parent == tmp_path for cache in caches)


def test_plugins_are_registered_before_deserializing(trt, tmp_path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    TensorRTBackend().engine_information(engine)
    names = [call[0] for call in trt.calls]
    assert "init_libnvinfer_plugins" in names and names.index("init_libnvinfer_plugins") < names.index("deserialize")


def test_a_plugin_library_that_does_not_load_is_named(trt, tmp_path) -> None:
    graph = _conv_graph(tmp_path / "g.onnx", TensorProto.FLOAT16)
    backend = TensorRTBackend(BuildSettings(plugins=(str(tmp_path / "libmissing_plugin.so"),)))
    with pytest.raises(BackendError, match="plugin library .*libmissing_plugin.so did not load") as caught:
        backend.build(graph, tmp_path / "m.engine")
    assert "Fix:" in str(caught.value)


def test_an_engine_from_another_gpu_is_refused_saying_why(trt, monkeypatch, tmp_path) -> None:
    graph = _conv_graph(tmp_path / "g.onnx", TensorProto.FLOAT16)
    backend = TensorRTBackend()
    engine = backend.build(graph, tmp_path / "m.engine")
    _on_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    with pytest.raises(EngineMismatchError, match="NVIDIA H200.*NVIDIA A100") as caught:
        backend.engine_information(engine)
    assert "rebuild" in str(caught.value) and ("deserialize",) not in trt.calls, "refused before TensorRT reads it"


def test_an_engine_tensorrt_refuses_as_foreign_says_so(trt, tmp_path) -> None:
    engine = tmp_path / "copied.engine"
    engine.write_bytes(b"engine")  # no record of where it was built: TensorRT's own message decides
    trt.refuse = ("IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (The engine plan file is generated "
                  "on an incompatible device, expecting compute 8.0 got compute 9.0, please rebuild.)")  # fmt: skip
    with pytest.raises(EngineMismatchError, match="another GPU or TensorRT version.*expecting compute 8.0"):
        TensorRTBackend().engine_information(engine)
    trt.refuse = "Serialization assertion failed: magic tag does not match"
    with pytest.raises(BackendError, match="could not deserialize .*magic tag"):
        TensorRTBackend().engine_information(engine)


def test_a_missing_plugin_is_not_called_a_foreign_engine(trt, tmp_path) -> None:
    """TensorRT's missing-plugin message names a version too; it must still say plugin, not 'another GPU'."""
    engine = tmp_path / "plugin.engine"
    engine.write_bytes(b"engine")
    trt.refuse = "getPluginCreator could not find plugin: CustomGeluPluginDynamic version: 1"
    with pytest.raises(BackendError, match="a plugin it uses is not registered") as caught:
        TensorRTBackend().engine_information(engine)
    assert not isinstance(caught.value, EngineMismatchError) and "BuildSettings.plugins" in str(caught.value)


def test_the_builder_rebuilds_an_engine_built_for_another_gpu(trt, monkeypatch, tmp_path, calibrated) -> None:
    """Keys name the driver's device; an engine a worker built on another GPU model is rebuilt, not refused."""
    from trtmix.ir.units import find_units
    from trtmix.quant.builder import Builder
    from trtmix.quant.plan import PrecisionPlan

    model, ranges = calibrated["convnet"]
    builder = Builder(model, find_units(model), ranges, "tensorrt", TensorRTBackend(), tmp_path)
    built = builder.build(PrecisionPlan())
    builds = sum(call[0] == "EngineBytesFromNetwork" for call in trt.calls)
    record = backend_module.identity_path(built.artifact)
    record.write_text(record.read_text().replace("NVIDIA H200", "NVIDIA A100-SXM4-80GB"))  # built elsewhere
    again = Builder(model, find_units(model), ranges, "tensorrt", TensorRTBackend(), tmp_path).build(PrecisionPlan())
    assert again.artifact == built.artifact
    assert sum(call[0] == "EngineBytesFromNetwork" for call in trt.calls) == builds + 1, "rebuilt here"
    assert "NVIDIA H200" in record.read_text()


def test_a_feed_outside_every_profile_gives_the_trt_shapes_line(trt, tmp_path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    feeds = {"input": np.zeros((16, 3, 8, 8), np.float32)}
    line = "--trt-shapes input:1x3x8x8:2x3x8x8:16x3x8x8"
    with pytest.raises(BackendError, match="outside the engine's optimisation profile") as caught:
        TensorRTBackend().engine_information(engine, feeds)  # the inspector path checks set_input_shape too
    assert line in str(caught.value)
    with pytest.raises(BackendError, match="outside the engine's optimisation profile") as caught:
        TensorRTRunner(engine).infer(feeds)
    assert line in str(caught.value)


def test_the_inspector_reads_a_context_set_to_the_feeds_shapes(trt, tmp_path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    TensorRTBackend().engine_layers(engine, {"input": np.zeros((3, 3, 8, 8), np.float32)})
    assert ("set_input_shape", "input", (3, 3, 8, 8)) in trt.calls and ("inspect", True) in trt.calls


def test_dynamic_inputs_without_trt_shapes_take_profiles_from_the_feeds(trt, tmp_path, caplog) -> None:
    graph = _conv_graph(tmp_path / "g.onnx", TensorProto.FLOAT16, batch="batch")
    backend = TensorRTBackend()
    feeds = [{"input": np.zeros((batch, 3, 8, 8), np.float16)} for batch in (8, 2, 16)]
    profiles = backend.cover_feeds(onnx.load(str(graph)), feeds)
    assert profiles == {"input": ((2, 3, 8, 8), (8, 3, 8, 8), (16, 3, 8, 8))}
    assert "--trt-shapes input:2x3x8x8:8x3x8x8:16x3x8x8" in caplog.text
    backend.build(graph, tmp_path / "m.engine")
    assert _config(trt)["profiles"] == [{"input": ((2, 3, 8, 8), (8, 3, 8, 8), (16, 3, 8, 8))}]
    given = TensorRTBackend(BuildSettings(profiles={"input": ((1, 3, 8, 8), (4, 3, 8, 8), (32, 3, 8, 8))}))
    assert given.cover_feeds(onnx.load(str(graph)), feeds)["input"][2] == (32, 3, 8, 8), "--trt-shapes wins"


def test_bfloat16_inputs_and_outputs_round_trip(trt, monkeypatch, tmp_path) -> None:
    trt.dtypes = {"input": "bfloat16", "output": "bfloat16"}
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda shape, dtype, device: real_empty(shape, dtype=dtype))
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    feed = np.full((2, 3, 8, 8), 1.5, ml_dtypes.bfloat16)
    (output,) = TensorRTRunner(engine).infer({"input": feed})
    assert output.dtype == ml_dtypes.bfloat16 and output.shape == (2, 3, 8, 8)
    assert ("execute_async_v3", 7) in trt.calls
    trt.dtypes = {"input": "fp8", "output": "float32"}
    with pytest.raises(BackendError, match="'input' has type fp8"):
        TensorRTRunner(engine).infer({"input": feed})


class _RecordingBackend:
    """What ``trtmix build --backend tensorrt`` asks of the backend: the feeds it covers and inspects with."""

    name, version, device = "tensorrt", "10.13.0.35", "gpu"

    def __init__(self) -> None:
        self.covered: list = []
        self.inspected: list = []

    def build(self, onnx_path: Path, artifact: Path) -> Path:
        artifact.write_bytes(b"engine")
        return artifact

    def cover_feeds(self, model: onnx.ModelProto, feeds: list) -> dict:
        self.covered.extend(feeds)
        return {}

    def engine_information(self, artifact: Path, feeds: dict | None = None) -> dict:
        self.inspected.append(feeds)
        return {"Layers": []}


def test_build_verifies_the_engine_on_the_recipes_feed(exported, tmp_path, monkeypatch, capsys) -> None:
    from tests.conftest import TINY_RECIPE
    from trtmix import api
    from trtmix.cli import main

    recipe = tmp_path / "recipe.py"
    recipe.write_text(TINY_RECIPE)
    recorder = _RecordingBackend()
    monkeypatch.setattr(api, "get_backend", lambda *args, **kwargs: recorder)
    model = str(exported[("convnet", "dynamo")])
    assert main(["build", model, "--plan", "fp16", "--backend", "tensorrt", "--data", str(recipe), "-o",
                 str(tmp_path / "m.onnx"), "--artifact", str(tmp_path / "m.engine")]) == 0  # fmt: skip
    (feeds,) = recorder.inspected
    assert feeds is not None and set(feeds) == {i.name for i in onnx.load(model).graph.input}
    assert recorder.covered and recorder.covered[0] is feeds, "the same feed sets the dynamic profiles"
    assert main(["build", model, "--plan", "fp16", "--backend", "tensorrt", "-o", str(tmp_path / "n.onnx"),
                 "--artifact", str(tmp_path / "n.engine")]) == 0  # fmt: skip
    assert recorder.inspected[-1] is None and "inspected without input shapes" in capsys.readouterr().out


def test_a_matmul_with_one_float32_side_counts_as_fp32(tmp_path) -> None:
    """INT8 needs both sides quantized: a MatMul with one DQ input and one float32 activation runs in float32."""
    from trtmix.runtime.trtexec import fp32_compute

    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    codes = helper.make_tensor("q", TensorProto.INT8, [4, 4], [1] * 16)
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["w"], name="dq_w"),
             helper.make_node("DequantizeLinear", ["xq", "s"], ["xd"], name="dq_x"),
             helper.make_node("MatMul", ["a", "w"], ["one_side"], name="one_side"),
             helper.make_node("MatMul", ["xd", "b"], ["other_side"], name="other_side"),
             helper.make_node("MatMul", ["xd", "w"], ["both"], name="both_sides")]  # fmt: skip
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 4]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 4]),
              helper.make_tensor_value_info("xq", TensorProto.INT8, [2, 4])]  # fmt: skip
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 4])
               for name in ("one_side", "other_side", "both")]  # fmt: skip
    graph = helper.make_graph(nodes, "g", inputs, outputs, [scale, codes])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    assert fp32_compute(path) == ["one_side", "other_side"]
