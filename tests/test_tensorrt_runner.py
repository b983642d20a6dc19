"""The TensorRT runner's fixes that can be checked without TensorRT: inspector JSON of TensorRT 10 and 11, local
functions, split layers, the trtexec line per version, the version gate and the TF32 default."""

import json
import shlex
from pathlib import Path

import onnx
import pytest

from trtmix.cli import main
from trtmix.errors import BackendUnavailableError
from trtmix.ir.units import find_units
from trtmix.job.engine_check import check_plan, mismatches
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.runtime.engine_report import engine_layers
from trtmix.runtime.tensorrt import BuildSettings, check_version
from trtmix.runtime.trtexec import trtexec_command, trtexec_lines

FIXTURES = Path(__file__).parent / "fixtures"
PLAN = PrecisionPlan(Precision.FP16, {"/stem/Conv": Precision.INT8, "/block_conv2/Conv": Precision.INT8,
                                      "/fc/Gemm": Precision.INT8})  # fmt: skip


def _fixture(name):
    return json.loads((FIXTURES / name).read_text())


def _as_trt10(information):
    """The same engine in TensorRT 10's layout: one 'Format/Datatype' text per tensor."""
    for layer in information["Layers"]:
        for tensor in layer["Inputs"]:
            tensor["Format/Datatype"] = f"{tensor.pop('Format')} {tensor.pop('Datatype')}"
    return information


@pytest.mark.parametrize("layout", ["trt11", "trt10"])
def test_inspector_json_of_both_versions_verifies_the_plan(exported, layout):
    information = _fixture("engine_info_trt11.json")
    if layout == "trt10":
        information = _as_trt10(information)
    units = find_units(onnx.load(str(exported[("convnet", "dynamo")])))
    checks = {c.unit: c for c in check_plan(information, units, PLAN)}
    assert not mismatches(list(checks.values())), checks
    assert checks["/stem/Conv"].engine == "int8" and checks["/block_conv1/Conv"].engine == "fp16"


def test_local_function_suffix_is_not_part_of_the_node_name():
    stem = engine_layers(_fixture("engine_info_trt11.json"))[0]
    assert stem.onnx_nodes == ("/stem/Conv", "/Relu")


def test_a_split_gemm_is_decided_by_its_matmul_layer(exported):
    units = find_units(onnx.load(str(exported[("convnet", "dynamo")])))
    gemm = next(c for c in check_plan(_fixture("engine_info_trt11.json"), units, PLAN) if c.unit == "/fc/Gemm")
    assert gemm.engine == "int8" and gemm.layer == "/fc/Gemm matmul"  # not the float bias add listed last


def test_the_compute_layer_decides_whatever_the_layer_order(exported):
    """Reversed, the bias add comes first: the matmul layer must still decide (not the first layer naming the node)."""
    information = _fixture("engine_info_trt11.json")
    information["Layers"].reverse()
    units = find_units(onnx.load(str(exported[("convnet", "dynamo")])))
    gemm = next(c for c in check_plan(information, units, PLAN) if c.unit == "/fc/Gemm")
    assert gemm.engine == "int8" and gemm.layer == "/fc/Gemm matmul"


def test_trtexec_11_turns_cuda_graphs_off_with_its_own_flag():
    """TensorRT 11's trtexec captures CUDA graphs by default; ``--noCudaGraph`` (new in 11) turns them off."""
    assert "--noCudaGraph" in shlex.split(trtexec_command("m.onnx", "m.engine", major=11, cuda_graph=False))
    assert "--noCudaGraph" not in trtexec_command("m.onnx", "m.engine", major=11)
    assert "--noCudaGraph" not in trtexec_command("m.onnx", "m.engine", major=10, cuda_graph=False)
    assert trtexec_lines("m.onnx", "m.engine", "t.cache", {"cuda_graph": False}).count("--noCudaGraph") == 1


def test_trtexec_line_per_version():
    shapes = {"input": ("1x3x224x224", "8x3x224x224", "32x3x224x224")}
    old = shlex.split(trtexec_command("m.onnx", "m.engine", "t.cache", shapes, major=10, workspace_mb=2048,
                                      optimization_level=4, tf32=False))  # fmt: skip
    new = shlex.split(trtexec_command("m.onnx", "m.engine", "t.cache", shapes, major=11, workspace_mb=2048,
                                      optimization_level=4, tf32=False))  # fmt: skip
    deprecated = {"--stronglyTyped", "--useCudaGraph", "--noDataTransfers"}
    assert deprecated <= set(old) and not deprecated & set(new)
    for parts in (old, new):
        assert {"--profilingVerbosity=detailed", "--memPoolSize=workspace:2048M", "--builderOptimizationLevel=4",
                "--noTF32", "--optShapes=input:8x3x224x224", "--timingCacheFile=t.cache"} <= set(parts)  # fmt: skip
    assert "--noTF32" not in trtexec_command("m.onnx", "m.engine")  # TF32 allowed by default, as TensorRT does


def test_trtexec_lines_carry_the_jobs_settings():
    settings = {"profiles": {"input": [[1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]]}, "workspace_mb": 512,
                "optimization_level": None, "tf32": True}  # fmt: skip
    text = trtexec_lines("chosen.tensorrt.onnx", "chosen.engine", "timing.cache", settings)
    assert "# TensorRT 10" in text and "# TensorRT 11" in text
    assert text.count("--maxShapes=input:4x3x8x8") == 2 and text.count("--memPoolSize=workspace:512M") == 2


def test_trtexec_cmd_cli_per_version(capsys):
    assert main(["trtexec-cmd", "m.onnx", "--tensorrt-major", "11", "--no-tf32"]) == 0
    line = capsys.readouterr().out
    assert "--stronglyTyped" not in line and "--noTF32" in line


@pytest.mark.parametrize(("version", "accepted"), [("8.6.1", False), ("9.3.0.1", False), ("unknown", False),
                                                   ("10.13.0.35", True), ("11.4.0", True)])  # fmt: skip
def test_version_gate(version, accepted):
    if accepted:
        check_version(version)
    else:
        with pytest.raises(BackendUnavailableError, match="TensorRT 10 or newer"):
            check_version(version)


def test_tf32_is_on_by_default_and_off_with_the_flag():
    from trtmix.cli import build_parser
    from trtmix.data.feeds import tensorrt_settings

    assert BuildSettings().tf32 is True
    on = build_parser().parse_args(["build", "m.onnx", "--plan", "int8", "-o", "o.onnx"])
    off = build_parser().parse_args(["build", "m.onnx", "--plan", "int8", "-o", "o.onnx", "--no-tf32"])
    assert tensorrt_settings(on)["tf32"] is True and tensorrt_settings(off)["tf32"] is False
