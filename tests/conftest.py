"""Shared fixtures: tiny seeded models exported once per session, seeded data and max-calibrated ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from trtmix.calibration.calibrate import calibrate_max, tensors_to_calibrate
from trtmix.calibration.ranges import Ranges
from trtmix.export import export_onnx
from trtmix.ir.graph import load_onnx
from trtmix.ir.units import find_units
from trtmix.models import tiny

SHAPES = {"convnet": (2, 3, 16, 16), "transformer": (2, 8, 16)}
# A data recipe for the tiny conv net: 4 seeded batches per split, for the tests that run whole compile jobs.
TINY_RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(4):
        yield {"input": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
"""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own calibration cache, so no test sees another's results (or the user's)."""
    monkeypatch.setenv("TRTMIX_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """(model name, exporter) → exported ONNX path, for both tiny models and both exporters."""
    folder = tmp_path_factory.mktemp("exported")
    paths = {}
    for name in SHAPES:
        for exporter in ("dynamo", "legacy"):
            model, samples = getattr(tiny, name)()
            path = folder / f"{name}_{exporter}.onnx"
            export_onnx(model, samples, path, exporter=exporter)
            paths[(name, exporter)] = path
    return paths


def batches_for(name: str, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded random feeds for a tiny model."""
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal(SHAPES[name]).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="session")
def calibrated(exported: dict[tuple[str, str], Path]) -> dict[str, tuple[onnx.ModelProto, Ranges]]:
    """Model name → (dynamo-exported float model, ranges from 4 calibration batches)."""
    result = {}
    for name in SHAPES:
        model = load_onnx(exported[(name, "dynamo")])
        tensors = tensors_to_calibrate(model, find_units(model))
        result[name] = (model, calibrate_max(model, batches_for(name, 4, seed=1), tensors, progress=False))
    return result


def run_ort(model: onnx.ModelProto, feed: dict[str, np.ndarray], optimize: bool = True) -> np.ndarray:
    """First output of ``model`` on ``feed`` with the ONNX Runtime backend (1 thread)."""
    from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(model, threads=1, optimize=optimize) as runner:
        return np.asarray(runner.infer(feed)[0], dtype=np.float32)


def journal_cached(output: Path, key: str) -> dict:
    """A value a compile job cached in its journal (orderings, scores, the latency model), read back from SQLite."""
    import json
    import sqlite3

    with sqlite3.connect(output / "journal.sqlite") as db:
        (value,) = db.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
    return json.loads(value)


def assert_shipped_graphs_load(output: Path, elsewhere: Path) -> list[str]:
    """Every ONNX file at the top of a job's folder, copied alone to ``elsewhere``, loads in ONNX Runtime and OpenVINO.

    Only the top-level files travel (no ``artifacts/``, no tensor store): what a user copies into a release. ONNX
    Runtime's own optimised artifact holds ORT-only fused ops, so OpenVINO is not asked to read that one.
    Returns the names checked.
    """
    import shutil

    import onnxruntime
    import openvino

    elsewhere.mkdir(parents=True)
    for file in output.iterdir():
        if file.is_file():
            shutil.copy2(file, elsewhere / file.name)
    shutil.rmtree(output)  # nothing may still point back into the job's folder
    names = sorted(path.name for path in elsewhere.glob("*.onnx"))
    assert names, "the job shipped no ONNX file"
    for name in names:
        onnxruntime.InferenceSession(str(elsewhere / name), providers=["CPUExecutionProvider"])
        if not name.endswith(".onnxruntime.onnx"):
            openvino.Core().read_model(str(elsewhere / name))
    return names


def layernorm_model(residual: bool = False, width: int = 16, seed: int = 0, *, off_centre: bool = False,
                    gemm_head: bool = False) -> onnx.ModelProto:  # fmt: skip
    """X → LayerNorm (an outlier channel) → two MatMul+bias units (Q/K-like) → their sum, seeded.

    ``residual``: the sum also adds the LayerNorm's output; ``off_centre``: a random β, so centring has work;
    ``gemm_head``: the sum feeds a Gemm with a bias (a third kind of unit).
    """
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.5, 1.5, width).astype(np.float32)
    gamma[2] = 30.0  # an outlier channel the LayerNorm itself makes
    beta = rng.standard_normal(width).astype(np.float32) if off_centre else np.zeros(width, np.float32)
    inits = [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta")]
    nodes = [helper.make_node("LayerNormalization", ["input", "gamma", "beta"], ["ln"], name="ln", axis=-1)]
    for name in ("q", "k"):
        inits += [numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) * 0.2, f"{name}_w"),
                  numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, f"{name}_b")]
        nodes += [helper.make_node("MatMul", ["ln", f"{name}_w"], [f"{name}_mm"], name=f"{name}/MatMul"),
                  helper.make_node("Add", [f"{name}_mm", f"{name}_b"], [f"{name}_out"],
                                   name=f"{name}/Add")]  # fmt: skip
    nodes.append(helper.make_node("Add", ["q_out", "k_out"], ["sum"], name="sum"))
    final = "sum"
    if residual:
        nodes.append(helper.make_node("Add", ["sum", "ln"], ["res"], name="residual"))
        final = "res"
    if gemm_head:
        inits += [numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) * 0.2, "out_w"),
                  numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, "out_b")]  # fmt: skip
        nodes.append(helper.make_node("Gemm", [final, "out_w", "out_b"], ["y"], name="out/Gemm", transB=1))
        final = "y"
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "ln", [value("input", onnx.TensorProto.FLOAT, [4, width])],
                              [value(final, onnx.TensorProto.FLOAT, [4, width])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def layernorm_feeds(count: int, seed: int, width: int = 16) -> list[dict[str, np.ndarray]]:
    """Seeded standard-normal inputs [4, width] for ``layernorm_model``."""
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((4, width)).astype(np.float32)} for _ in range(count)]
