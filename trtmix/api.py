"""The Python API: the same steps as the CLI, returning values instead of printing."""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from trtmix.backends import LatencyStats, get_backend

__all__ = ["BuildResult", "build", "collect_ranges", "get_backend", "list_units", "profile", "resolve_plan"]
from trtmix.calibrate import CalibrationConfig, calibrate, calibrate_cached
from trtmix.compile import compile_plan
from trtmix.data import load_batches
from trtmix.errors import CompileError, PlanError
from trtmix.graph import QDQ_OPS, load_onnx
from trtmix.io import atomic_write_bytes
from trtmix.plan import Precision, PrecisionPlan
from trtmix.ranges import Ranges
from trtmix.units import Unit, require_units
from trtmix.validate import validate_tensorrt_graph

LOG = logging.getLogger(__name__)
PLAN_SHORTHANDS = {"int8": Precision.INT8, "fp16": Precision.FP16, "fp32": Precision.FP32}


@dataclass(frozen=True)
class BuildResult:
    """A compiled plan: where it was written and what it contains."""

    onnx_path: Path
    flavour: str
    plan: PrecisionPlan
    int8_units: list[str]
    unit_count: int
    qdq_nodes: int
    artifact: Path | None
    source: Path


def list_units(model_path: str | Path) -> list[Unit]:
    """The quantizable units of an ONNX model (an error if it has none)."""
    return require_units(load_onnx(model_path), str(model_path))


def resolve_plan(spec: str | PrecisionPlan, units: list[Unit]) -> PrecisionPlan:
    """A plan from a file path, a ``PrecisionPlan``, or a shorthand: ``int8`` / ``fp16`` / ``fp32`` for all units."""
    if isinstance(spec, PrecisionPlan):
        return spec
    if spec in PLAN_SHORTHANDS:
        precision = PLAN_SHORTHANDS[spec]
        if precision is Precision.INT8:
            return PrecisionPlan.with_int8(u.name for u in units)
        return PrecisionPlan(default=precision)
    if not Path(spec).is_file():
        raise PlanError(
            f"Plan {spec!r} is neither a file nor a shorthand.", expected="a plan JSON file, or int8 / fp16 / fp32"
        )
    return PrecisionPlan.load(spec)


def default_cache_dir() -> Path:
    """The calibration cache folder: ``$TRTMIX_CACHE``, else ``$XDG_CACHE_HOME/trtmix`` or ``~/.cache/trtmix``."""
    if os.environ.get("TRTMIX_CACHE"):
        return Path(os.environ["TRTMIX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trtmix"


def collect_ranges(
    model_path: str | Path,
    data: str | Iterable[dict[str, np.ndarray]],
    split: str = "calibration",
    config: CalibrationConfig | None = None,
    *,
    data_args: dict[str, str] | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Ranges:
    """Activation (and optionally weight) ranges of every tensor a plan may quantize.

    Args:
        model_path: the float ONNX model.
        data: a recipe spec (``recipe.py[:func]``, ``module:func``, ``data.npz``, an image folder) or feeds.
        split: the split a recipe is asked for.
        config: method, percentile, batch count, weight method (default: max over 8 batches).
        data_args: keyword arguments for the recipe or loader.
        cache_dir: cache folder (a recipe spec only); None disables the cache.
        progress: show a progress bar.
    """
    model = load_onnx(model_path)
    units = require_units(model, str(model_path))
    config = config or CalibrationConfig()
    if not isinstance(data, str):
        return calibrate(model, units, data, config, progress=progress)
    spec_id = data + "".join(f" {k}={v}" for k, v in sorted((data_args or {}).items()))

    def load() -> Iterable[object]:
        return load_batches(data, split, **(data_args or {}))

    return calibrate_cached(model, units, spec_id, load, split, config, cache_dir, progress=progress)


def build(
    model_path: str | Path,
    plan: str | PrecisionPlan,
    output: str | Path,
    flavour: str = "tensorrt",
    ranges: Ranges | None = None,
    backend: str = "onnxruntime",
    artifact: str | Path | None = None,
    tensorrt: dict[str, object] | None = None,
) -> BuildResult:
    """Compile ``plan`` into ``output`` (atomically); with ``artifact``, also build it with ``backend``."""
    model = load_onnx(model_path)
    units = require_units(model, str(model_path))
    resolved = resolve_plan(plan, units)
    compiled = compile_plan(model, resolved, ranges, flavour)
    onnx.checker.check_model(compiled, full_check=True)
    if flavour == "tensorrt":
        issues = validate_tensorrt_graph(compiled, units, resolved)
        if issues:
            raise CompileError(
                "The compiled graph breaks TensorRT's Q/DQ or typing rules:\n  " + "\n  ".join(issues),
                fix="this is a trtmix bug; please report it with the model and plan",
            )
    atomic_write_bytes(output, compiled.SerializeToString())
    built = None
    if artifact is not None:
        built = get_backend(backend, tensorrt=tensorrt).build(Path(output), Path(artifact))
    counts = Counter(node.op_type for node in compiled.graph.node)
    int8_names = [u.name for u in units if resolved.precision_of(u.name) is Precision.INT8]
    qdq = sum(counts[op] for op in QDQ_OPS)
    return BuildResult(Path(output), flavour, resolved, int8_names, len(units), qdq, built, Path(model_path))


def profile(
    model_path: str | Path,
    feeds: dict[str, np.ndarray],
    backend: str = "onnxruntime",
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    tensorrt: dict[str, object] | None = None,
) -> LatencyStats:
    """Build ``model_path`` with ``backend`` in a temporary folder and time it on ``feeds``."""
    engine = get_backend(backend, threads=threads, tensorrt=tensorrt)
    with tempfile.TemporaryDirectory(prefix="trtmix-profile-") as folder:
        artifact = engine.build(Path(model_path), Path(folder) / "artifact.onnx")
        return engine.time(artifact, feeds, runs=runs, warmup=warmup)
