"""The catalogue of bad inputs: each one exit code 2, one message with the words that say what was wrong, no
traceback, and no partial output file.

Table-driven: a case is (name, argv, key words, the output path that must not exist). The workspace holds a tiny conv
net, good and bad recipes, bad data files and bad graphs, built once. Argument errors that argparse itself reports
(an unknown choice) exit 2 through ``SystemExit`` with argparse's usage line, which is its one clear message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from trtmix.cli import main

GOOD_RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(3):
        yield {"input": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
def load_labels(split):
    return np.zeros(1, dtype=np.int64)
"""



def _yields(expression: str) -> str:
    """A recipe whose one batch is ``expression``."""
    return f"import numpy as np\ndef load_data():\n    yield {expression}\n"


RECIPES = {
    "raises.py": (
        "def load_data(split='calibration'):\n    yield from []\n"
        "    raise RuntimeError('the bucket is gone')\n"
    ),
    "raises_late.py": (
        "import numpy as np\ndef load_data(split='calibration'):\n"
        "    yield {'input': np.zeros((2, 3, 16, 16), np.float32)}\n    raise KeyError('row 7')\n"
    ),
    "labels_raise.py": GOOD_RECIPE.replace("return np.zeros(1, dtype=np.int64)", "raise OSError('labels.csv missing')"),
    "no_search.py": GOOD_RECIPE.replace("for _ in range(3):", "for _ in range(0 if split == 'search' else 3):"),
    "wrong_name.py": _yields("{'pixels': np.zeros((2, 3, 16, 16), np.float32)}"),
    "wrong_dtype.py": _yields("{'input': np.zeros((2, 3, 16, 16), np.float64)}"),
    "nan.py": _yields("{'input': np.full((2, 3, 16, 16), np.nan, np.float32)}"),
    "not_dict.py": _yields("np.zeros((2, 3, 16, 16), np.float32)"),
    "wrong_shape.py": _yields("{'input': np.zeros((2, 3, 8, 8), np.float32)}"),
    "factory_raises.py": "def build():\n    raise ValueError('checkpoint not found')\n",
    "syntax_error.py": "def load_data(:\n    pass\n",
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    os.environ["TRTMIX_CACHE"] = str(folder / "cache")
    assert main(["-q", "export", "trtmix.models.tiny:convnet", "-o", str(folder / "m.onnx")]) == 0
    (folder / "recipe.py").write_text(GOOD_RECIPE)
    for name, text in RECIPES.items():
        (folder / name).write_text(text)
    assert main(["-q", "calibrate", str(folder / "m.onnx"), "--data", str(folder / "recipe.py"),
                 "-o", str(folder / "ranges.json")]) == 0  # fmt: skip
    _data_files(folder)
    _graphs(folder)
    (folder / "a_file").write_text("not a folder")
    with (folder / "huge.onnx").open("wb") as sparse:  # 2 GiB + 1 byte without using the disk
        sparse.truncate(2**31 + 1)
    return folder


def _data_files(folder: Path) -> None:
    np.savez(folder / "objects.npz", input=np.array([{"a": 1}, None], dtype=object))
    np.savez(folder / "ragged.npz", input=np.zeros((4, 3, 16, 16), np.float32), mask=np.zeros((3, 2), np.float32))
    np.savez(folder / "empty.npz")
    (folder / "no_images").mkdir()
    (folder / "texts").mkdir()
    (folder / "texts" / "readme.txt").write_text("not an image")
    (folder / "broken_images").mkdir()
    for index in range(3):
        (folder / "broken_images" / f"{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (folder / "bad_plan.json").write_text("{not json")
    (folder / "precision_plan.json").write_text(json.dumps({"units": {"/stem/Conv": "int3"}}))
    (folder / "bad_ranges.json").write_text("[1, 2")
    (folder / "bad.cache").write_text("this is not a TensorRT calibration cache\n")


def _graphs(folder: Path) -> None:
    """A graph with its external data file missing, one whose output is an integer, one at an old opset, and one
    whose input has a symbolic batch dimension."""
    model = onnx.load(str(folder / "m.onnx"))
    onnx.save_model(model, str(folder / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)  # fmt: skip
    (folder / "ext.onnx.data").unlink()
    x = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [2, 4])
    weight = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    argmax = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["m"], name="mm"),
         helper.make_node("ArgMax", ["m"], ["label"], name="argmax", axis=1, keepdims=0)],
        "g", [x], [helper.make_tensor_value_info("label", onnx.TensorProto.INT64, [2])], [weight],
    )  # fmt: skip
    onnx.save(helper.make_model(argmax, opset_imports=[helper.make_opsetid("", 17)]), folder / "argmax.onnx")
    (folder / "argmax_recipe.py").write_text(
        "import numpy as np\ndef load_data(split='calibration'):\n    for _ in range(2):\n"
        "        yield {'input': np.ones((2, 4), np.float32)}\n"
    )
    old = helper.make_graph(  # ImageScaler: an experimental op of opset 9 that no converter carries to opset 19
        [helper.make_node("MatMul", ["input", "w"], ["m"], name="mm"),
         helper.make_node("ImageScaler", ["m"], ["y"], name="scaler", scale=2.0)],
        "g", [x], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])], [weight],
    )  # fmt: skip
    onnx.save(helper.make_model(old, opset_imports=[helper.make_opsetid("", 9)]), folder / "old_opset.onnx")
    symbolic = helper.make_graph(  # input [batch, 4]: profile needs --dim batch=N (or data) to time it
        [helper.make_node("MatMul", ["input", "w"], ["y"], name="mm")],
        "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])], [weight],
    )  # fmt: skip
    onnx.save(helper.make_model(symbolic, opset_imports=[helper.make_opsetid("", 17)]), folder / "symbolic.onnx")


def cases(ws: Path) -> list[tuple[str, list[str], tuple[str, ...], Path | None]]:
    m, recipe, ranges = str(ws / "m.onnx"), str(ws / "recipe.py"), str(ws / "ranges.json")
    out = ws / "out.onnx"
    jobs = iter(range(1000))

    def job_folder() -> Path:
        return ws / f"job{next(jobs)}"

    def job(name: str, words: tuple[str, ...], *extra: str, data: str = recipe, metric: str = "cosine",
            model: str = m) -> tuple[str, list[str], tuple[str, ...], Path]:  # fmt: skip
        """A compile case in a folder of its own; its report.json must not appear."""
        folder = job_folder()
        argv = ["compile", model, "--data", data, "--metric", metric, "--max-drop", "1%", "--runs", "2", *extra]
        return name, [*argv, "-o", str(folder)], words, folder / "report.json"

    def ranged(name: str, words: tuple[str, ...], accuracy_range: str) -> tuple[str, list[str], tuple[str, ...], Path]:
        folder = job_folder()
        argv = ["compile", m, "--data", recipe, "--accuracy-range", accuracy_range, "-o", str(folder)]
        return name, argv, words, folder / "report.json"

    def calib(data: str, *extra: str) -> list[str]:
        return ["calibrate", m, "--data", data, *extra, "-o", str(ws / "r.json")]

    return [
        # malformed flags
        ("dim not a number", ["profile", m, "--dim", "batch=x"], ("Bad --dim", "NAME=POSITIVE_INT"), None),
        ("dim zero", ["profile", m, "--dim", "batch=0"], ("Bad --dim 'batch=0'", "NAME=POSITIVE_INT"), None),
        ("dynamic axis", ["export", "trtmix.models.tiny:convnet", "-o", str(out), "--dynamic-axis", "input:x"],
         ("Bad --dynamic-axis", "TENSOR:AXIS:NAME"), out),
        ("data-arg without =", calib(recipe, "--data-arg", "batch"), ("--data-arg", "KEY=VALUE"), ws / "r.json"),
        ("data-arg unknown key", calib(recipe, "--data-arg", "colour=red"), ("takes no argument colour",), None),
        ("trt-shapes", ["profile", m, "--trt-shapes", "input:1x3"], ("Bad --trt-shapes", "NAME:MIN:OPT:MAX"), None),
        ("percentile over 100", calib(recipe, "--calibration-method", "percentile", "--percentile", "120"),
         ("--percentile must be in (0, 100]",), ws / "r.json"),
        ("percentile zero", calib(recipe, "--calibration-method", "percentile", "--percentile", "0"),
         ("--percentile must be in (0, 100]", "(got 0.0)"), ws / "r.json"),
        ("profile runs zero", ["profile", m, "--runs", "0"], ("--runs", "(got 0)"), None),
        job("compile runs negative", ("--runs", "(got -3)"), "--runs=-3"),
        job("max-drop over 100%", ("--max-drop 150%", "out of range"), "--max-drop", "150%"),
        job("max-drop words", ("Bad --max-drop",), "--max-drop", "a lot"),
        ranged("accuracy range reversed", ("need 0 < LOW <= HIGH",), "99.99:99.9"),
        ranged("accuracy range above float", ("more than the float model",), "101:102"),
        job("timing target", ("--timing-target -1%", "out of range"), "--timing-target=-1%"),
        # plans and ranges
        ("unknown plan shorthand", ["build", m, "--plan", "int4", "--ranges", ranges, "-o", str(out)],
         ("neither a file nor a shorthand", "int8 / fp16 / fp32"), out),
        ("plan not json", ["build", m, "--plan", str(ws / "bad_plan.json"), "--ranges", ranges, "-o", str(out)],
         ("not valid JSON",), out),
        ("plan precision", ["build", m, "--plan", str(ws / "precision_plan.json"), "--ranges", ranges, "-o", str(out)],
         ("Unknown precision 'int3'",), out),
        ("ranges not json", ["build", m, "--plan", "int8", "--ranges", str(ws / "bad_ranges.json"), "-o", str(out)],
         ("not valid JSON",), out),
        ("ranges missing", ["build", m, "--plan", "int8", "--ranges", str(ws / "none.json"), "-o", str(out)],
         ("does not exist",), out),
        ("weight bits on tensorrt", ["build", m, "--plan", "int8", "--ranges", ranges, "--weight-bits", "7",
                                     "-o", str(out)], ("ort-cpu flavour only",), out),  # fmt: skip
        ("smooth alpha 1", ["build", m, "--plan", "int8", "--ranges", ranges, "--smooth-alpha", "1",
                            "-o", str(out)], ("outside (0, 1)", "--no-smooth"), out),  # fmt: skip
        job("smooth alpha negative", ("--smooth-alpha -0.2 is outside (0, 1)",), "--smooth-alpha", "-0.2"),
        ("tensorrt cache", ["calibrate", m, "--from-tensorrt-cache", str(ws / "bad.cache"), "-o", str(ws / "r.json")],
         ("TensorRT cache header",), ws / "r.json"),
        # data files
        ("npz object arrays", calib(str(ws / "objects.npz")), ("object arrays", "pickle"), ws / "r.json"),
        ("npz ragged", calib(str(ws / "ragged.npz")), ("different first-axis lengths",), ws / "r.json"),
        ("npz empty", calib(str(ws / "empty.npz")), ("holds no arrays",), ws / "r.json"),
        ("npz missing", calib(str(ws / "missing.npz")), ("does not exist",), ws / "r.json"),
        ("empty image folder", calib(str(ws / "no_images")), ("holds no images",), ws / "r.json"),
        ("folder of non-images", calib(str(ws / "texts")), ("holds no images",), ws / "r.json"),
        ("broken images", calib(str(ws / "broken_images")), ("cannot read image", "broken_images", ".png"),
         ws / "r.json"),
        # recipes: user code
        ("recipe raises", calib(str(ws / "raises.py")),
         ("raised RuntimeError: the bucket is gone", "raises.py, line 3"), ws / "r.json"),
        ("recipe raises mid-way", calib(str(ws / "raises_late.py")), ("raised KeyError", "raises_late.py, line 4"),
         ws / "r.json"),
        ("recipe syntax error", calib(str(ws / "syntax_error.py")), ("SyntaxError", "syntax_error.py"), ws / "r.json"),
        ("recipe missing", calib(str(ws / "nope.py")), ("does not exist",), ws / "r.json"),
        ("recipe function missing", calib(f"{ws / 'recipe.py'}:nope"), ("has no function 'nope'",), ws / "r.json"),
        ("recipe wrong input name", calib(str(ws / "wrong_name.py")), ("has inputs ['pixels']", "['input']"),
         ws / "r.json"),
        ("recipe wrong dtype", calib(str(ws / "wrong_dtype.py")), ("dtype float64", "astype"), ws / "r.json"),
        ("recipe wrong shape", calib(str(ws / "wrong_shape.py")), ("shape (2, 3, 8, 8)",), ws / "r.json"),
        ("recipe NaN", calib(str(ws / "nan.py")), ("holds NaN or Inf",), ws / "r.json"),
        ("recipe not a dict", calib(str(ws / "not_dict.py")), ("is a ndarray", "dict"), ws / "r.json"),
        job("labels too few", ("returned 1 labels",), metric="accuracy"),
        job("labels raise", ("raised OSError: labels.csv missing", "labels_raise.py, line"),
            data=str(ws / "labels_raise.py"), metric="accuracy"),
        job("no batches for one split", ("yielded no batches", "search"), data=str(ws / "no_search.py")),
        ("factory raises", ["export", f"{ws / 'factory_raises.py'}:build", "-o", str(out)],
         ("raised ValueError: checkpoint not found", "factory_raises.py, line 2"), out),
        # graphs
        ("missing ONNX", ["units", str(ws / "none.onnx")], ("does not exist",), None),
        ("single file over 2 GiB", ["units", str(ws / "huge.onnx")], ("over 2 GiB", "external data"), None),
        ("external data missing", ["units", str(ws / "ext.onnx")], ("external data", "ext.onnx.data"), None),
        job("output not float", ("output 'label'", "int64", "not float"), model=str(ws / "argmax.onnx"),
            data=str(ws / "argmax_recipe.py")),
        ("opset conversion", ["build", str(ws / "old_opset.onnx"), "--plan", "fp16", "-o", str(out)],
         ("opset 9 to 19", "ImageScaler"), out),
        ("symbolic dim without --dim", ["profile", str(ws / "symbolic.onnx"), "--runs", "2"],
         ("symbolic dimensions with no value", "'batch'", "--dim batch=N"), None),
        ("symbolic dim misnamed", ["profile", str(ws / "symbolic.onnx"), "--runs", "2", "--dim", "seq=3"],
         ("symbolic dimensions with no value", "'batch'"), None),
        ("symbolic dim given", ["profile", str(ws / "symbolic.onnx"), "--runs", "2", "--dim", "batch=3"],
         ("input (3, 4)",), None),  # accepted: timed at the shape --dim gives
        job("score output", ("no output of that name",), "--score-output", "logits"),
        job("hessian on onnx", ("needs the torch model",), "--ordering", "hessian"),
        # output places
        ("output folder is a file", ["compile", m, "--data", recipe, "--metric", "cosine", "-o", str(ws / "a_file")],
         ("a_file", "not a folder"), None),
        ("output file under a file", ["build", m, "--plan", "fp16", "-o", str(ws / "a_file" / "x.onnx")],
         ("cannot write", "a_file"), None),
    ]


ACCEPTED = {"symbolic dim given"}  # inputs trtmix accepts on purpose: their words are looked for in stdout
CASE_NAMES = [case[0] for case in cases(Path("/catalogue"))]  # cases() only names paths; nothing is read here


def test_every_case_counts() -> None:
    """Every case is a refusal with the words that must say why, but the few accepted on purpose; names unique."""
    catalogue = cases(Path("/catalogue"))
    assert len(set(CASE_NAMES)) == len(CASE_NAMES) == len(catalogue) >= 57
    assert ACCEPTED <= set(CASE_NAMES)
    assert all(words and all(words) for _, _, words, _ in catalogue), [c[0] for c in catalogue if not c[2]]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input(ws: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, argv, words, output = next(case for case in cases(ws) if case[0] == name)
    capsys.readouterr()
    code = _exit_code(argv)
    printed = capsys.readouterr()
    err = printed.err
    if name in ACCEPTED:
        assert code == 0, err
        for word in words:
            assert word in printed.out, f"{name}: {word!r} not in\n{printed.out}"
        return
    assert code == 2, f"{name}: exit {code}\n{err}"
    assert "Traceback" not in err, f"{name}:\n{err}"
    for word in words:
        assert word in err, f"{name}: {word!r} not in\n{err}"
    if output is not None:
        assert not output.exists(), f"{name}: left {output} behind"


def _exit_code(argv: list[str]) -> int | str | None:
    """``main``'s exit code, also for a flag argparse refuses (a malformed number: argparse exits with 2)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def test_verbose_shows_the_users_traceback(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v", "calibrate", str(ws / "m.onnx"), "--data", str(ws / "raises.py"),
                 "-o", str(ws / "r.json")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" in err and "the bucket is gone" in err and "raises.py" in err


def test_unknown_choices_are_argparse_errors(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["build", str(ws / "m.onnx"), "--plan", "int8", "--flavour", "tflite", "-o", "x.onnx"],
                 ["profile", str(ws / "m.onnx"), "--backend", "tpu"]):  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and "invalid choice" in capsys.readouterr().err
