"""The whole job behind ``trtmix compile``: export → units → calibrate → order → search → holdout → outputs.

Every probe is compiled, built by the backend and timed for real; latency is never estimated.  Probes go to the
journal the moment they are measured, artifacts are content-addressed (plan hash + flavour + backend version), so
rerunning the same command resumes and measures nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from trtmix import api
from trtmix.backends import get_backend
from trtmix.backends.onnxruntime import OnnxRuntimeBackend
from trtmix.calibrate import CalibrationConfig
from trtmix.compile import compile_plan
from trtmix.data import checked_batches, load_batches
from trtmix.errors import TrtmixError
from trtmix.evaluate import score
from trtmix.graph import load_onnx, model_sha256
from trtmix.io import atomic_write_bytes, atomic_write_text
from trtmix.journal import Journal
from trtmix.orderings import order_units
from trtmix.plan import Precision, PrecisionPlan
from trtmix.ranges import Ranges
from trtmix.search import BisectionSearch, Budget
from trtmix.sensitivity.measured import PlanScorer, single_unit_scores
from trtmix.sensitivity.run import TORCH_METHODS
from trtmix.trtexec import trtexec_command
from trtmix.units import require_units
from trtmix.user_code import import_module_or_file, split_spec

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileConfig:
    """Everything ``trtmix compile`` needs besides the model and the output folder."""

    data: str
    budget: Budget
    metric: str = "agreement"
    flavour: str = "ort-cpu"
    backend: str = "onnxruntime"
    ordering: str = "kl"
    compare: tuple[str, ...] = ()
    frontier: int = 0
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    data_args: tuple[tuple[str, str], ...] = ()
    eval_batches: int = 8
    runs: int = 20
    warmup: int = 3
    threads: int | None = None
    default: Precision = Precision.FP16
    exporter: str = "auto"
    input_names: tuple[str, ...] = ()
    strict_precision: bool = False
    tensorrt: tuple[tuple[str, str], ...] = ()

    def identity(self, model_hash: str) -> str:
        """Hash of what makes measurements comparable; the journal refuses to mix runs with different ones."""
        keys = ("data", "metric", "flavour", "backend", "calibration", "data_args", "eval_batches", "runs", "threads")
        settings = {key: asdict(self)[key] for key in keys}
        text = json.dumps({"model": model_hash, **settings}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Evaluation:
    """The search and holdout feeds, the float model's outputs on them, labels, and the metric."""

    metric: str
    feeds: dict[str, list[dict[str, np.ndarray]]]
    reference: dict[str, np.ndarray]
    labels: dict[str, np.ndarray | None]

    def score(self, split: str, outputs: np.ndarray) -> float:
        """The metric of ``outputs`` on ``split``."""
        return score(self.metric, outputs, self.reference[split], self.labels[split])


class Pipeline:
    """One compile job in ``output``; see the module docstring."""

    def __init__(self, source: str, output: Path, config: CompileConfig, fresh: bool = False) -> None:
        self.source, self.output, self.config = source, output, config
        output.mkdir(parents=True, exist_ok=True)
        self.artifacts = output / "artifacts"
        self.artifacts.mkdir(exist_ok=True)
        self.model_path = self._float_model(fresh)
        self.model = load_onnx(self.model_path)
        self.units = require_units(self.model, str(self.model_path))
        tensorrt = {key: json.loads(value) for key, value in config.tensorrt}
        self.backend = get_backend(config.backend, config.threads, output / "timing.cache", tensorrt)
        self.oracle = OnnxRuntimeBackend(threads=config.threads)  # float references and measured orderings
        self.journal = Journal(output / "journal.sqlite", config.identity(model_sha256(self.model)), fresh=fresh)
        self.ranges = self._ranges()
        self.evaluation = self._evaluation()
        self.measured = 0

    def _float_model(self, fresh: bool) -> Path:
        """The float ONNX: the given file, or the torch factory exported once into the output folder."""
        if self.source.endswith(".onnx"):
            return Path(self.source)
        from trtmix.export import export_once

        path = self.output / "model.onnx"
        if fresh:
            path.with_suffix(".source").unlink(missing_ok=True)
        return export_once(
            self.source, path, exporter=self.config.exporter, input_names=list(self.config.input_names) or None
        )

    def _ranges(self) -> Ranges:
        ranges = api.collect_ranges(
            self.model_path,
            self.config.data,
            "calibration",
            self.config.calibration,
            data_args=dict(self.config.data_args),
            cache_dir=api.default_cache_dir(),
        )
        ranges.save(self.output / "ranges.json")
        return ranges

    def _feeds(self, split: str) -> list[dict[str, np.ndarray]]:
        batches = load_batches(self.config.data, split, **dict(self.config.data_args))
        return list(checked_batches(batches, self.model, limit=self.config.eval_batches))

    def _evaluation(self) -> Evaluation:
        feeds = {split: self._feeds(split) for split in ("search", "holdout")}
        session = self.oracle.session(self.model_path)
        reference = {
            split: np.concatenate([session.run(None, f)[0] for f in batches]) for split, batches in feeds.items()
        }
        labels = {split: self._labels(split, len(reference[split])) for split in feeds}
        return Evaluation(self.config.metric, feeds, reference, labels)

    def _labels(self, split: str, rows: int) -> np.ndarray | None:
        """Labels of the evaluated rows of ``split`` from the recipe's ``load_labels(split)`` (metric accuracy)."""
        if self.config.metric != "accuracy":
            return None
        module_name, _ = split_spec(self.config.data, default_function="load_data")
        labels_function = (
            None
            if self.config.data.endswith(".npz")
            else getattr(import_module_or_file(module_name), "load_labels", None)
        )
        if labels_function is None:
            raise TrtmixError(
                "--metric accuracy needs labels, but the data recipe has no load_labels(split) function.",
                fix="add load_labels(split) returning the labels in load_data order, or use --metric agreement",
            )
        labels = np.asarray(labels_function(split=split))
        if len(labels) < rows:
            raise TrtmixError(f"load_labels({split!r}) returned {len(labels)} labels for {rows} evaluated samples.")
        return labels[:rows]

    def outputs(self, artifact: Path, split: str) -> np.ndarray:
        """The first output of ``artifact`` on every evaluated batch of ``split``."""
        return np.concatenate([self.backend.run(artifact, feed)[0] for feed in self.evaluation.feeds[split]])

    def artifact_paths(self, plan: PrecisionPlan, flavour: str | None = None) -> tuple[Path, Path]:
        """Content-addressed paths of a plan's compiled ONNX and its backend artifact."""
        stem = f"{plan.stable_hash()}.{flavour or self.config.flavour}"
        suffix = "engine" if self.backend.name == "tensorrt" else "onnx"
        artifact = self.artifacts / f"{stem}.{self.backend.name}-{self.backend.version}.{suffix}"
        return self.artifacts / f"{stem}.onnx", artifact

    @property
    def float_artifact(self) -> Path:
        """The float model as the backend built it for the baseline."""
        return self.artifacts / f"float.{self.backend.name}.onnx"

    def build(self, plan: PrecisionPlan, flavour: str | None = None) -> Path:
        """Compile and build ``plan`` in ``flavour`` (default: the job's), reusing artifacts already on disk."""
        onnx_path, artifact = self.artifact_paths(plan, flavour)
        if not artifact.is_file():
            compiled = compile_plan(self.model, plan, self.ranges, flavour or self.config.flavour)
            atomic_write_bytes(onnx_path, compiled.SerializeToString())
            self.backend.build(onnx_path, artifact)
        return artifact

    def measure(self, plan: PrecisionPlan, k: int) -> dict[str, Any]:
        """The journal record of ``plan``: measured now unless a previous run already did."""
        plan_hash = plan.stable_hash()
        recorded = self.journal.get(plan_hash)
        if recorded is not None:
            return recorded
        record: dict[str, Any] = {"plan_hash": plan_hash, "k": k, "plan": plan.to_dict()}
        start = time.perf_counter()
        try:
            artifact = self.build(plan)
            value = self.evaluation.score("search", self.outputs(artifact, "search"))
            stats = self.backend.time(
                artifact, self.evaluation.feeds["search"][0], self.config.runs, self.config.warmup
            )
            record.update(status="ok", accuracy=value, latency=stats.to_dict(), artifact=str(artifact))
            record.update(self._precision_check(plan, artifact))
        except TrtmixError as err:
            LOG.warning("probe k=%d failed: %s", k, err)
            record.update(status="failed", error=str(err), accuracy=None, latency=None, artifact=None)
        record["seconds"] = time.perf_counter() - start
        self.journal.record(plan_hash, record)
        self.measured += 1
        return record

    def _precision_check(self, plan: PrecisionPlan, artifact: Path) -> dict[str, Any]:
        """On TensorRT: the units whose engine precision differs from the plan; fatal with --strict-precision."""
        engine_information = getattr(self.backend, "engine_information", None)
        if engine_information is None:
            return {}
        from trtmix.engine_report import check_plan, describe, mismatches

        wrong = mismatches(check_plan(engine_information(artifact), self.units, plan))
        if wrong and self.config.strict_precision:
            raise TrtmixError(f"--strict-precision: the engine does not run the plan:\n{describe(wrong)}")
        return {"precision_mismatches": [asdict(m) for m in wrong]}

    def baseline(self) -> dict[str, Any]:
        """The float model: metric on both splits and latency on the backend (cached in the journal)."""
        cached = self.journal.cached("baseline")
        if cached is not None:
            return cached
        artifact = self.backend.build(self.model_path, self.float_artifact)
        baseline = {
            split: self.evaluation.score(split, self.evaluation.reference[split]) for split in ("search", "holdout")
        }
        stats = self.backend.time(artifact, self.evaluation.feeds["search"][0], self.config.runs, self.config.warmup)
        result = {"accuracy": baseline["search"], "holdout": baseline["holdout"], "latency": stats.to_dict()}
        self.journal.store("baseline", result)
        return result

    def order(self, name: str) -> tuple[list[str], dict[str, float]]:
        """An ordering of the units, cached in the journal with the seconds it took (``kl`` costs a build per unit).

        The Hessian-based orderings are computed together: every one this job asks for comes from one set of
        Hutchinson traces, and they reuse the ``kl`` scores (which place the units the Hessian cannot score).
        """
        cached = self.journal.cached(f"ordering:{name}")
        if cached is not None:
            return cached["order"], cached["scores"]
        if name in TORCH_METHODS:
            wanted = {name, *(other for other in iter_orderings(self.config) if other in TORCH_METHODS)}
            for method, ordering in self._torch_orders(sorted(wanted)).items():
                self.journal.store(f"ordering:{method}", ordering)
            return self.order(name)
        start = time.perf_counter()
        if name == "kl":
            scorer = PlanScorer(
                self.model, self.ranges, self.config.flavour, self.config.metric, self._calibration_feeds(),
                self.config.default,
            )  # fmt: skip
            progress = tqdm(total=len(self.units), desc="ordering kl", unit="unit")
            kl_scores = single_unit_scores(scorer, self.units, lambda: progress.update())
            progress.close()
            order, scores = order_units(name, self.units, self.model, lambda unit: kl_scores[unit.name])
        else:
            order, scores = order_units(name, self.units, self.model)
        self.journal.store(
            f"ordering:{name}", {"order": order, "scores": scores, "seconds": time.perf_counter() - start}
        )
        return order, scores

    def ordering_seconds(self, name: str) -> float | None:
        """Seconds ``name`` cost when it was computed (the Hessian ones include their share: kl, traces, variant)."""
        cached = self.journal.cached(f"ordering:{name}")
        return cached.get("seconds") if cached else None

    def _calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        batches = load_batches(self.config.data, "calibration", **dict(self.config.data_args))
        return list(checked_batches(batches, self.model, limit=2))

    def _torch_orders(self, methods: list[str]) -> dict[str, dict[str, Any]]:
        """Hessian-based orderings (they need the torch model, so the source must be MODULE:FUNCTION)."""
        if self.source.endswith(".onnx"):
            raise TrtmixError(
                f"--ordering {methods[0]} needs the torch model, but the source is an ONNX file.",
                fix="pass MODULE:FUNCTION, or use --ordering kl, noise or random",
            )
        from trtmix.sensitivity.run import SensitivitySettings, compute_sensitivity
        from trtmix.user_code import load_model_factory

        _, kl_scores = self.order("kl")
        kl_seconds = self.ordering_seconds("kl") or 0.0
        torch_model, _ = load_model_factory(self.source)
        settings = SensitivitySettings(
            methods=tuple(methods), metric=self.config.metric, flavour=self.config.flavour, batches=2
        )
        result = compute_sensitivity(
            self.model, self.units, self.ranges, self._calibration_feeds(), settings, torch_model, kl_scores=kl_scores
        )
        timings = result["timings_seconds"]
        variant = {"augmented-a": "a", "augmented-b": "b", "augmented-c": "c"}
        orderings = {}
        for method in methods:
            order = result["orderings"][method]
            seconds = kl_seconds + timings["hessian"] + timings.get(variant.get(method, ""), 0.0)
            orderings[method] = {
                "order": order,
                "scores": {u: float(i) for i, u in enumerate(order)},
                "seconds": seconds,
            }
        return orderings

    def search(self, ordering: str, baseline_accuracy: float, budget: Budget | None = None) -> BisectionSearch:
        """Run one bisection along ``ordering`` to its end, measuring (or replaying) each probe.

        ``budget`` overrides the configured one: probes do not depend on it, so one job can search several.
        """
        order, _ = self.order(ordering)
        search = BisectionSearch(order, budget or self.config.budget, self.config.default, self.config.frontier)
        progress = tqdm(total=search.max_builds + self.config.frontier, desc=f"search ({ordering})", unit="probe")
        while (k := search.ask()) is not None:
            record = self.measure(search.plan_for(k), k)
            relative = record["accuracy"] / baseline_accuracy if record["status"] == "ok" else None
            latency = record["latency"]["median_ms"] if record["status"] == "ok" else None
            search.tell(k, relative, latency, record["status"])
            progress.update()
            progress.set_postfix_str(
                f"k={k}/{search.units} " + (f"{relative:.4%} {latency:.1f} ms" if relative else "failed")
            )
        progress.close()
        return search

    def write_plan_outputs(self, plan: PrecisionPlan) -> dict[str, str]:
        """Write the chosen plan's files.

        They are plan.json, the ONNX in the search flavour and in the tensorrt flavour, the built artifact, and the
        equivalent trtexec command.
        """
        plan.save(self.output / "plan.json")
        onnx_path, artifact = self.artifact_paths(plan)
        chosen = {"plan": "plan.json"}
        shutil.copyfile(onnx_path, self.output / f"chosen.{self.config.flavour}.onnx")
        shutil.copyfile(artifact, self.output / f"chosen.{self.config.flavour}.{self.backend.name}.onnx")
        chosen["onnx"] = f"chosen.{self.config.flavour}.onnx"
        chosen["artifact"] = f"chosen.{self.config.flavour}.{self.backend.name}.onnx"
        tensorrt_onnx = self.output / "chosen.tensorrt.onnx"
        if self.config.flavour != "tensorrt":
            atomic_write_bytes(
                tensorrt_onnx, compile_plan(self.model, plan, self.ranges, "tensorrt").SerializeToString()
            )
        command = trtexec_command(tensorrt_onnx.name, "chosen.engine", "timing.cache")
        atomic_write_text(self.output / "trtexec.txt", command + "\n")
        chosen.update(tensorrt_onnx=tensorrt_onnx.name, trtexec=command)
        return chosen


def holdout_check(pipeline: Pipeline, plan: PrecisionPlan, baseline: dict[str, Any]) -> dict[str, float]:
    """The chosen plan on the holdout split, which the search never saw, beside its search-split figure."""
    _, artifact = pipeline.artifact_paths(plan)
    value = pipeline.evaluation.score("holdout", pipeline.outputs(artifact, "holdout"))
    return {"accuracy": value, "relative": value / baseline["holdout"] if baseline["holdout"] else float("nan")}


def iter_orderings(config: CompileConfig) -> Iterable[str]:
    """The primary ordering, then the comparison ones (each once)."""
    return dict.fromkeys([config.ordering, *config.compare])
