"""OpenVINO builds, times and verifies the tensorrt-flavour graph; its outputs match ONNX Runtime's on that graph."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.conftest import batches_for
from trtmix.calibration.calibrate import calibrate_max, tensors_to_calibrate
from trtmix.cli import main
from trtmix.errors import BackendError
from trtmix.evaluate import cosine
from trtmix.ir.graph import GraphIndex, load_onnx
from trtmix.ir.units import find_units
from trtmix.job import pipeline as pipeline_module
from trtmix.job.engine_check import check_layers
from trtmix.quant.builder import Builder
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime import get_backend, resolve_backend
from trtmix.runtime.base import LatencyStats
from trtmix.runtime.cpu import cpu_features
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner
from trtmix.runtime.openvino import OpenVinoBackend

RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(4):
        yield {"input": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
"""


def _plans(units):
    return {"all-int8": PrecisionPlan.with_int8(u.name for u in units),
            "mixed": PrecisionPlan.with_int8([u.name for u in units[::2]])}  # fmt: skip


@pytest.mark.parametrize("name", ["convnet", "transformer"])
def test_openvino_matches_onnxruntime_and_runs_int8_units_in_int8(exported, tmp_path, name):
    model = load_onnx(exported[(name, "dynamo")])
    units = find_units(model)
    feeds = batches_for(name, 3, seed=1)
    ranges = calibrate_max(model, feeds, tensors_to_calibrate(model, units), progress=False)
    backend = OpenVinoBackend(threads=1, cache_dir=tmp_path / "cache")  # verification must not read the cache
    consumers = {t: [n.name for n in nodes] for t, nodes in GraphIndex(model).consumers.items()}
    for label, plan in _plans(units).items():
        built = Builder(model, units, ranges, "tensorrt", backend, tmp_path).build(plan)
        test_feed = batches_for(name, 1, seed=9)[0]
        with backend.open(built.artifact) as runner:
            openvino = runner.infer(test_feed)[0]
            stats = runner.time(test_feed, runs=3, warmup=1)
        onnxruntime = OnnxRuntimeRunner(built.onnx_path, threads=1).infer(test_feed)[0]
        rows = len(openvino)
        similarity = cosine(openvino.reshape(rows, -1), onnxruntime.reshape(rows, -1))
        assert similarity.min() >= 0.999, (label, similarity)
        assert stats.settings["inference_precision"] == backend.precision and stats.median_ms > 0
        checks = check_layers(backend.engine_layers(built.artifact, test_feed), units, plan, False, consumers)
        for check in checks:
            if check.planned == "int8":
                assert check.engine == "int8", (label, check)
            assert check.matches, (label, check)
        assert any(c.ms is not None and c.primitive for c in checks)  # profiled: kernel and time per layer


def test_auto_backend_picks_openvino_for_the_tensorrt_flavour():
    assert resolve_backend("auto", "tensorrt") == "openvino"  # no TensorRT on this machine
    assert resolve_backend("auto", "ort-cpu") == "onnxruntime"
    assert resolve_backend("onnxruntime", "tensorrt") == "onnxruntime"
    assert get_backend("auto", flavour="tensorrt").name == "openvino"


def test_timing_precision_follows_the_cpu():
    expected = "bf16" if cpu_features().native_16bit else "f32"
    assert OpenVinoBackend().precision == expected


def test_a_graph_openvino_cannot_compile_is_one_clear_error(tmp_path):
    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="my_custom_node", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])  # fmt: skip
    path = tmp_path / "bad.onnx"
    opsets = [helper.make_opsetid("", 19), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    with pytest.raises(BackendError, match="OpenVINO cannot compile bad.onnx") as caught:
        OpenVinoBackend().build(path, tmp_path / "out.onnx")
    assert "No conversion rule found for operations: com.example.NoSuchOp" in str(caught.value)
    assert "src/" not in str(caught.value)
    assert not (tmp_path / "out.onnx").exists()


@pytest.fixture()
def recipe(tmp_path):
    path = tmp_path / "recipe.py"
    path.write_text(RECIPE)
    return str(path)


def test_compile_defaults_to_the_tensorrt_flavour_on_openvino(recipe, tmp_path, capsys):
    output = tmp_path / "out"
    args = ["-q", "compile", "trtmix.models.tiny:convnet", "--data", recipe, "--metric", "cosine", "-o", str(output),
            "--runs", "3", "--max-drop", "0.5%"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "engine: openvino" in printed and "INT8 units verified int8 by the engine" in printed
    report = json.loads((output / "report.json").read_text())
    assert (report["backend"], report["flavour"], report["relative_to"]) == ("openvino", "tensorrt", "high")
    baseline = report["baseline"]
    assert baseline["latency"] == baseline["all_high"]["latency"] and baseline["fp32"]["latency"]["median_ms"] > 0
    assert baseline["fp32"]["latency"]["settings"]["inference_precision"] == "f32"  # FP32 is timed as FP32
    all_high = next(p for p in report["probes"] if p["k"] == 0)  # the all-high plan is the k = 0 probe itself
    assert all_high["latency"] == baseline["all_high"]["latency"]
    check = report["engine_check"]
    assert check["verified_int8"] == check["planned_int8"] == report["chosen_k"] and not check["mismatches"]
    all_int8 = next(p for p in report["probes"] if p["k"] == report["unit_count"])  # the search's first probe
    assert all_int8["verified_int8"] == all_int8["planned_int8"] == report["unit_count"] > 0, all_int8
    assert not all_int8["precision_mismatches"]
    assert (output / "chosen.tensorrt.onnx").is_file() and (output / "chosen.tensorrt.openvino.onnx").is_file()
    assert "engine runs" in (output / "report.html").read_text()


class ScriptedLatency(OpenVinoBackend):
    """OpenVINO, but ``time`` says 1 ms / (1 + the graph's QuantizeLinear nodes): more INT8 is always faster."""

    def at_precision(self, precision):
        return self  # the FP32 graph is timed by script too

    def time(self, artifact, feeds, runs=20, warmup=3, policy=None):
        quantizers = sum(node.op_type == "QuantizeLinear" for node in onnx.load(str(artifact)).graph.node)
        return LatencyStats.from_samples([1.0 / (1 + quantizers)] * 5, warmup=0, threads=self.threads,
                                         provider="scripted", device="scripted")  # fmt: skip


def test_compile_ships_int8_units_the_engine_verified(recipe, tmp_path, capsys, monkeypatch):
    """The chosen plan has INT8 units, and the engine's own report shows each of them running INT8.

    Real OpenVINO builds, scores and engine reports; only the latency is scripted (``ScriptedLatency``), so the job
    ships all-INT8 whatever else the machine runs. With real timings the tiny conv net often ships k=0 here, where
    "0 of 0 INT8 units verified" proves nothing.
    """
    monkeypatch.setattr(pipeline_module, "get_backend", lambda *args, **kwargs: ScriptedLatency(threads=1))
    output = tmp_path / "out"
    args = ["-q", "compile", "trtmix.models.tiny:convnet", "--data", recipe, "--metric", "cosine", "-o", str(output),
            "--runs", "3", "--max-drop", "5%", "--final-rounds", "0"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((output / "report.json").read_text())
    units = report["unit_count"]
    assert report["chosen_k"] == units == 5, (report["stop_reason"], report["chosen"])
    assert f"{units} of {units} INT8 units verified int8 by the engine" in printed
    check = report["engine_check"]
    assert check["verified_int8"] == check["planned_int8"] == units, check
    assert not check["mismatches"] and not check["not_found"] and not check["unverifiable"], check
    assert len(check["units"]) == units
    for unit in check["units"].values():  # the engine's own precision and kernel for each planned INT8 unit
        assert unit["planned"] == unit["engine"] == "int8" and unit["verified"] and unit["primitive"], unit


def test_relative_to_fp32_and_openvino_on_the_ort_cpu_flavour(recipe, tmp_path, capsys):
    output = tmp_path / "out"
    args = ["-q", "compile", "trtmix.models.tiny:convnet", "--data", recipe, "--metric", "cosine", "-o", str(output),
            "--runs", "3", "--max-drop", "50%", "--backend", "openvino", "--flavour", "ort-cpu",
            "--relative-to", "fp32"]  # fmt: skip
    assert main(args) == 0
    assert "note: the ort-cpu flavour was made for onnxruntime" in capsys.readouterr().out
    report = json.loads((output / "report.json").read_text())
    assert report["relative_to"] == "fp32" and report["baseline"]["latency"] == report["baseline"]["fp32"]["latency"]
    assert report["flavour_note"].startswith("the ort-cpu flavour was made for onnxruntime")


def test_unknown_backend_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "m.onnx", "--data", "r.py", "--backend", "tflite"])
    err = capsys.readouterr().err
    assert all(name in err for name in ("auto", "tensorrt", "openvino", "onnxruntime"))


def test_openvino_outputs_follow_graph_order(exported):
    path = exported[("convnet", "dynamo")]
    feed = batches_for("convnet", 1, seed=2)[0]
    outputs = OpenVinoBackend(threads=1).run(path, feed)
    np.testing.assert_allclose(outputs[0], OnnxRuntimeRunner(path, threads=1).infer(feed)[0], rtol=1e-4, atol=1e-4)


def test_the_model_cache_stays_under_its_budget_and_an_evicted_graph_still_compiles(exported, tmp_path):
    model = load_onnx(exported[("convnet", "dynamo")])
    units = find_units(model)
    feeds = batches_for("convnet", 2, seed=1)
    ranges = calibrate_max(model, feeds, tensors_to_calibrate(model, units), progress=False)
    unbounded = OpenVinoBackend(threads=1, cache_dir=tmp_path / "unbounded", cache_bytes=2**40)
    plans = [PrecisionPlan.with_int8(u.name for u in units[:count]) for count in range(len(units) + 1)]
    built = [Builder(model, units, ranges, "tensorrt", unbounded, tmp_path / "out").build(plan) for plan in plans]
    sizes = [blob.stat().st_size for blob in (tmp_path / "unbounded").glob("*.blob")]
    assert len(sizes) == len(plans)  # one blob per distinct graph: what grows without a budget

    budget = 2 * max(sizes)
    bounded = OpenVinoBackend(threads=1, cache_dir=tmp_path / "bounded", cache_bytes=budget)
    for item in built:
        bounded.compile(item.onnx_path, bounded.precision)
        blobs = list((tmp_path / "bounded").glob("*.blob"))
        assert sum(blob.stat().st_size for blob in blobs) <= budget and blobs
    feed = batches_for("convnet", 1, seed=9)[0]
    with bounded.open(built[0].artifact) as runner, unbounded.open(built[0].artifact) as reference:
        np.testing.assert_allclose(runner.infer(feed)[0], reference.infer(feed)[0], rtol=1e-5, atol=1e-5)
