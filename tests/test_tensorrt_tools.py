"""Everything around the TensorRT backend that runs without TensorRT: inspector parsing, plan verification,
the trtexec line, the tensorrt-flavour validator, and the clear error when TensorRT is missing."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtmix.ir.units import find_units
from trtmix.job.engine_check import check_plan, describe, mismatches, not_found
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.rules import tensorrt_issues as validate_tensorrt_graph
from trtmix.runtime.engine_report import datatype, engine_layers
from trtmix.runtime.trtexec import trtexec_command

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture(name):
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thirty-two wide channel vectorized row major Int8 format.", "int8"),
        ("Channel major FP16 format where channel % 8 == 0", "fp16"),
        ("Row major linear FP32 format", "fp32"),
        ("Half", "fp16"),
        ("Float", "fp32"),
        ("BFloat16", "bf16"),
        ("N/A due to dynamic shapes", "unknown"),
    ],
)
def test_datatype_strings(text, expected):
    assert datatype(text) == expected


def test_parser_skips_reformats_and_reads_fused_names():
    layers = engine_layers(_fixture("engine_info_fused_names.json"))
    assert [layer.kind for layer in layers].count("Reformat") == 0
    stem = next(layer for layer in layers if "/stem/Conv" in layer.onnx_nodes)
    assert stem.onnx_nodes == ("/stem/Conv", "/Relu") and stem.precision == "int8"


@pytest.mark.parametrize("fixture", ["engine_info_fused_names.json", "engine_info_metadata.json"])
def test_plan_verification_finds_exactly_the_mismatching_units(exported, fixture):
    units = find_units(onnx.load(str(exported[("convnet", "dynamo")])))
    plan = PrecisionPlan(Precision.FP16, {"/stem/Conv": Precision.INT8, "/block_conv2/Conv": Precision.INT8})
    checks = {c.unit: c for c in check_plan(_fixture(fixture), units, plan)}
    wrong = {c.unit for c in mismatches(list(checks.values()))}
    if fixture == "engine_info_fused_names.json":
        assert wrong == set()  # the engine runs the plan
    else:
        # In this engine block_conv2 runs in fp16 and down in fp32, against a plan of int8 and fp16.
        assert wrong == {"/block_conv2/Conv", "/down/Conv"}
        assert checks["/block_conv2/Conv"].engine == "fp16" and checks["/down/Conv"].engine == "fp32"
        assert "/down/Conv: planned fp16, engine runs fp32 (layer '__myl_Conv_3')" in describe(list(checks.values()))
    missing = check_plan({"Layers": []}, units, plan)
    assert all(c.engine == "unknown" for c in missing) and not mismatches(missing)  # not found is not a mismatch
    assert len(not_found(missing)) == len(units)


def test_trtexec_command():
    command = trtexec_command("chosen.tensorrt.onnx", "chosen.engine", "timing.cache",
                              {"input": ("1x3x224x224", "8x3x224x224", "32x3x224x224")})  # fmt: skip
    parts = shlex.split(command)
    assert parts[:4] == ["trtexec", "--onnx=chosen.tensorrt.onnx", "--stronglyTyped", "--saveEngine=chosen.engine"]
    assert "--timingCacheFile=timing.cache" in parts and "--useCudaGraph" in parts and "--noDataTransfers" in parts
    assert "--minShapes=input:1x3x224x224" in parts and "--maxShapes=input:32x3x224x224" in parts
    assert "--useCudaGraph" not in trtexec_command("m.onnx", "m.engine", cuda_graph=False)
    assert "--int8" not in command and "--fp16" not in command  # TensorRT 11 removed them; precision is in the graph


@pytest.mark.parametrize("name", ["convnet", "transformer"])
def test_validator_accepts_what_compile_writes(calibrated, name):
    model, ranges = calibrated[name]
    units = find_units(model)
    plans = [
        PrecisionPlan(),
        PrecisionPlan.with_int8(u.name for u in units),
        PrecisionPlan(
            Precision.FP16,
            {units[0].name: Precision.INT8, units[1].name: Precision.FP32, units[-1].name: Precision.INT8},
        ),
        PrecisionPlan.with_int8([units[1].name], default=Precision.FP32),
    ]
    for plan in plans:
        assert validate_tensorrt_graph(compile_plan(model, plan, ranges, "tensorrt"), units, plan) == []


def _compiled(calibrated, plan_of_units):
    model, ranges = calibrated["convnet"]
    units = find_units(model)
    plan = plan_of_units(units)
    return compile_plan(model, plan, ranges, "tensorrt"), units, plan


def _set_initializer(model, name, values):
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(values, name))
            return
    raise KeyError(name)


def test_validator_catches_broken_graphs(calibrated):
    graph, units, plan = _compiled(calibrated, lambda u: PrecisionPlan.with_int8(x.name for x in u))
    q = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear" and not n.input[0].endswith("_float"))
    _set_initializer(graph, q.input[2], np.array(3, np.int8))
    assert any("zero point must be 0" in i for i in validate_tensorrt_graph(graph, units, plan))
    _set_initializer(graph, q.input[2], np.array(0, np.uint8))
    assert any("signed int8" in i for i in validate_tensorrt_graph(graph, units, plan))

    graph, units, plan = _compiled(calibrated, lambda u: PrecisionPlan.with_int8([u[0].name]))
    claimed = PrecisionPlan.with_int8([units[0].name, units[2].name])
    assert any(
        "'/block_conv2/Conv' is planned INT8 but its input 0 has no Q/DQ" in i
        for i in validate_tensorrt_graph(graph, units, claimed)
    )

    graph, units, plan = _compiled(calibrated, lambda u: PrecisionPlan(Precision.FP16, {u[1].name: Precision.FP32}))
    issues = validate_tensorrt_graph(graph, units, PrecisionPlan())
    assert any("computes on float32" in i and "/block_conv1/Conv" in i for i in issues)

    graph, units, plan = _compiled(calibrated, lambda u: PrecisionPlan.with_int8([u[0].name]))
    weight_dq = next(
        n for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.name.startswith("/stem/Conv/weight")
    )
    for attribute in weight_dq.attribute:
        if attribute.name == "axis":
            attribute.i = 1
    assert any("not the output channels" in i for i in validate_tensorrt_graph(graph, units, plan))

    graph, units, plan = _compiled(calibrated, lambda u: PrecisionPlan.with_int8([u[0].name]))
    graph.opset_import[0].version = 13
    assert any("need opset 19" in i for i in validate_tensorrt_graph(graph, units, plan))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "trtmix.cli", *args], capture_output=True, text=True, timeout=300)


def test_missing_tensorrt_is_one_clear_error(exported, tmp_path):
    from trtmix.runtime.tensorrt import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    model = str(exported[("convnet", "dynamo")])
    for args in (("build", model, "--plan", "fp16", "--backend", "tensorrt", "-o", str(tmp_path / "x.onnx")),
                 ("profile", model, "--backend", "tensorrt")):  # fmt: skip
        result = _cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "TensorRT is not" in result.stderr
        assert "pip install 'trtmix[tensorrt]'" in result.stderr and "--backend onnxruntime" in result.stderr


def test_trtexec_cmd_cli(capsys):
    from trtmix.cli import main

    assert main(["trtexec-cmd", "m.onnx", "--shapes", "input:1x3x8x8:2x3x8x8:4x3x8x8"]) == 0
    assert "--optShapes=input:2x3x8x8" in capsys.readouterr().out
    assert main(["trtexec-cmd", "m.onnx", "--shapes", "bad"]) == 2


def test_trt_shape_profiles_parse():
    from trtmix.data.feeds import parse_profiles
    from trtmix.errors import TrtmixError

    assert parse_profiles(["input:1x3x8x8:2x3x8x8:4x3x8x8"]) == {"input": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))}
    for bad in ("input:1x3:2x3", "input:ax3:2x3:4x3"):
        with pytest.raises(TrtmixError, match="Bad --trt-shapes"):
            parse_profiles([bad])
