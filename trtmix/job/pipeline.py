"""One compile job, assembled from parts that each do one job.

``Workspace`` (folder, export, journal) → ranges → ``Builder`` (the one build path) → ``Evaluation`` (feeds and
float references) → ``JobOrderings`` → ``SearchDriver`` (probes) → outputs.  ``Pipeline`` wires them together in
that order, checks the flavour × backend pair before anything runs, and offers the handful of calls that
``trtmix.job.run`` and the benchmarks use.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

from trtmix import registry
from trtmix.calibration.calibrate import CalibrationConfig
from trtmix.calibration.collect import collect_ranges, default_cache_dir
from trtmix.calibration.ranges import Ranges
from trtmix.data.recipe import Recipe
from trtmix.errors import CalibrationError, TrtmixError
from trtmix.ir.groups import find_groups
from trtmix.ir.large import model_sha256
from trtmix.job.config import CompileConfig
from trtmix.job.driver import ProbeSettings, SearchDriver
from trtmix.job.evaluation import load_evaluation
from trtmix.job.float_baseline import MAGNITUDE_BATCHES, FloatBaseline, choose_float_baseline, observed_magnitudes
from trtmix.job.latency import job_latency_model
from trtmix.job.orderings import JobOrderings, OrderingSettings, check_source
from trtmix.job.probes import measure_on_cluster
from trtmix.job.quantizers import QuantizerSettings, job_quantizers
from trtmix.job.steps import step
from trtmix.job.validity import check_job_graphs
from trtmix.job.workspace import Workspace
from trtmix.parallel.cluster import Cluster
from trtmix.quant.builder import Builder
from trtmix.quant.flavours import Flavour, get_flavour
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.range_choice import applied_choice, choose_ranges
from trtmix.runtime import get_backend
from trtmix.runtime.attribution import LatencyModel
from trtmix.search.bisection import BisectionSearch, Budget, LazyOrder
from trtmix.sensitivity.measured import UserDistance


class Pipeline:
    """One compile job in ``output``; see the module docstring.

    The wiring (with ``run.py``, the job's steps, the only job modules that read ``CompileConfig``; see
    ``tests/test_layers.py``): it resolves the settings once into the objects the stages take
    (``Recipe``, ``Flavour``, ``Backend``, ``Workspace``, ``Evaluation``, ``Journal``, the cluster) and the few
    settings each stage needs (``ProbeSettings``, ``OrderingSettings``, ``QuantizerSettings``).
    """

    def __init__(self, source: str, output: Path, config: CompileConfig, fresh: bool = False) -> None:
        config.validate()
        check_source(source, config.orderings())
        self.source, self.output, self.config = source, output, config
        self.recipe = Recipe.of(config.data, config.data_args)
        self.flavour = get_flavour(config.flavour, config.weight_bits)
        self.tensorrt_settings = tensorrt = {key: json.loads(value) for key, value in config.tensorrt}
        cache_dir = output / "artifacts" / "openvino-cache"
        self.backend = get_backend(config.backend, config.threads, output / "timing.cache", tensorrt,
                                   flavour=config.flavour, cache_dir=cache_dir)  # fmt: skip
        self.flavour.check_backend(self.backend.name)  # `auto` resolved: still before any work
        self.probe_settings = ProbeSettings(config.timing_policy(), config.default, config.frontier,
                                            config.strict_precision, config.relative_to)  # fmt: skip
        with step("the export", output):
            self.workspace = Workspace(source, output, config.exporter, config.input_names, fresh)
        try:
            self._assemble(source, config)
        except BaseException:
            self.workspace.close()
            raise

    def _assemble(self, source: str, config: CompileConfig) -> None:
        """Everything after the workspace: ranges, builder, journal, evaluation, driver, orderings."""
        self.model_path, self.model, self.units = self.workspace.model_path, self.workspace.model, self.workspace.units
        self.flavour.check_model(self.model)  # before calibration, the first costly step
        with step("calibration", self.output):
            calibrated = self._calibrated()
        engine = {"flavour": self.flavour.options(), "backend": self.backend.name,
                  "version": self.backend.version, "options": self.backend.options()}  # fmt: skip
        self.journal = self.workspace.journal(config.identity(model_sha256(self.model), engine))
        with step("loading the search and holdout data", self.output):
            self.evaluation = load_evaluation(self.recipe, self.model, self.workspace.original_path, config.metric,
                                              config.eval_batches, config.score_output, config.threads)  # fmt: skip
        cover = getattr(self.backend, "cover_feeds", None)  # TensorRT: profiles for dynamic inputs from the feeds
        if cover is not None:
            feeds = [feed for split in self.evaluation.feeds.values() for feed in split]
            self.tensorrt_settings["profiles"] = cover(self.model, feeds)
        with step("the float baseline (which nodes float16 cannot hold)", self.output):
            self.float_baseline = self._float_baseline(self._builder(calibrated))
        fp32_nodes = self.float_baseline.plan.fp32_nodes
        quantizer_settings = QuantizerSettings(config.smooth, config.bias_correction, config.default, config.threads,
                                               weight_rounding=config.weight_rounding)  # fmt: skip
        calibration_batches = partial(self.recipe.batches, self.model, "calibration", config.calibration.batches)
        with step("the choice of quantizers", self.output):
            range_choice = (lambda: self._per_tensor_ranges(calibrated)) if config.range_choice else None
            self.ranges, self.quantizers = job_quantizers(quantizer_settings, self.model, self.units, calibrated,
                                                          self.flavour, self.journal, self.evaluation,
                                                          fp32_nodes, range_choice,
                                                          calibration=calibration_batches,
                                                          saved=self.output / "ranges.json")  # fmt: skip
        self.ranges.save(self.output / "ranges.json")  # what every build of the job uses
        self.builder = self._builder(self.ranges)
        self.driver = SearchDriver(self.probe_settings, self.builder, self.evaluation, self.journal, self.cluster,
                                   measure_on_cluster)  # fmt: skip
        self.driver.base = self.float_baseline.plan
        with step("checking the job's graphs are valid ONNX", self.output):
            check_job_graphs(self.builder, self.driver.base, self.journal)
        self.groups = find_groups(self.units, self.model) if config.groups else []
        self._cluster: Cluster | None = None
        ordering_settings = OrderingSettings(tuple(config.orderings()), config.default, config.kl_exact,
                                             config.score_output)  # fmt: skip
        self.orderings = JobOrderings(source, ordering_settings, self.recipe, self.builder, self.journal,
                                      self.latency_model, self.groups, self.cluster, self.driver.base.fp32_nodes,
                                      self.evaluation.ordering_metric, self._user_distance())  # fmt: skip

    def _user_distance(self) -> UserDistance | None:
        """With the user's own metric: the orderings' distance, on calibration batches with their extras."""
        if self.evaluation.user_metric is None:
            return None
        return UserDistance(self.config.metric, self.evaluation.output_names, self.recipe.extras("calibration"))

    def settings_record(self) -> dict[str, Any]:
        """What the job was asked for, as the report records it beside what was resolved."""
        config = self.config
        return {"ordering": config.ordering, "backend": config.backend, "flavour": config.flavour,
                "relative_to": config.relative_to, "metric": config.metric, "budget": asdict(config.budget),
                "budget_text": config.budget.describe(config.reference)}  # fmt: skip

    def cluster(self) -> Cluster | None:
        """With ``--workers`` / ``--ray-address``: Ray, started on first use; else None (Ray is never imported).

        A job whose all-INT8 plan meets the budget computes no ordering, and so never starts Ray.
        """
        if self._cluster is None and self.config.parallel.enabled:
            self._cluster = Cluster(self.config.parallel)
        return self._cluster

    def close(self) -> None:
        """Close the journal, stop Ray if this job started it, and release the output folder for the next job."""
        self.journal.close()
        if self._cluster is not None:
            self._cluster.close()
        self.workspace.close()

    def _calibrated(self, config: CalibrationConfig | None = None) -> Ranges:
        """The calibrated ranges and channel statistics (cached across jobs by model and data).

        ``config``: another method's (the per-tensor choice's candidates); its histograms come from the same cache.
        """
        return collect_ranges(self.model_path, self.recipe.spec, "calibration", config or self.config.calibration,
                              data_args=dict(self.recipe.args), cache_dir=default_cache_dir(),
                              progress=config is None)  # fmt: skip

    def _per_tensor_ranges(self, calibrated: Ranges) -> tuple[Ranges | None, dict[str, Any]]:
        """Each activation's range method chosen by its readers' output error (``quant/range_choice``), or why not.

        The job's method comes first (the base); the choice is journalled as tensor → method, so a resumed job
        rebuilds it from the candidates instead of scoring again.
        """
        base = self.config.calibration
        methods = [base.method, *(m for m in registry.CALIBRATION_METHODS if m != base.method)]
        candidates = {m: calibrated if m == base.method else self._calibrated(replace(base, method=m)) for m in methods}
        cached = self.journal.cached("per-tensor-ranges")
        if cached is not None:
            chosen = applied_choice(candidates, cached["methods"]) if "methods" in cached else None
            return chosen, cached["record"]
        try:
            batches = self.recipe.batches(self.model, "calibration", base.batches)
            chosen, record = choose_ranges(self.model, self.units, candidates, batches,
                                           symmetric=self.flavour.symmetric)  # fmt: skip
        except CalibrationError as err:  # too few batches, or nothing scored: one method for every tensor
            why = str(err).splitlines()[0]
            self.journal.store("per-tensor-ranges", {"record": {"skipped": why}})
            return None, {"skipped": why}
        report = record.to_dict()
        self.journal.store("per-tensor-ranges", {"record": report, "methods": dict(chosen.meta["per_tensor"])})
        return chosen, report

    def _float_baseline(self, builder: Builder) -> FloatBaseline:
        """The all-high plan: its FP32 nodes from observed magnitudes and measured regions (``job/float_baseline``).

        Decided before the quantizers, so their options are scored with these FP32 nodes; float plans hold no Q/DQ,
        so ``builder``'s ranges (the calibrated ones) do not change them.
        """
        config = self.config
        if builder.flavour.float_base is not Precision.FP16 or config.default is not Precision.FP16:
            return FloatBaseline(PrecisionPlan(default=config.default), {"skipped": "the float base is FP32"})
        magnitudes = self.journal.cached("float-magnitudes")
        if magnitudes is None:
            feeds = self.recipe.batches(self.model, "calibration", MAGNITUDE_BATCHES)
            magnitudes = observed_magnitudes(self.model, feeds)
            self.journal.store("float-magnitudes", magnitudes)
        fp32_score = self.evaluation.reference_score("search")

        scorer = SearchDriver(self.probe_settings, builder, self.evaluation, self.journal)  # its ``scored``

        def score(plan: PrecisionPlan) -> float:
            record = scorer.scored(plan)
            if record["status"] != "ok":
                raise TrtmixError(f"A float-baseline plan ({len(plan.fp32_nodes)} FP32 nodes) could not be built or "
                                  f"scored: {record['error']}",
                                  fix="use --flavour ort-cpu, or report it with the model")  # fmt: skip
            return float(record["accuracy"])

        return choose_float_baseline(self.model, config.default, magnitudes, score, fp32_score,
                                     config.float_tolerance(), self.journal)  # fmt: skip

    def _builder(self, ranges: Ranges, flavour: Flavour | None = None) -> Builder:
        """A builder of ``flavour`` (default: the job's) with ``ranges``."""
        original = self.workspace.original if self.workspace.original is not self.model else None
        return Builder(self.model, self.units, ranges, flavour or self.flavour, self.backend,
                       self.workspace.artifacts, original=original)  # fmt: skip

    @property
    def measured(self) -> int:
        """Probes measured (not replayed) by this run."""
        return self.driver.measured

    @property
    def float_artifact(self) -> Path:
        """The float model as the backend built it for the baseline."""
        return self.driver.float_artifact()

    def build(self, plan: PrecisionPlan, flavour: str | None = None) -> Path:
        """``plan`` compiled in ``flavour`` (default: the job's) and built; reuses artifacts already on disk."""
        if flavour in (None, self.flavour.name):
            return self.builder.build(plan).artifact
        builder = self._builder(self.ranges, get_flavour(flavour))
        return builder.build(plan).artifact

    def outputs(self, artifact: Path, split: str) -> Any:
        """The first output of ``artifact`` on every evaluated batch of ``split``."""
        return self.driver.outputs(artifact, split)

    def baseline(self) -> dict[str, Any]:
        """What budgets are relative to (all-high plan or FP32), with both references (``SearchDriver.baseline``)."""
        return self.driver.baseline()

    def measure(self, plan: PrecisionPlan) -> dict[str, Any]:
        """The journal record of ``plan``, measured now unless a previous run already did."""
        return self.driver.measure(plan)

    def latency_model(self) -> LatencyModel | None:
        """Per-unit latency from the engine's per-layer profile of the all-high and all-INT8 builds (cached)."""
        return job_latency_model(self.driver)

    def order(self, name: str) -> tuple[list[str], dict[str, float]]:
        """An ordering of the units, least sensitive first (cached in the journal)."""
        return self.orderings.order(name)

    def ordering_seconds(self, name: str) -> float | None:
        """Seconds ``name`` cost when it was computed (with ``--groups``: its group ordering, unit scores included)."""
        return self.orderings.seconds(f"{name}:groups" if self.groups else name)

    def search(self, ordering: str, baseline_accuracy: float, budget: Budget | None = None) -> BisectionSearch:
        """One bisection along ``ordering``; ``budget`` overrides the configured one (probes do not depend on it).

        The ordering is computed only if the bisection needs it (not when all-INT8 meets the budget).
        """
        order, members = self._lazy_order(ordering)
        return self.driver.search(order, ordering, baseline_accuracy, budget or self.config.budget, members)

    def searches_together(self, orderings: list[str], baseline_accuracy: float) -> dict[str, BisectionSearch]:
        """One bisection per ordering, driven together on the job's cluster (``--workers`` / ``--ray-address``)."""
        cluster = self.cluster()
        if cluster is None:
            raise TrtmixError("Internal error: searches run together only on Ray (--workers or --ray-address).")
        orders = {name: self._lazy_order(name) for name in orderings}
        return self.driver.searches(orders, baseline_accuracy, self.config.budget, cluster)

    def _lazy_order(self, ordering: str) -> tuple[LazyOrder, dict[str, Any]]:
        """The steps of ``ordering`` (units, or groups with their members), computed when first needed."""
        if self.groups:
            order = LazyOrder([g.name for g in self.groups], lambda: self.orderings.group_order(ordering)[0])
            return order, {g.name: g.members for g in self.groups}
        return LazyOrder([unit.name for unit in self.units], lambda: self.order(ordering)[0]), {}
