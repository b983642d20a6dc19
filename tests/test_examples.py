"""Metrics users ship by: the examples/ folder's detector and sequence metrics, the built-ins, ``auto``, and faults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trtmix import api
from trtmix.cli import main
from trtmix.data.user_metric import load_user_metric
from trtmix.errors import TrtmixError
from trtmix.evaluate import choose_metric, map_iou, normalised_mse_score, psnr, score
from trtmix.job.config import CompileConfig
from trtmix.search.bisection import Budget

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAST = ["--runs", "3", "--timing-target", "0", "--final-rounds", "2", "--eval-batches", "4", "--ordering", "noise"]


def _compile(example: str, factory: str, metric: str, tmp_path: Path) -> dict:
    folder = EXAMPLES / example
    out = tmp_path / example
    metric_spec = f"{folder / 'metric.py'}:{metric}"
    assert main(["-q", "compile", f"{folder / 'model.py'}:{factory}", "--data", str(folder / "recipe.py"),
                 "--metric", metric_spec, "--max-drop", "2%", "-o", str(out), *FAST]) == 0  # fmt: skip
    return json.loads((out / "report.json").read_text())


def test_detector_example_scores_probes_with_box_f1(tmp_path: Path) -> None:
    report = _compile("detector", "tiny_detector", "box_f1", tmp_path)
    assert report["metric"].endswith("metric.py:box_f1") and report["metric_ms"] > 0
    assert report["baseline"]["fp32"]["accuracy"] == 1.0, "the FP32 model's detections match themselves"
    assert report["chosen"] and "orderings rank units by 1 - its score" in report["metric_note"]
    int8 = report["all_int8"]["relative"]
    assert 0 <= int8 <= 1.0 + 1e-9


def test_sequence_example_scores_with_one_minus_cer_and_extras(tmp_path: Path) -> None:
    report = _compile("sequence", "tiny_recognizer", "one_minus_cer", tmp_path)
    assert report["baseline"]["fp32"]["accuracy"] == 1.0 and report["holdout"]["relative"] > 0
    assert report["metric_requested"].endswith("one_minus_cer")


def test_a_python_callable_is_a_metric(tmp_path: Path) -> None:
    calls = []

    def exact_match(candidate, reference, extras):  # noqa: ANN001, ANN202
        calls.append((sorted(candidate), int(extras["ids"][0]) // 1000, sorted(extras)))
        return float(np.mean(candidate["logits"].argmax(-1) == reference["logits"].argmax(-1)))

    folder = EXAMPLES / "sequence"
    config = CompileConfig(data=str(folder / "recipe.py"), budget=Budget.parse("0%"), runs=3, timing_target=None,
                           final_rounds=2, eval_batches=2, ordering="kl")  # fmt: skip
    report = api.compile(f"{folder / 'model.py'}:tiny_recognizer", tmp_path / "out", config, metric=exact_match)
    assert calls and calls[0][0] == ["logits"] and report["metric"].startswith("python:")
    splits = {split for _, split, _ in calls}  # the recipe's ids: 1000 × the split's seed
    assert splits == {0, 1, 2}, "the kl ordering (calibration), every probe (search) and the holdout check"
    assert all(extras == ["ids"] for _, _, extras in calls), "load_extras reaches the metric"
    assert report["orderings_computed"] == {"kl": True}


@pytest.mark.parametrize(
    ("body", "message"),
    [("raise RuntimeError('boom')", "raised RuntimeError: boom (metric.py, line 2)"),
     ("return float('nan')", "returned nan"), ("return 'good'", "returned str 'good', not a number")],
)  # fmt: skip
def test_a_faulty_metric_is_one_clear_error(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "metric.py"
    path.write_text(f"def bad(candidate, reference, extras):\n    {body}\n")
    metric = load_user_metric(f"{path}:bad")
    with pytest.raises(TrtmixError, match=message.replace("(", r"\(").replace(")", r"\)")):
        metric({}, {}, {})


def test_a_metric_with_the_wrong_signature_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metric.py"
    path.write_text("def two(candidate, reference):\n    return 1.0\n")
    with pytest.raises(TrtmixError, match=r"cannot be called with \(candidate, reference, extras\)"):
        load_user_metric(f"{path}:two")


def test_built_in_metrics_for_dense_and_sequence_outputs() -> None:
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 1, (4, 1, 16, 16))
    noisy = maps + rng.normal(0, 0.01, maps.shape)
    assert psnr(maps, maps) == 100.0 and 30 < psnr(noisy, maps) < 50
    mean = np.full_like(maps, maps.mean())
    assert normalised_mse_score(maps, maps) == 1.0 and normalised_mse_score(mean, maps) < 1e-9
    assert map_iou(maps, maps) == 1.0 and map_iou(1 - maps, maps) < 0.5
    logits = rng.normal(size=(3, 10, 5))
    flipped = logits.copy()
    flipped[0, 0] = -flipped[0, 0]
    assert score("sequence", flipped, logits) == pytest.approx(29 / 30)
    with pytest.raises(ValueError, match="positions"):
        score("sequence", logits[:, 0], logits[:, 0])


def test_auto_picks_the_metric_the_output_fits() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(6), size=(2, 40))
    assert choose_metric(rng.normal(size=(8, 1, 32, 32)))[0] == "sample-cosine"
    assert choose_metric(probabilities)[0] == "sequence"
    assert choose_metric(rng.normal(size=(8, 128, 384)), "last_hidden_state")[0] == "cosine"
    assert choose_metric(rng.normal(size=(8, 10)))[0] == "agreement"
    assert choose_metric(rng.normal(size=(8, 384)), "sentence_embedding")[0] == "cosine"
    assert choose_metric(rng.normal(size=(8, 1)))[0] == "mse"


def test_auto_is_the_default_and_the_summary_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = EXAMPLES / "sequence"
    assert main(["compile", f"{folder / 'model.py'}:tiny_recognizer", "--data", str(folder / "recipe.py"),
                 "--max-drop", "5%", "-o", str(tmp_path / "out"), *FAST]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "metric auto: cosine, for a vector per position" in out and "ms per evaluation" in out


def test_the_python_api_takes_objects(tmp_path: Path) -> None:
    """A torch module with sample inputs, data as feeds per split in memory, a callable metric: a result object."""
    import onnx
    import torch

    import trtmix
    from trtmix.models.tiny import convnet

    module, samples = convnet()
    rng = np.random.default_rng(0)
    data = {split: [{"input": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
            for split in ("calibration", "search", "holdout")}  # fmt: skip

    def agreement(candidate, reference, extras):  # noqa: ANN001, ANN202
        return float(np.mean(candidate["output"].argmax(-1) == reference["output"].argmax(-1)))

    result = trtmix.compile(module, tmp_path / "job", sample_inputs=samples, data=data, metric=agreement,
                            max_drop="50%", runs=3, timing_target=None, final_rounds=2, eval_batches=3)  # fmt: skip
    assert isinstance(result, trtmix.CompileResult) and result.plan is not None and result.onnx.is_file()
    assert result.frontier and result["chosen"] and result.report["metric"].startswith("python:")
    assert result.artifact.is_file() and onnx.load(str(result.onnx)).graph.node
    again = trtmix.compile(onnx.load(str(tmp_path / "job" / "given.onnx")), tmp_path / "proto", data=data,
                           max_drop="50%", runs=3, timing_target=None, final_rounds=2, eval_batches=3)  # fmt: skip
    assert again.report["metric"] == "agreement" and "metric auto" in again.report["metric_note"]
    with pytest.raises(TrtmixError, match="sample_inputs"):
        trtmix.compile(torch.nn.Linear(2, 2), tmp_path / "x", data=data)


@pytest.mark.parametrize(("metric", "shape", "fits"), [("agreement", (4, 1, 8, 8), "sample-cosine"),
                                                       ("sequence", (4, 10), "agreement")])  # fmt: skip
def test_a_built_in_that_does_not_fit_says_which_does(metric: str, shape: tuple[int, ...], fits: str) -> None:
    from trtmix.job.evaluation import _check_fit

    with pytest.raises(TrtmixError, match=f"use --metric {fits}"):
        _check_fit(metric, np.random.default_rng(0).normal(size=shape))
