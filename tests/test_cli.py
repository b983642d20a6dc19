"""The CLI end to end on the tiny models, and its promise for bad input: one message, exit code 2, no traceback."""

import json
import subprocess
import sys

import onnx
import pytest

from trtmix.cli import build_parser, main

from .test_units import _relu_only_model

RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(3):
        yield {"input": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    assert main(["-q", "export", "trtmix.models.tiny:convnet", "-o", str(folder / "convnet.onnx")]) == 0
    (folder / "recipe.py").write_text(RECIPE)
    return folder


def test_units_json(workspace, capsys):
    assert main(["units", str(workspace / "convnet.onnx"), "--json"]) == 0
    units = json.loads(capsys.readouterr().out)
    assert [u["name"] for u in units][:2] == ["/stem/Conv", "/block_conv1/Conv"]
    assert all({"name", "kind", "op"} <= set(u) for u in units)


def test_units_table(workspace, capsys):
    assert main(["units", str(workspace / "convnet.onnx")]) == 0
    assert "5 units: 4 conv, 1 linear" in capsys.readouterr().out


def test_calibrate_build_profile(workspace, capsys):
    ranges, plan = workspace / "ranges.json", workspace / "plan.json"
    assert (
        main(["calibrate", str(workspace / "convnet.onnx"), "--data", str(workspace / "recipe.py"), "-o", str(ranges)])
        == 0
    )
    plan.write_text(json.dumps({"default": "fp16", "units": {"/stem/Conv": "int8", "/fc/Gemm": "int8"}}))
    for flavour in ("tensorrt", "ort-cpu"):
        out = workspace / f"mixed.{flavour}.onnx"
        args = [
            "build",
            str(workspace / "convnet.onnx"),
            "--plan",
            str(plan),
            "--flavour",
            flavour,
            "--ranges",
            str(ranges),
        ]
        assert main([*args, "-o", str(out), "--artifact", str(workspace / f"mixed.{flavour}.ort.onnx")]) == 0
        assert "2 of 5 units INT8" in capsys.readouterr().out
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert (
        main(
            [
                "build",
                str(workspace / "convnet.onnx"),
                "--plan",
                "int8",
                "--flavour",
                "ort-cpu",
                "--data",
                str(workspace / "recipe.py"),
                "-o",
                str(workspace / "int8.onnx"),
            ]
        )
        == 0
    )
    assert "5 of 5 units INT8" in capsys.readouterr().out
    assert main(["profile", str(workspace / "int8.onnx"), "--runs", "3", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["median_ms"] > 0 and stats["runs"] == 3


def test_calibrate_methods_and_tensorrt_cache(workspace, tmp_path, capsys):
    model = str(workspace / "convnet.onnx")
    recipe = str(workspace / "recipe.py")
    args = [
        "calibrate",
        model,
        "--data",
        recipe,
        "--method",
        "entropy",
        "--weights",
        "mse",
        "--cache-dir",
        str(tmp_path),
    ]
    assert main([*args, "-o", str(tmp_path / "entropy.json")]) == 0
    assert "weight tensors" in capsys.readouterr().out
    assert len(list(tmp_path.glob("ranges-*.json"))) == 1 and len(list(tmp_path.glob("histograms-*.npz"))) == 1
    entropy = json.loads((tmp_path / "entropy.json").read_text())
    assert entropy["meta"]["method"] == "entropy" and len(entropy["weights"]) == 5
    (tmp_path / "calib.cache").write_text("TRT-100300-EntropyCalibration2\ninput: 3c23d70a\nrelu: 3c23d70a\n")
    cache_args = [
        "calibrate",
        model,
        "--from-tensorrt-cache",
        str(tmp_path / "calib.cache"),
        "-o",
        str(tmp_path / "t.json"),
    ]
    assert main(cache_args) == 0
    assert "ranges of 2 tensors" in capsys.readouterr().out
    assert main(["calibrate", model, "-o", str(tmp_path / "x.json")]) == 2


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "trtmix.cli", *args], capture_output=True, text=True, timeout=300)


def _assert_clean_error(result, message):
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_inputs_give_one_clear_error(workspace, tmp_path):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello\n" * 50)
    truncated = tmp_path / "truncated.onnx"
    data = (workspace / "convnet.onnx").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    _relu_only_model(tmp_path / "relu.onnx")
    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text(json.dumps({"units": {"/stem/Convv": "int8"}}))
    failing = tmp_path / "failing.py"
    failing.write_text(
        "import torch\nclass M(torch.nn.Module):\n    def forward(self, x, y):\n        return x + y\n"
        "def build():\n    return M(), (torch.randn(2),)\n"
    )
    cases = [
        (("units", str(not_onnx)), "is not a readable ONNX model"),
        (("units", str(truncated)), "ONNX"),
        (("units", str(tmp_path / "relu.onnx")), "has no quantizable unit"),
        (
            (
                "build",
                str(workspace / "convnet.onnx"),
                "--plan",
                str(bad_plan),
                "--ranges",
                str(workspace / "ranges.json"),
                "-o",
                str(tmp_path / "x.onnx"),
            ),
            "did you mean '/stem/Conv'",
        ),
        (("export", f"{failing}:build", "-o", str(tmp_path / "f.onnx")), "sample inputs raised TypeError"),
        (("export", "trtmix.models.tiny:no_such_factory", "-o", str(tmp_path / "f.onnx")), "has no function"),
        (("export", "trtmix.models.tiny", "-o", str(tmp_path / "f.onnx")), "names no function"),
        (
            ("build", str(workspace / "convnet.onnx"), "--plan", "int8", "-o", str(tmp_path / "x.onnx")),
            "no activation ranges",
        ),
    ]
    for args, message in cases:
        _assert_clean_error(_run_cli(*args), message)
    verbose = _run_cli("--verbose", "units", str(not_onnx))
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_every_flag_is_documented():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subcommands) >= {"export", "units", "calibrate", "build", "profile", "demo"}
    for name, sub in subcommands.items():
        for action in sub._actions:
            assert action.help, f"trtmix {name} {action.option_strings or action.dest} has no help text"


def test_profile_random_inputs_with_symbolic_dims(tmp_path, capsys):
    assert (
        main(["-q", "export", "trtmix.models.tiny:transformer", "-o", str(tmp_path / "t.onnx"), "--dynamic-batch"]) == 0
    )
    capsys.readouterr()
    assert main(["profile", str(tmp_path / "t.onnx"), "--runs", "2", "--dim", "batch=3"]) == 0
    assert "input (3, 8, 16)" in capsys.readouterr().out
