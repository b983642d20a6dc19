"""Smoke test of the paper benchmark: `python benchmarks/paper.py --quick` runs and prints its tables."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="needs the demo extra (scikit-learn digits)")
pytestmark = pytest.mark.demo
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper.py"


def test_paper_quick(tmp_path):
    command = [sys.executable, str(SCRIPT), "--quick", "--output", str(tmp_path), "--json", str(tmp_path / "r.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in result.stdout.splitlines() if line[:1] == "|"]
    searched = {row[1]: row for row in cells if row[0] == "99%"}
    assert set(searched) == {"augmented-a", "kl", "random"}
    references = {row[1] for row in cells if row[0] == "ref"}
    assert {"float (FP32)", "all-INT8 (trtmix)", "ORT quantize_static, default ops"} <= references
    summaries = {row[0]: row for row in cells if row[0] in searched}  # the per-ordering table
    assert set(summaries) == set(searched)
    for row in summaries.values():
        area, divergences = float(row[3]), [float(value) for value in row[4:]]
        assert 0.0 <= area <= 1.0 and len(divergences) == 3 and all(d >= 0 for d in divergences)
    (model,) = json.loads((tmp_path / "r.json").read_text())
    float_row = next(row for row in model["references"] if row["name"] == "float (FP32)")
    assert float_row["test acc"] > 0.95  # the digits ResNet really learned its labels
    for row in model["rows"]:  # every search met its budget on real labels, and says what it cost
        assert row["search"] >= 0.99 and row["probes"] >= 1 and row["alone_seconds"] > 0
