"""The unit orderings one job walks along, each computed once and cached in the journal with the seconds it took."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from trtmix.calibration.ranges import Ranges
from trtmix.errors import TrtmixError
from trtmix.ir.units import Unit
from trtmix.job.config import CompileConfig
from trtmix.job.evaluation import scored_output, split_feeds
from trtmix.runtime.attribution import LatencyModel
from trtmix.runtime.build import Builder
from trtmix.search.journal import Journal
from trtmix.search.orderings import gain_order, order_units
from trtmix.sensitivity.measured import PlanScorer, SwitchedScorer, single_unit_scores
from trtmix.sensitivity.run import TORCH_METHODS

CALIBRATION_FEEDS = 2  # calibration batches the measured orderings score on


def check_source(source: str, config: CompileConfig) -> None:
    """Refuse, before any work, a Hessian ordering of an ONNX source (orderings are computed lazily, late)."""
    torch_methods = [name for name in config.orderings() if name in TORCH_METHODS]
    if torch_methods and source.endswith(".onnx"):
        raise TrtmixError(
            f"--ordering {torch_methods[0]} needs the torch model, but the source is an ONNX file.",
            fix="pass MODULE:FUNCTION, or use --ordering kl, noise or random",
        )


class JobOrderings:
    """``order(name)`` for the job's source, model and ranges; ``kl`` compiles through the job's builder."""

    def __init__(
        self,
        source: str,
        config: CompileConfig,
        builder: Builder,
        journal: Journal,
        latency: Callable[[], LatencyModel | None] = lambda: None,
    ) -> None:
        self.source, self.config, self.builder, self.journal = source, config, builder, journal
        self.latency = latency  # the job's per-unit latency model (``gain`` needs it)

    @property
    def units(self) -> list[Unit]:
        """The units being ordered."""
        return self.builder.units

    def order(self, name: str) -> tuple[list[str], dict[str, float]]:
        """An ordering of the units, least sensitive first, and each unit's score (cached in the journal).

        The Hessian-based orderings are computed together: every one this job asks for comes from one set of
        Hutchinson traces, and they reuse the ``kl`` scores (which place the units the Hessian cannot score).
        """
        cached = self.journal.cached(f"ordering:{name}")
        if cached is not None:
            return cached["order"], cached["scores"]
        if name in TORCH_METHODS:
            wanted = {name, *(other for other in self.config.orderings() if other in TORCH_METHODS)}
            for method, ordering in self._torch_orders(sorted(wanted)).items():
                self.journal.store(f"ordering:{method}", ordering)
            return self.order(name)
        start = time.perf_counter()
        if name == "kl":
            kl_scores = self._kl_scores()
            order, scores = order_units(name, self.units, self.builder.model, lambda unit: kl_scores[unit.name])
        elif name == "gain":
            order, scores = self._gain()
        else:
            order, scores = order_units(name, self.units, self.builder.model)
        self.journal.store(f"ordering:{name}", {"order": order, "scores": scores,
                                               "seconds": time.perf_counter() - start})  # fmt: skip
        return order, scores

    def seconds(self, name: str) -> float | None:
        """Seconds ``name`` cost when it was computed (the Hessian ones include their share: kl, traces, variant)."""
        cached = self.journal.cached(f"ordering:{name}")
        return cached.get("seconds") if cached else None

    def _gain(self) -> tuple[list[str], dict[str, float]]:
        """``kl`` divergence per millisecond each unit saves, from the engine's per-layer profile."""
        _, divergence = self.order("kl")
        model = self.latency()
        if model is None:
            raise TrtmixError(
                f"--ordering gain needs the engine's per-layer profile, and the {self.builder.require_backend().name} "
                "backend gives none.",
                fix="use --backend openvino or onnxruntime, or --ordering kl",
            )
        return gain_order(divergence, model.savings_ms, [unit.name for unit in self.units])

    def _kl_scores(self) -> dict[str, float]:
        """Each unit alone in INT8, measured on calibration batches (a compile and a short run per unit)."""
        feeds = split_feeds(self.config, self.builder.model, "calibration", CALIBRATION_FEEDS)
        index, _ = scored_output(self.builder.model, self.config.score_output)
        kind = PlanScorer if self.config.kl_exact else SwitchedScorer
        scorer = kind(self.builder, self.config.metric, feeds, self.config.default, index)
        try:
            with tqdm(total=len(self.units), desc="ordering kl", unit="unit") as progress:
                return single_unit_scores(scorer, self.units, lambda: progress.update())
        finally:
            scorer.close()

    def _torch_orders(self, methods: list[str]) -> dict[str, dict[str, Any]]:
        """Hessian-based orderings (they need the torch model, so the source must be MODULE:FUNCTION)."""
        from trtmix.data.user_code import load_model_factory
        from trtmix.sensitivity.run import SensitivitySettings, compute_sensitivity

        _, kl_scores = self.order("kl")
        kl_seconds = self.seconds("kl") or 0.0
        torch_model, _ = load_model_factory(self.source)
        settings = SensitivitySettings(methods=tuple(methods), metric=self.config.metric,
                                       flavour=self.builder.flavour.name, batches=CALIBRATION_FEEDS)  # fmt: skip
        feeds = split_feeds(self.config, self.builder.model, "calibration", CALIBRATION_FEEDS)
        ranges: Ranges = self.builder.ranges  # type: ignore[assignment]
        result = compute_sensitivity(
            self.builder.model, self.units, ranges, feeds, settings, torch_model, kl_scores=kl_scores
        )
        timings = result["timings_seconds"]
        variant = {"augmented-a": "a", "augmented-b": "b", "augmented-c": "c"}
        orderings = {}
        for method in methods:
            order = result["orderings"][method]
            seconds = kl_seconds + timings["hessian"] + timings.get(variant.get(method, ""), 0.0)
            orderings[method] = {"order": order, "scores": {u: float(i) for i, u in enumerate(order)},
                                 "seconds": seconds}  # fmt: skip
        return orderings
