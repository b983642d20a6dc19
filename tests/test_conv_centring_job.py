"""Centred conv inputs as a measured quantizer option of ``compile`` (issue 33), and the orderings around them."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import onnx

from trtmix.cli import main

from .test_conv_centring import _mbconv

RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(4):
        yield {"input": rng.standard_normal((2, 3, 12, 12)).astype(np.float32)}
"""


def _job(folder: Path, *extra: str) -> tuple[dict, str]:
    """A compile job (tensorrt flavour on OpenVINO) on the seeded MBConv start, an ONNX file: report, summary."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(_mbconv(), folder / "mbconv.onnx")
    (folder / "recipe.py").write_text(RECIPE)
    args = ["compile", str(folder / "mbconv.onnx"), "--data", str(folder / "recipe.py"), "--metric", "sample-cosine",
            "--runs", "3", "--final-rounds", "0", "--no-range-choice", "--no-weight-rounding", "-o",
            str(folder / "out"), *extra]  # fmt: skip
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["-q", *args]) == 0
    return json.loads((folder / "out" / "report.json").read_text()), printed.getvalue()


def test_the_job_measures_centred_conv_inputs_and_orders_units_with_them(tmp_path: Path) -> None:
    # a budget all-INT8 misses: the kl ordering runs on the job's ranges, which centre padded convolutions
    report, printed = _job(tmp_path, "--max-drop", "0.00001%")
    quantizers = report["quantizers"]
    conv, measured = quantizers["conv_centring"], quantizers["smoothing"]["measured"]
    assert set(conv["centred"]) == {"relu6", "relu6_1"}  # the ReLU6 outputs the padded dw and the 1×1 conv read
    chosen = quantizers["smoothing"]["option"].removesuffix(", no bias correction")
    base = chosen.removesuffix(", centred convs")
    assert f"{base}, centred convs" in measured and base in measured  # both scored with the job's metric
    assert conv["kept"] == (measured[f"{base}, centred convs"] > measured[base])
    assert conv["kept"], measured  # the lost bit of the ReLU6 outputs costs this graph more than the rest
    saved = json.loads((tmp_path / "out" / "ranges.json").read_text())
    assert set(saved["shifts"]) == {"relu6", "relu6_1"}
    assert report["orderings_computed"] == {"kl": True}  # the switched graph with the padded conv's border map
    assert "2 conv inputs centred: kept" in printed
    report, _ = _job(tmp_path / "as-exported", "--max-drop", "50%", "--no-smooth")  # every unit reads X as exported
    assert "conv_centring" not in report["quantizers"] and not report["quantizers"]["smoothing"]["enabled"]


def test_the_asymmetric_flavour_scores_no_conv_centring_option(tmp_path: Path) -> None:
    from .conftest import TINY_RECIPE

    (tmp_path / "recipe.py").write_text(TINY_RECIPE)
    args = ["compile", "trtmix.models.tiny:convnet", "--data", str(tmp_path / "recipe.py"), "--metric", "cosine",
            "--max-drop", "50%", "--runs", "3", "--final-rounds", "0", "--flavour", "ort-cpu", "--backend",
            "onnxruntime", "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(["-q", *args]) == 0
    quantizers = json.loads((tmp_path / "out" / "report.json").read_text())["quantizers"]
    assert "conv_centring" not in quantizers  # ort-cpu's uint8 wastes no level on a one-sided tensor
    assert not any("centred convs" in label for label in quantizers["smoothing"]["measured"])


def test_only_padded_centred_convs_of_dynamic_size_are_scored_without_the_switched_graph() -> None:
    from trtmix.calibration.calibrate import CalibrationConfig, calibrate
    from trtmix.ir.units import find_units
    from trtmix.quant.smooth import plan_conv_centring
    from trtmix.sensitivity.measured import padded_centred_convs

    from .test_conv_centring import _feeds

    for dynamic, expected in ((False, []), (True, ["dw/Conv"])):
        model = _mbconv(dynamic=dynamic)
        units = find_units(model)
        ranges = calibrate(model, units, _feeds(2, 0), CalibrationConfig(), progress=False)
        assert padded_centred_convs(model, units, ranges) == []  # nothing centred yet
        centred, _ = plan_conv_centring(model, units, ranges)
        assert padded_centred_convs(model, units, centred) == expected  # the 1×1 conv pads nothing
