"""The structure issue's fixes: complete build keys, trusted exports, versioned caches, flavours, one runner layer."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.conftest import batches_for
from trtmix import registry
from trtmix.calibration import calibrate as calibrate_module
from trtmix.calibration.calibrate import CalibrationConfig, calibrate_cached, calibrate_max, tensors_to_calibrate
from trtmix.cli import build_parser, main
from trtmix.errors import CompileError
from trtmix.export import export_once
from trtmix.ir.graph import load_onnx
from trtmix.ir.units import find_units
from trtmix.quant.builder import Builder
from trtmix.quant.flavours import FLAVOURS, get_flavour
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.rules import tensorrt_issues
from trtmix.runtime.cpu import cpu_features
from trtmix.runtime.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeRunner

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(4):
        yield {"input": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
"""
FACTORY = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
    def forward(self, pixels):
        return torch.relu(self.conv(pixels)).mean(dim=(2, 3))
def build():
    torch.manual_seed(SEED)
    return Net(), (torch.randn(2, 3, 8, 8),)
"""


@pytest.fixture()
def recipe(tmp_path):
    path = tmp_path / "recipe.py"
    path.write_text(RECIPE)
    return str(path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "trtmix.cli", *args], capture_output=True, text=True, timeout=300)


def _calibrated(exported, name="convnet"):
    model = load_onnx(exported[(name, "dynamo")])
    units = find_units(model)
    ranges = calibrate_max(model, batches_for(name, 2, seed=1), tensors_to_calibrate(model, units), progress=False)
    return model, units, ranges


def test_fresh_after_a_calibration_change_rebuilds(recipe, tmp_path):
    output = tmp_path / "out"
    base = ["-q", "compile", "trtmix.models.tiny:convnet", "--data", recipe, "--metric", "cosine", "-o", str(output),
            "--runs", "2", "--max-drop", "50%", "--flavour", "ort-cpu"]  # fmt: skip
    assert main(base) == 0
    report = json.loads((output / "report.json").read_text())
    all_int8 = PrecisionPlan.with_int8(u["name"] for u in report["units"]).stable_hash()

    def int8_graph():  # the all-INT8 probe's compiled ONNX: the search measures it first, every run
        files = (output / "artifacts").glob(f"{all_int8}.ort-cpu.*.onnx")
        compiled = [path for path in files if path.suffixes[-2] != ".onnxruntime"]
        assert len(compiled) == 1
        return compiled[0].read_bytes()

    first = int8_graph()
    artifacts = (output / "artifacts").iterdir()
    first_artifacts = {p.name for p in artifacts if p.is_file() and not p.name.startswith("float.")}
    assert main([*base, "--calibration-method", "percentile", "--percentile", "90", "--fresh"]) == 0
    report = json.loads((output / "report.json").read_text())
    assert report["builds"] > 0 and report["resumed_probes"] == 0  # measured again, not replayed
    assert int8_graph() != first  # the new ranges are in the graph
    assert first_artifacts and first_artifacts.isdisjoint(p.name for p in (output / "artifacts").iterdir())


def test_changed_settings_without_fresh_are_refused(recipe, tmp_path, capsys):
    output = tmp_path / "out"
    base = ["-q", "compile", "trtmix.models.tiny:convnet", "--data", recipe, "--metric", "cosine", "-o", str(output),
            "--runs", "2", "--max-drop", "50%"]  # fmt: skip
    assert main(base) == 0
    assert main([*base, "--warmup", "5"]) == 2
    assert "belongs to a run with other settings" in capsys.readouterr().err


def test_build_keys_cover_ranges_flavour_and_backend_settings(exported, tmp_path):
    model, units, ranges = _calibrated(exported)
    plan = PrecisionPlan.with_int8(u.name for u in units)
    tensors = tensors_to_calibrate(model, units)
    clipped = calibrate_max(model, batches_for("convnet", 2, seed=7), tensors, progress=False)

    def artifact(ranges_, flavour, threads):
        return Builder(model, units, ranges_, flavour, OnnxRuntimeBackend(threads), tmp_path).paths(plan)[1]

    reference = artifact(ranges, "ort-cpu", 1)
    assert artifact(ranges, "ort-cpu", 1) == reference
    for other in (artifact(clipped, "ort-cpu", 1), artifact(ranges, "tensorrt", 1), artifact(ranges, "ort-cpu", 2)):
        assert other != reference
    built = Builder(model, units, ranges, "ort-cpu", OnnxRuntimeBackend(1), tmp_path).build(plan)
    assert built.artifact == reference and built.artifact.is_file() and built.onnx_path.is_file()


def test_export_once_reexports_when_the_factory_or_settings_change(tmp_path):
    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY.replace("SEED", "0"))
    path = tmp_path / "model.onnx"
    spec = f"{factory}:build"
    export_once(spec, path)
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["pixels"]  # named after forward(self, pixels)
    first, first_time = path.read_bytes(), path.stat().st_mtime_ns
    export_once(spec, path)
    assert path.stat().st_mtime_ns == first_time  # same stamp: reused
    factory.write_text(FACTORY.replace("SEED", "1"))
    export_once(spec, path)
    assert path.read_bytes() != first  # the factory's file changed: new weights exported
    export_once(spec, path, input_names=["image"])
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["image"]  # --input-names wins


def test_incompatible_backend_and_flavour_exit_before_exporting(recipe, tmp_path):
    output = tmp_path / "out"
    result = _cli("compile", "trtmix.models.tiny:convnet", "--data", recipe, "--backend", "tensorrt",
                  "--flavour", "ort-cpu", "-o", str(output))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ort-cpu flavour cannot run on the tensorrt backend" in result.stderr
    assert "--flavour tensorrt" in result.stderr
    assert not (output / "model.onnx").exists()
    model = str(tmp_path / "m.onnx")
    build = _cli("build", model, "--plan", "fp16", "--flavour", "ort-cpu", "--backend", "tensorrt", "-o", model)
    assert build.returncode == 2 and "cannot run on the tensorrt backend" in build.stderr


def test_calibration_cache_key_carries_a_format_version(exported, tmp_path, monkeypatch):
    model = load_onnx(exported[("convnet", "dynamo")])
    units = find_units(model)
    calls = []

    def load():
        calls.append(1)
        return batches_for("convnet", 2, seed=1)

    config = CalibrationConfig(batches=2)
    calibrate_cached(model, units, "spec", load, "calibration", config, tmp_path, progress=False)
    calibrate_cached(model, units, "spec", load, "calibration", config, tmp_path, progress=False)
    assert len(calls) == 1  # a hit
    monkeypatch.setattr(calibrate_module, "CACHE_FORMAT", calibrate_module.CACHE_FORMAT + 1)
    calibrate_cached(model, units, "spec", load, "calibration", config, tmp_path, progress=False)
    assert len(calls) == 2  # a fix bumps the version: the old cache is not served


def _tampered(exported, plan_of_units, edit):
    model, units, ranges = _calibrated(exported)
    plan = plan_of_units(units)
    graph = Builder(model, units, ranges, "tensorrt").compile(plan)
    edit(graph)
    return tensorrt_issues(graph, units, plan)


def test_tensorrt_rules_reject_broken_qdq(exported):
    all_int8 = lambda units: PrecisionPlan.with_int8(u.name for u in units)  # noqa: E731

    def scale_from_a_node(graph):
        q = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear")
        graph.graph.node.insert(0, helper.make_node("Identity", [q.input[1]], ["computed_scale"], name="scale_op"))
        q.input[1] = "computed_scale"

    assert any("the scale must be a constant" in i for i in _tampered(exported, all_int8, scale_from_a_node))

    def q_into_a_relu(graph):
        q = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear" and not n.input[0].endswith("_float"))
        graph.graph.node.append(helper.make_node("Relu", [q.output[0]], ["stray"], name="stray_relu"))

    assert any("must feed DequantizeLinear only" in i for i in _tampered(exported, all_int8, q_into_a_relu))

    model, units, ranges = _calibrated(exported)
    first_int8 = Builder(model, units, ranges, "tensorrt").compile(PrecisionPlan.with_int8([units[0].name]))
    claimed_fp16 = tensorrt_issues(first_int8, units, PrecisionPlan())
    assert any(f"unit {units[0].name!r} is planned fp16 but its weight is quantized" in i for i in claimed_fp16)

    def too_few_scales(graph):
        dq = next(n for n in graph.graph.node if n.op_type == "DequantizeLinear" and "/weight" in n.name)
        for init in graph.graph.initializer:
            if init.name == dq.input[1]:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:-1], init.name))
            if init.name == dq.input[2]:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:-1], init.name))

    assert any(
        "weight scales for" in i and "output channels" in i for i in _tampered(exported, all_int8, too_few_scales)
    )


@pytest.mark.parametrize("name", ["convnet", "transformer"])
def test_every_flavour_accepts_what_it_compiles(exported, name):
    model, units, ranges = _calibrated(exported, name)
    ends = {units[0].name: Precision.INT8, units[-1].name: Precision.INT8}
    plans = [PrecisionPlan(), PrecisionPlan.with_int8(u.name for u in units), PrecisionPlan(Precision.FP16, ends)]
    for flavour in FLAVOURS.values():
        for plan in plans:
            compiled = Builder(model, units, ranges, flavour).compile(plan, check=False)
            assert flavour.issues(compiled, units, plan) == [], (flavour.name, plan)


def test_ort_cpu_rules_reject_full_range_weights(exported):
    model, units, ranges = _calibrated(exported)
    plan = PrecisionPlan.with_int8(u.name for u in units)
    seven_bit = get_flavour("ort-cpu", weight_bits=7)
    graph = Builder(model, units, ranges, seven_bit).compile(plan)
    weight = next(i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1)
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = 127
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    assert any("int8 weights exceed ±63" in i for i in seven_bit.issues(graph, units, plan))
    assert not any("exceed" in i for i in get_flavour("ort-cpu", weight_bits=8).issues(graph, units, plan))


def test_flavour_objects_own_their_settings():
    tensorrt, ort = get_flavour("tensorrt"), get_flavour("ort-cpu")
    assert (tensorrt.opset, tensorrt.symmetric, tensorrt.float_base, tensorrt.weight_levels) == (
        19, True, Precision.FP16, 127)  # fmt: skip
    assert (ort.opset, ort.symmetric, ort.float_base) == (13, False, Precision.FP32)
    assert ort.weight_levels == (127 if cpu_features().int8_exact else 63)  # 8-bit weights only with VNNI or AMX
    assert get_flavour("ort-cpu", weight_bits=7).weight_levels == 63
    tensorrt.check_backend("onnxruntime")
    with pytest.raises(CompileError, match="cannot run on the tensorrt backend"):
        ort.check_backend("tensorrt")
    with pytest.raises(CompileError, match="Unknown flavour"):
        get_flavour("tflite")


def test_registry_feeds_every_choice_and_the_method_alias(capsys):
    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    tables = {"--flavour": registry.FLAVOURS, "--backend": registry.BACKENDS, "--metric": registry.METRICS,
              "--ordering": registry.ORDERINGS, "--calibration-method": registry.CALIBRATION_METHODS,
              "--exporter": registry.EXPORTERS, "--weights": registry.WEIGHT_METHODS}  # fmt: skip
    seen = set()
    for sub in subcommands.values():
        for action in sub._actions:
            for flag in set(action.option_strings) & set(tables):
                if flag == "--metric" and action.choices is None:  # compile's also takes FILE.py:FUNCTION
                    assert all(name in action.help for name in tables[flag]) and "FILE.py:FUNCTION" in action.metavar
                else:
                    assert tuple(action.choices) == tuple(tables[flag]), flag
                seen.add(flag)
    assert seen == set(tables)
    args = build_parser().parse_args(["calibrate", "m.onnx", "--method", "entropy", "-o", "r.json"])
    assert args.calibration_method == "entropy"
    assert "--method is deprecated" in capsys.readouterr().err


def test_every_onnx_runtime_session_comes_from_the_one_factory():
    for path in (ROOT / "trtmix").rglob("*.py"):
        text = path.read_text()
        if path.name != "onnxruntime.py":
            assert not re.search(r"InferenceSession\(", text), path


def test_runner_infers_and_times(exported):
    path = exported[("convnet", "dynamo")]
    feed = batches_for("convnet", 1, seed=3)[0]
    with OnnxRuntimeRunner(path, threads=1) as runner:
        first, again = runner.infer(feed)[0], runner.infer(feed)[0]
        stats = runner.time(feed, runs=3, warmup=1)
    np.testing.assert_array_equal(first, again)
    assert stats.runs == 3 and stats.threads == 1 and stats.median_ms > 0
