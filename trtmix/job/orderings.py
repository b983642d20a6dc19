"""The unit orderings one job walks along, each computed once and cached in the journal with the seconds it took."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from trtmix.calibration.ranges import Ranges
from trtmix.data.recipe import Recipe
from trtmix.errors import TrtmixError
from trtmix.ir.groups import UnitGroup
from trtmix.ir.units import Unit
from trtmix.job.evaluation import scored_output
from trtmix.quant.builder import Builder
from trtmix.quant.plan import Precision
from trtmix.quant.weights import WeightQuantizer
from trtmix.runtime.attribution import LatencyModel
from trtmix.search.journal import Journal
from trtmix.search.orderings import gain_order, order_by_score, order_groups, order_units
from trtmix.sensitivity.measured import ScoringJob, TaskRunner, UserDistance, score_plans
from trtmix.sensitivity.run import TORCH_METHODS

CALIBRATION_FEEDS = 2  # calibration batches the measured orderings score on


@dataclass(frozen=True)
class OrderingSettings:
    """What the orderings need of a job's settings."""

    names: tuple[str, ...] = ("kl",)  # every ordering the job walks (the Hessian ones are computed together)
    default: Precision = Precision.FP16  # the precision of units a scored plan leaves high
    kl_exact: bool = False  # score each unit on its own compiled graph instead of one switched graph
    score_output: str | None = None  # the graph output scored (None: the first)


def check_source(source: str, names: Iterable[str]) -> None:
    """Refuse, before any work, a Hessian ordering of an ONNX source (orderings are computed lazily, late)."""
    torch_methods = [name for name in names if name in TORCH_METHODS]
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
        settings: OrderingSettings,
        recipe: Recipe,
        builder: Builder,
        journal: Journal,
        latency: Callable[[], LatencyModel | None] = lambda: None,
        groups: list[UnitGroup] | None = None,
        cluster: Callable[[], TaskRunner | None] = lambda: None,
        fp32_nodes: frozenset[str] = frozenset(),
        metric: str | None = None,
        user: UserDistance | None = None,
    ) -> None:
        """``metric``: the job's metric, ``auto`` resolved (``Evaluation.metric``); ``user``: the user's own."""
        self.source, self.settings, self.recipe = source, settings, recipe
        self.builder, self.journal = builder, journal
        self.metric = metric or "cosine"
        self.user = user  # the user's own metric, as the orderings' distance
        self.fp32_nodes = fp32_nodes  # the all-high plan's FP32 nodes: every scored plan keeps them
        self.cluster = cluster  # with --workers / --ray-address: where unit scores are measured (started lazily)
        self.latency = latency  # the job's per-unit latency model (``gain`` needs it)
        self.groups = groups or []  # with --groups: the bisection's steps (``group_order``)

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
            wanted = {name, *(other for other in self.settings.names if other in TORCH_METHODS)}
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
            order, scores = order_units(name, self.units, self.builder.model, quantizer=self.quantizer())
        self.journal.store(f"ordering:{name}", {"order": order, "scores": scores,
                                               "seconds": time.perf_counter() - start})  # fmt: skip
        return order, scores

    def group_order(self, name: str) -> tuple[list[str], dict[str, float]]:
        """``--groups``: the groups (by name), least sensitive first, and each group's score (cached in the journal).

        ``kl`` scores each group of several units with all its members INT8 together; ``gain`` divides that by the
        members' summed saving.  Any other ordering places each group where its most sensitive member stands.
        """
        cached = self.journal.cached(f"ordering:{name}:groups")
        if cached is not None:
            return cached["order"], cached["scores"]
        start = time.perf_counter()
        names = [group.name for group in self.groups]
        if name in ("kl", "gain"):
            divergence = self._group_divergence()
            scores = divergence if name == "kl" else self._gain_scores(divergence)
            order = order_by_score(scores, names)
        else:
            order, scores = order_groups(self.order(name)[0], self.groups)
        unit_ordering = "kl" if name in ("kl", "gain") else name  # what the group scores were built on
        seconds = time.perf_counter() - start + (self.seconds(unit_ordering) or 0.0)
        self.journal.store(f"ordering:{name}:groups", {"order": order, "scores": scores, "seconds": seconds})
        return order, scores

    def _group_divergence(self) -> dict[str, float]:
        """The kl score of every group: its unit's for a group of one, all members INT8 together for the others."""
        _, unit_scores = self.order("kl")
        several = {g.name: g.members for g in self.groups if len(g.members) > 1}
        together = self.journal.cached("kl-group-scores") or {}
        if set(several) - set(together):
            together = self._measured_scores([list(members) for members in several.values()], "kl groups")
            together = dict(zip(several, together, strict=True))
            self.journal.store("kl-group-scores", together)
        return {g.name: together.get(g.name, unit_scores[g.name]) for g in self.groups}

    def _gain_scores(self, divergence: dict[str, float]) -> dict[str, float]:
        """``gain`` per group: divergence per millisecond its members save (their profiled savings, summed)."""
        model = self._require_latency()
        savings = {g.name: sum(model.savings_ms.get(m, 0.0) for m in g.members) for g in self.groups}
        return gain_order(divergence, savings, list(divergence))[1]

    def seconds(self, name: str) -> float | None:
        """Seconds ``name`` cost when it was computed (the Hessian ones include their share: kl, traces, variant)."""
        cached = self.journal.cached(f"ordering:{name}")
        return cached.get("seconds") if cached else None

    def _gain(self) -> tuple[list[str], dict[str, float]]:
        """``kl`` divergence per millisecond each unit saves, from the engine's per-layer profile."""
        _, divergence = self.order("kl")
        return gain_order(divergence, self._require_latency().savings_ms, [unit.name for unit in self.units])

    def _require_latency(self) -> LatencyModel:
        model = self.latency()
        if model is None:
            raise TrtmixError(
                f"--ordering gain needs the engine's per-layer profile, and the {self.builder.require_backend().name} "
                "backend gives none.",
                fix="use --backend openvino or onnxruntime, or --ordering kl",
            )
        return model

    def quantizer(self) -> WeightQuantizer:
        """The job's weight quantizer, as its builder compiles each unit's single-unit plan (``noise``, Hessians)."""
        return WeightQuantizer(self.builder.ranges, self.builder.flavour, self.settings.default, self.fp32_nodes)

    def _kl_scores(self) -> dict[str, float]:
        """Each unit alone in INT8, measured on calibration batches (one switched graph, or a compile per unit)."""
        scores = self._measured_scores([[unit.name] for unit in self.units], "ordering kl")
        return dict(zip([unit.name for unit in self.units], scores, strict=True))

    def _measured_scores(self, plans: list[list[str]], label: str) -> list[float]:
        """Divergence of each plan (its units INT8, the rest float) on calibration batches, from one scorer."""
        feeds = self.recipe.batches(self.builder.model, "calibration", CALIBRATION_FEEDS)
        index, _ = scored_output(self.builder.model, self.settings.score_output)
        ranges: Ranges = self.builder.ranges  # type: ignore[assignment]
        job = ScoringJob(self.builder.model, self.units, ranges, self.builder.flavour, self.metric, feeds,
                         self.settings.default, index, exact=self.settings.kl_exact,
                         fp32_nodes=self.fp32_nodes, user=self.user)  # fmt: skip
        return score_plans(job, plans, label, self.cluster())

    def _torch_orders(self, methods: list[str]) -> dict[str, dict[str, Any]]:
        """Hessian-based orderings (they need the torch model, so the source must be MODULE:FUNCTION)."""
        from trtmix.data.user_code import load_model_factory
        from trtmix.sensitivity.run import SensitivitySettings, compute_sensitivity

        _, kl_scores = self.order("kl")
        kl_seconds = self.seconds("kl") or 0.0
        torch_model, _ = load_model_factory(self.source)
        settings = SensitivitySettings(methods=tuple(methods), metric=self.metric,
                                       flavour=self.builder.flavour.name, batches=CALIBRATION_FEEDS)  # fmt: skip
        feeds = self.recipe.batches(self.builder.model, "calibration", CALIBRATION_FEEDS)
        ranges: Ranges = self.builder.ranges  # type: ignore[assignment]
        result = compute_sensitivity(
            self.builder.model, self.units, ranges, feeds, settings, torch_model, kl_scores=kl_scores,
            quantizer=self.quantizer(),
        )  # fmt: skip
        timings = result["timings_seconds"]
        variant = {"augmented-a": "a", "augmented-b": "b", "augmented-c": "c"}
        orderings = {}
        for method in methods:
            order = result["orderings"][method]
            seconds = kl_seconds + timings["hessian"] + timings.get(variant.get(method, ""), 0.0)
            orderings[method] = {"order": order, "scores": {u: float(i) for i, u in enumerate(order)},
                                 "seconds": seconds}  # fmt: skip
        return orderings
