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


@pytest.mark.parametrize("argv, flag", [
    (["compile", "m.onnx", "--data", "r.py", "--max-runs", "0"], "--max-runs: must be 1 or more (got 0)"),
    (["compile", "m.onnx", "--data", "r.py", "--frontier", "-2"], "--frontier: must be 0 or more (got -2)"),
    (["compile", "m.onnx", "--data", "r.py", "--threads", "0"], "--threads: must be 1 or more (got 0)"),
    (["compile", "m.onnx", "--data", "r.py", "--eval-batches", "0"], "--eval-batches: must be 1 or more (got 0)"),
    (["compile", "m.onnx", "--data", "r.py", "--max-timing-seconds", "nan"], "--max-timing-seconds: must be above 0"),
    (["sensitivity", "m.onnx", "--data", "r.py", "-o", "s.json", "--augment-weight", "2"],
     "--augment-weight: must be at least 0 and at most 1 (got 2)"),
    (["profile", "m.onnx", "--runs", "two"], "--runs: expected a whole number, got 'two'"),
])  # fmt: skip
def test_numeric_flags_are_checked_before_any_work(argv, flag, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and flag in err
    assert "usage:" not in err and "--help` for every flag" in err  # one message, not argparse's whole usage block


def test_an_unexpected_exception_is_one_message_with_version_and_command(workspace, monkeypatch, capsys):
    from trtmix import __version__
    from trtmix.cli import commands

    def broken(args):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(commands, "run_units", broken)  # stands for any bug: the catch-all is what is tested
    model = str(workspace / "convnet.onnx")
    assert main(["units", model]) == 1
    err = capsys.readouterr().err
    assert "unexpected error: ZeroDivisionError: a bug deep inside" in err and __version__ in err
    assert f"Command: trtmix units {model}" in err and "report it" in err and "Traceback" not in err
    assert main(["--verbose", "units", model]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_quiet_silences_progress_bars(workspace, tmp_path, capsys):
    args = ["calibrate", str(workspace / "convnet.onnx"), "--data", str(workspace / "recipe.py"), "--no-cache"]
    assert main([*args, "-o", str(tmp_path / "a.json")]) == 0
    assert "calibrate:" in capsys.readouterr().err  # the bar is drawn...
    assert main(["-q", *args, "-o", str(tmp_path / "b.json")]) == 0
    assert "calibrate:" not in capsys.readouterr().err  # ...and -q silences it


INTERRUPTING_RECIPE = RECIPE + """
def load_data_interrupted(split="calibration"):
    if split == "calibration":
        raise KeyboardInterrupt  # what Ctrl-C raises, at this moment of the job
    yield from load_data(split)
"""


def test_ctrl_c_during_calibration_says_how_to_resume(workspace, tmp_path, capsys):
    recipe = tmp_path / "recipe.py"
    recipe.write_text(INTERRUPTING_RECIPE)
    args = ["compile", "trtmix.models.tiny:convnet", "--data", f"{recipe}:load_data_interrupted", "--metric", "cosine",
            "-o", str(tmp_path / "out"), "--backend", "onnxruntime", "--flavour", "ort-cpu"]  # fmt: skip
    assert main(["-q", *args]) == 130
    err = capsys.readouterr().err
    assert "interrupted during calibration" in err and "rerun the same command to resume" in err
    assert (tmp_path / "out" / "model.onnx").is_file(), "the export before it is kept for the rerun"


def test_build_strict_precision_checks_the_engine_or_says_why_not(workspace, tmp_path, capsys):
    model, recipe = str(workspace / "convnet.onnx"), str(workspace / "recipe.py")
    base = ["build", model, "--plan", "int8", "--data", recipe, "--strict-precision"]
    assert main([*base, "-o", str(tmp_path / "a.onnx")]) == 2
    assert "nothing is built without --artifact" in capsys.readouterr().err
    assert main([*base, "--flavour", "ort-cpu", "--backend", "onnxruntime", "-o", str(tmp_path / "b.onnx"),
                 "--artifact", str(tmp_path / "b.ort.onnx")]) == 2  # fmt: skip
    assert "onnxruntime reports no per-layer precision" in capsys.readouterr().err
    assert main([*base, "--backend", "openvino", "-o", str(tmp_path / "c.onnx"),
                 "--artifact", str(tmp_path / "c.ov.onnx")]) == 0  # fmt: skip
    assert "engine verified: 5 of 5 units run their planned precision" in capsys.readouterr().out


def test_build_smooths_only_when_asked_and_profile_picks_the_graphs_engine(tmp_path, capsys):
    """build measures nothing, so it does not smooth by default; profile --backend auto follows the graph's flavour."""
    assert main(["-q", "export", "trtmix.models.tiny:transformer", "-o", str(tmp_path / "t.onnx")]) == 0
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE.replace("(2, 3, 16, 16)", "(2, 8, 16)"))
    built = {}
    for name, extra in (("default", []), ("none", ["--no-smooth"]), ("alpha", ["--smooth-alpha", "0.5"])):
        out = tmp_path / f"{name}.onnx"
        assert main(["-q", "build", str(tmp_path / "t.onnx"), "--plan", "int8", "--data", str(recipe),
                     "--no-cache", "-o", str(out), *extra]) == 0  # fmt: skip
        built[name] = onnx.load(str(out)).graph.SerializeToString()
    assert built["default"] == built["none"] and built["alpha"] != built["none"]
    assert main(["-q", "build", str(tmp_path / "t.onnx"), "--plan", "int8", "--data", str(recipe), "--no-cache",
                 "--flavour", "ort-cpu", "-o", str(tmp_path / "ort.onnx")]) == 0  # fmt: skip
    capsys.readouterr()
    for graph, engine in (("default.onnx", "openvino"), ("ort.onnx", "onnxruntime"), ("t.onnx", "openvino")):
        assert main(["profile", str(tmp_path / graph), "--runs", "2"]) == 0
        assert f" on {engine} (" in capsys.readouterr().out, graph


def test_trtexec_cmd_turns_tf32_off_where_the_graph_computes_in_fp32(workspace, tmp_path, capsys):
    """An FP32 graph's convs would run TF32 on Ampere and later: the line says --noTF32, as trtexec.txt does."""
    fp16 = tmp_path / "fp16.onnx"
    assert main(["-q", "build", str(workspace / "convnet.onnx"), "--plan", "fp16", "-o", str(fp16)]) == 0
    capsys.readouterr()
    for graph, off in ((workspace / "convnet.onnx", True), (fp16, False)):
        assert main(["trtexec-cmd", str(graph)]) == 0
        assert ("--noTF32" in capsys.readouterr().out) == off, graph
