"""The Python API: the same steps as the CLI, returning values instead of printing."""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtmix.calibration.collect import collect_ranges, default_cache_dir
from trtmix.calibration.ranges import Ranges
from trtmix.errors import PlanError
from trtmix.ir.fold import load_float_model
from trtmix.ir.graph import QDQ_OPS, save_onnx
from trtmix.ir.large import check_model
from trtmix.ir.units import Unit, require_units
from trtmix.job.config import CompileConfig
from trtmix.quant.builder import Builder
from trtmix.quant.flavours import get_flavour
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.smooth import SmoothSettings, prepare_ranges
from trtmix.runtime import LatencyStats, get_backend, resolve_backend

__all__ = [
    "BuildResult", "CompileConfig", "CompileResult", "build", "collect_ranges", "compile", "default_cache_dir",
    "get_backend", "list_units", "profile", "resolve_plan",
]  # fmt: skip
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
    weight_bits: int = 8  # int8 weight width written (ort-cpu: 7 on CPUs without VNNI or AMX)


def list_units(model_path: str | Path) -> list[Unit]:
    """The quantizable units of an ONNX model (an error if it has none)."""
    return require_units(load_float_model(model_path), str(model_path))


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


def build(
    model_path: str | Path,
    plan: str | PrecisionPlan,
    output: str | Path,
    flavour: str = "tensorrt",
    ranges: Ranges | None = None,
    backend: str = "auto",
    artifact: str | Path | None = None,
    tensorrt: dict[str, object] | None = None,
    weight_bits: int | None = None,
    smooth: SmoothSettings | None = None,
    bias_correction: bool = True,
) -> BuildResult:
    """Compile ``plan`` into ``output`` (atomically, checked by the flavour's rules); with ``artifact``, also build it.

    An unknown flavour, or a ``backend`` that cannot run the flavour's graphs, is an error before any work.
    ``weight_bits`` (7 or 8) sets the ``ort-cpu`` weight width; by default it follows the CPU.  ``smooth`` (default:
    off, as nothing is measured here; ``compile`` measures it) and ``bias_correction`` (default on) adjust the
    quantizers when ``ranges`` are given.
    """
    backend = resolve_backend(backend, flavour)
    configured = get_flavour(flavour, weight_bits)
    configured.check_backend(backend)
    smooth = smooth or SmoothSettings(enabled=False)
    smooth.validate()
    model = load_float_model(model_path)
    units = require_units(model, str(model_path))
    resolved = resolve_plan(plan, units)
    if ranges is not None:
        ranges, _ = prepare_ranges(model, units, ranges, smooth, bias_correction, configured)
    compiled = Builder(model, units, ranges, configured).compile(resolved, check=True)
    check_model(compiled, full_check=True)
    save_onnx(compiled, output)
    built = None
    if artifact is not None:
        built = get_backend(backend, tensorrt=tensorrt, flavour=flavour).build(Path(output), Path(artifact))
    counts = Counter(node.op_type for node in compiled.graph.node)
    int8_names = [u.name for u in units if resolved.precision_of(u.name) is Precision.INT8]
    qdq = sum(counts[op] for op in QDQ_OPS)
    bits = int(configured.metadata()["trtmix.weight_bits"])
    return BuildResult(Path(output), flavour, resolved, int8_names, len(units), qdq, built, Path(model_path), bits)


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
    cover = getattr(engine, "cover_feeds", None)  # TensorRT: a dynamic input's profile covers the feeds
    if cover is not None:
        cover(onnx.load(str(model_path), load_external_data=False), [feeds])
    with tempfile.TemporaryDirectory(prefix="trtmix-profile-") as folder:
        artifact = engine.build(Path(model_path), Path(folder) / "artifact.onnx")
        return engine.time(artifact, feeds, runs=runs, warmup=warmup)


Metric = Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], float]


@dataclass
class CompileResult:
    """What a compile job chose and wrote (``trtmix.compile``).

    ``plan`` is the chosen plan (all FP32 when the graph you brought was kept, ``original_kept``), None when no plan
    met the budget; ``onnx`` and ``artifact`` the shipped files; ``frontier`` the measured probes on the
    accuracy-latency Pareto front; ``report`` the whole report (``result["key"]`` reads it too).
    """

    output: Path
    report: dict[str, Any]
    plan: PrecisionPlan | None
    onnx: Path | None
    artifact: Path | None
    frontier: list[dict[str, Any]]
    original_kept: bool

    @classmethod
    def from_report(cls, report: dict[str, Any], output: Path) -> CompileResult:
        """The result of the job that wrote ``report`` into ``output``."""
        files = report.get("files") or {}
        plan = PrecisionPlan.load(output / files["plan"]) if files.get("plan") else None
        return cls(output, report, plan, output / files["onnx"] if files.get("onnx") else None,
                   output / files["artifact"] if files.get("artifact") else None,
                   [p for p in report["probes"] if p.get("pareto")], report["chosen"] == "original-fp32")  # fmt: skip

    def __getitem__(self, key: str) -> Any:
        """``result["chosen"]``: the report's entries, as ``trtmix compile``'s report.json has them."""
        return self.report[key]


def compile(  # noqa: A001
    model: Any, output: str | Path, config: CompileConfig | None = None, *, data: Any = None,
    sample_inputs: tuple[Any, ...] | None = None, metric: str | Metric | None = None, fresh: bool = False,
    **settings: Any,
) -> CompileResult:  # fmt: skip
    """The whole job ``trtmix compile`` runs: the fastest measured plan inside the budget, every probe timed.

    ``model``: an ``.onnx`` path, ``MODULE:FUNCTION`` (a torch factory), an ``onnx.ModelProto``, or a
    ``torch.nn.Module`` with ``sample_inputs``.  ``data``: a recipe spec, or split name → iterable of feed dicts
    (``calibration``, ``search``, ``holdout``).  ``metric``: a built-in name, ``FILE.py:FUNCTION``, or your function
    ``metric(candidate, reference, extras) -> float`` (``trtmix.data.user_metric``).  Without ``config``, ``settings``
    are ``CompileConfig`` fields, with ``max_drop`` ("1%", the default) for the budget.  Rerunning resumes from the
    output folder's journal; ``fresh`` starts over.
    """
    from dataclasses import replace

    from trtmix.data.recipes import register_splits
    from trtmix.data.user_metric import register
    from trtmix.job.run import run_compile
    from trtmix.search.bisection import Budget

    output = Path(output)
    spec = data if isinstance(data, str) or data is None else register_splits(data)
    if config is None:
        if spec is None:
            raise PlanError("trtmix.compile needs data: a recipe spec, or a dict of split → feeds.",
                            expected="data={'calibration': [...], 'search': [...], 'holdout': [...]}")  # fmt: skip
        budget = Budget.parse(settings.pop("max_drop", "1%"))
        config = CompileConfig(data=spec, budget=budget, **settings)
    elif spec is not None:
        config = replace(config, data=spec)
    if metric is not None:
        config = replace(config, metric=metric if isinstance(metric, str) else register(metric))
    source = _source(model, sample_inputs, output)
    return CompileResult.from_report(run_compile(source, output, config, fresh=fresh), output)


def _source(model: Any, sample_inputs: tuple[Any, ...] | None, output: Path) -> str:
    """The job's source spec: a path or ``MODULE:FUNCTION`` as given; an in-memory model written into ``output``."""
    if isinstance(model, (str, Path)):
        return str(model)
    output.mkdir(parents=True, exist_ok=True)
    if isinstance(model, onnx.ModelProto):
        return str(save_onnx(model, output / "given.onnx"))
    import torch

    if isinstance(model, torch.nn.Module):
        if sample_inputs is None:
            raise PlanError("A torch model needs sample_inputs to be exported.",
                            expected="trtmix.compile(module, out, sample_inputs=(x,), data=...)")  # fmt: skip
        from trtmix.export import export_onnx

        path = output / "given.onnx"
        export_onnx(model, tuple(sample_inputs), path)
        return str(path)
    raise PlanError(f"trtmix.compile cannot compile a {type(model).__name__}.",
                    expected="a .onnx path, MODULE:FUNCTION, an onnx.ModelProto or a torch.nn.Module")  # fmt: skip
