"""Smoke test of the paper benchmark: `python benchmarks/paper.py --quick` runs and prints its table."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="needs the demo extra (scikit-learn digits)")
pytestmark = pytest.mark.demo
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper.py"


def test_paper_quick(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.strip().startswith("99%")]
    assert {row.split()[1] for row in rows} == {"kl", "random"}
    assert any(line.startswith("normalised frontier area") for line in lines)
    assert any(line.startswith("ORT quantize_static all-INT8") for line in lines)
    assert (tmp_path / "digits-resnet" / "report.json").is_file()
