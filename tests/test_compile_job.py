"""`trtmix compile` for real on the tiny conv net: report, outputs, holdout, resume after SIGKILL, bad journals."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from trtmix.cli import main
from trtmix.job.final import ORIGINAL
from trtmix.job.outputs import unlisted_outputs
from trtmix.runtime.cpu import cpu_features

from .conftest import TINY_RECIPE as RECIPE
from .conftest import assert_shipped_graphs_load


@pytest.fixture()
def recipe(tmp_path):
    path = tmp_path / "recipe.py"
    path.write_text(RECIPE)
    return str(path)


def _compile_args(recipe, output, *extra):
    """The ort-cpu path on ONNX Runtime (the default tensorrt flavour on OpenVINO: tests/test_openvino.py)."""
    return ["compile", "trtmix.models.tiny:convnet", "--data", recipe, "--metric", "cosine", "-o", str(output),
            "--runs", "3", "--flavour", "ort-cpu", "--backend", "onnxruntime", *extra]  # fmt: skip


def test_compile_writes_report_and_meets_budget_on_holdout(recipe, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["-q", *_compile_args(recipe, output, "--max-drop", "0.5%", "--frontier", "2",
                                      "--compare-orderings", "noise,random")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads((output / "report.json").read_text())
    if report["chosen"] == ORIGINAL:  # the tiny net's own FP32 graph can win the final timing on a busy machine
        assert "chosen: the FP32 graph you brought" in printed
    else:
        assert "chosen plan:" in printed and "holdout split" in printed
    assert report["chosen"] and report["budget"]["lower"] == pytest.approx(0.995)
    assert report["holdout"]["relative"] >= report["budget"]["lower"]
    assert {"probes", "chosen", "baseline", "holdout"} <= set(report)
    for probe in report["probes"]:
        assert {"plan_hash", "k", "accuracy", "latency", "status"} <= set(probe)
        assert probe["latency"]["median_ms"] > 0
    assert set(report["orderings"]) == {"kl", "noise", "random"}
    _assert_pareto_flags(report["probes"])
    if report["chosen"] == ORIGINAL:  # the user's graph ships as it is (``write_original_outputs``)
        chosen_files: tuple[str, ...] = ("chosen.original.onnx",)
    else:
        chosen_files = ("chosen.ort-cpu.onnx", "chosen.tensorrt.onnx")
    for name in ("report.html", "frontier.png", "plan.json", *chosen_files, "trtexec.txt"):
        assert (output / name).is_file(), name
    assert (output / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "--stronglyTyped" in (output / "trtexec.txt").read_text()
    assert "data:image/png;base64," in (output / "report.html").read_text()
    assert "--stronglyTyped" in (output / "report.html").read_text()
    plan = json.loads((output / "plan.json").read_text())
    assert len([p for p in plan["units"].values() if p == "int8"]) == report["chosen_k"]
    assert not unlisted_outputs(output), "README's output-folder list (OUTPUT_FILES) misses what the job wrote"
    shipped = assert_shipped_graphs_load(output, tmp_path / "moved")
    assert report["files"]["artifact"] in shipped  # ONNX Runtime's optimised graph, its weights now inside


def _assert_pareto_flags(probes):
    """Pareto probes are dominated by no probe; every other measured probe is dominated by some Pareto probe."""
    measured = [(p["latency"]["median_ms"], p["relative"], p["pareto"]) for p in probes if p["status"] == "ok"]

    def dominates(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    assert any(flag for *_, flag in measured)
    for point in measured:
        dominated = any(dominates(other, point) for other in measured)
        assert point[2] == (not dominated), point


def _speed_figures(lines):
    """From the summary's latency line: the printed ms per name, the printed ratio and its reference."""
    line = next(line for line in lines if line.startswith("latency: "))
    figures = {name: float(ms) for name, ms in re.findall(r"(chosen|FP32|all-high|all-INT8) ([0-9.]+) ms", line)}
    ratio = re.search(r"; ([0-9.]+)x the (FP32|all-high) plan's speed", line)
    return figures, ratio and (float(ratio.group(1)), ratio.group(2))


def test_summary_figures_come_from_one_timing_and_agree(recipe, tmp_path):
    """The printed ratio is the printed milliseconds' ratio; slower than the reference is warned about."""
    from trtmix.job.summary import summary_lines

    output = tmp_path / "out"
    assert main(["-q", *_compile_args(recipe, output, "--max-drop", "50%", "--relative-to", "fp32")]) == 0
    report = json.loads((output / "report.json").read_text())
    if report["chosen"] == ORIGINAL:  # the tiny model's own FP32 graph won: the ratio concerns a chosen plan
        report["chosen"] = next(p for p in report["probes"] if p["k"] == report["unit_count"])["plan_hash"]
        report["chosen_k"] = report["unit_count"]
    final = report["final_timing"]
    assert final["rounds"] and report["chosen"] in final["medians_ms"]
    for timing in ("paired", "probes"):
        lines = summary_lines(report, output)
        figures, (ratio, reference) = _speed_figures(lines)
        assert reference == "FP32" and {"chosen", "FP32"} <= set(figures)
        assert ratio == pytest.approx(round(figures["FP32"] / figures["chosen"], 2), abs=0.011), lines
        source = "interleaved rounds" if timing == "paired" else "probe medians"
        assert source in next(line for line in lines if line.startswith("latency: "))
        if timing == "paired":
            assert figures["FP32"] == pytest.approx(final["medians_ms"][ORIGINAL], abs=0.006)
            assert figures["chosen"] == pytest.approx(final["medians_ms"][report["chosen"]], abs=0.006)
            report.pop("final_timing")  # the single-median figures: the probes' own, all of them
    chosen_ms = figures["chosen"]
    for float_ms, warned in ((chosen_ms / 2, True), (chosen_ms * 2, False)):
        report["baseline"]["latency"]["median_ms"] = float_ms
        lines = summary_lines(report, output)
        warning = "warning: the chosen plan is slower than the FP32 plan"
        assert any(line.startswith(warning) for line in lines) == warned


def test_rerun_resumes_without_measuring_again(recipe, tmp_path, capsys):
    output = tmp_path / "out"
    args = _compile_args(recipe, output, "--max-drop", "0.001%")
    assert main(["-q", *args]) == 0  # the all-high plan (k = 0) always meets the budget
    first = json.loads((output / "report.json").read_text())
    capsys.readouterr()
    assert main(["-q", *args]) == 0
    second = json.loads((output / "report.json").read_text())
    assert second["builds"] == 0 and second["resumed_probes"] == len(first["probes"])


def test_killed_run_resumes_and_measures_nothing_twice(recipe, tmp_path):
    output = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "trtmix.cli",
        "-q",
        # unsmoothed, all-INT8 misses this budget, so the search needs several probes and the kill lands among them
        *_compile_args(recipe, output, "--max-drop", "0.001%", "--runs", "2000", "--no-smooth",
                         "--no-bias-correction"),
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    journal = output / "journal.sqlite"
    deadline = time.time() + 240
    while time.time() < deadline:
        if journal.exists():
            try:
                count = sqlite3.connect(journal).execute("SELECT COUNT(*) FROM probes").fetchone()[0]
            except sqlite3.Error:
                count = 0
            if count >= 2:
                break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # it was still running: killed mid-job, not finished
    killed_probes = sqlite3.connect(journal).execute("SELECT plan_hash, run_id FROM probes").fetchall()
    assert len(killed_probes) >= 2 and not (output / "report.json").exists()
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    final = sqlite3.connect(journal).execute("SELECT plan_hash, run_id FROM probes").fetchall()
    report = json.loads((output / "report.json").read_text())
    assert report["resumed_probes"] == len(killed_probes)
    assert set(killed_probes) <= set(final)  # earlier measurements kept, with the killed run's id
    rerun_probes = set(final) - set(killed_probes)
    assert report["builds"] == len(rerun_probes)  # the rerun measured exactly what was missing...
    assert len({run_id for _, run_id in rerun_probes}) == 1  # ...in one run...
    assert {h for h, _ in rerun_probes}.isdisjoint({h for h, _ in killed_probes})  # ...and nothing twice


def test_corrupt_journal_is_a_clear_error(recipe, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "journal.sqlite").write_bytes(b"this is not sqlite" * 100)
    assert main(["-q", *_compile_args(recipe, output, "--max-drop", "1%")]) == 2
    assert "--fresh" in capsys.readouterr().err
    assert main(["-q", *_compile_args(recipe, output, "--max-drop", "1%", "--fresh")]) == 0


def test_journal_from_other_settings_is_refused(recipe, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["-q", *_compile_args(recipe, output, "--max-drop", "1%")]) == 0
    assert main(["-q", *_compile_args(recipe, output, "--max-drop", "1%", "--flavour", "tensorrt")]) == 2
    assert "other settings" in capsys.readouterr().err


def test_accuracy_metric_needs_labels(recipe, tmp_path, capsys):
    args = [
        "compile",
        "trtmix.models.tiny:convnet",
        "--data",
        recipe,
        "--metric",
        "accuracy",
        "-o",
        str(tmp_path / "o"),
    ]
    assert main(["-q", *args]) == 2
    assert "load_labels" in capsys.readouterr().err


LABELLED_RECIPE = """
import numpy as np
import torch
from trtmix.models import tiny

def _split(split):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    return [rng.standard_normal((2, 3, 16, 16)).astype(np.float32) for _ in range(4)]

def load_data(split="calibration"):
    for batch in _split(split):
        yield {"input": batch}

def load_labels(split="calibration"):
    model, _ = tiny.convnet()  # the float model's own predictions: real labels it gets 100% on
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(b)).argmax(-1).numpy() for b in _split(split)])
"""


def test_accuracy_metric_uses_the_recipe_labels(tmp_path, capsys):
    (tmp_path / "labelled.py").write_text(LABELLED_RECIPE)
    args = ["compile", "trtmix.models.tiny:convnet", "--data", str(tmp_path / "labelled.py"), "--metric", "accuracy",
            "--max-drop", "50%", "--runs", "3", "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(["-q", *args]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["baseline"]["accuracy"] == 1.0 and report["baseline"]["holdout"] == 1.0
    assert report["holdout"]["relative"] >= 0.5


def test_compile_an_onnx_source(recipe, tmp_path, capsys):
    assert main(["-q", "export", "trtmix.models.tiny:convnet", "-o", str(tmp_path / "convnet.onnx")]) == 0
    args = ["compile", str(tmp_path / "convnet.onnx"), "--data", recipe, "--metric", "cosine", "--max-drop", "1%",
            "--runs", "3", "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(["-q", *args]) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["chosen"]
    capsys.readouterr()
    assert main(["-q", *args, "--ordering", "hessian", "--fresh"]) == 2
    assert "needs the torch model" in capsys.readouterr().err


def test_ordering_is_computed_only_when_the_bisection_needs_it(recipe, tmp_path, capsys):
    loose = tmp_path / "loose"  # all-INT8 keeps well over 50% cosine: the search ends after all-INT8
    assert main(["-q", *_compile_args(recipe, loose, "--max-drop", "50%")]) == 0
    report = json.loads((loose / "report.json").read_text())
    assert report["stop_reason"] == "all-INT8 already meets the budget"
    assert report["orderings_computed"] == {"kl": False} and report["ordering_seconds"] == {"kl": None}
    printed = capsys.readouterr().out
    assert "ordering kl: not computed, the search never needed it" in printed
    assert report["peak_rss_mb"] > 50 and f"peak memory {report['peak_rss_mb']:.0f} MiB" in printed
    bits = report["flavour_settings"]["trtmix.weight_bits"]
    assert bits == ("8" if cpu_features().int8_exact else "7") and f"weights: {bits}-bit (" in printed
    with sqlite3.connect(loose / "journal.sqlite") as db:
        assert not [key for (key,) in db.execute("SELECT key FROM cache") if key.startswith("ordering:")]
    tight = tmp_path / "tight"  # a budget all-INT8 misses: the bisection walks the kl order
    assert main(["-q", *_compile_args(recipe, tight, "--max-drop", "0.00001%")]) == 0
    report = json.loads((tight / "report.json").read_text())
    assert report["orderings_computed"] == {"kl": True} and report["ordering_seconds"]["kl"] > 0

