"""Sensitivities measured on compiled graphs with ONNX Runtime: they see fusion and activation effects.

* ``kl`` (baseline): each unit alone in INT8, the rest float.
* variant B (inter-layer, measured context): loss(all INT8) − loss(all INT8 but u): how much keeping u in high
  precision helps once every other unit is already quantized.  N + 1 compiles.
The loss is the distance of the outputs to the float model's on calibration batches: the divergence that fits the
built-in metric (KL, or 1 − cosine), or with the user's own metric 1 − metric(plan) / metric(FP32), where the
metric sees every output by name and the recipe's ``load_extras("calibration")`` (``UserDistance``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx

from trtmix.calibration.ranges import Ranges
from trtmix.data.user_metric import load_user_metric
from trtmix.evaluate import by_name, divergence
from trtmix.ir.graph import GraphIndex
from trtmix.ir.large import shape_view
from trtmix.ir.units import KIND_CONV, Unit
from trtmix.parallel.cluster import TASK_THREADS, Failure
from trtmix.progress import bar as progress_bar
from trtmix.quant.builder import Builder
from trtmix.quant.flavours import Flavour
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.smooth import conv_pads, spatial_sizes, unit_spatial
from trtmix.quant.switched import compile_switched, switch_feeds
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

LOG = logging.getLogger(__name__)


class TaskRunner(Protocol):
    """What scoring needs of a cluster (``trtmix.parallel.cluster.Cluster``)."""

    workers: int

    def put(self, value: Any) -> Any: ...

    def map(self, function: Callable[..., Any], calls: Any, label: str) -> list[Any]: ...


@dataclass(frozen=True)
class UserDistance:
    """The user's metric as a distance: ``1 − metric(plan) / metric(FP32)`` (0 for the FP32 model itself).

    Holds the metric's spec, not the function, so a Ray worker loads it from the user's file.
    """

    spec: str
    output_names: tuple[str, ...]
    extras: dict[str, Any]

    def bind(self, reference: list[list[np.ndarray]]) -> Callable[[list[list[np.ndarray]]], float]:
        """The distance of raw outputs (per batch, every output) to ``reference``'s."""
        metric = load_user_metric(self.spec)
        expected = by_name(self.output_names, reference)
        own = metric(expected, expected, self.extras) or 1.0  # a metric that scores FP32 0 leaves the raw score

        def distance(outputs: list[list[np.ndarray]]) -> float:
            return 1.0 - metric(by_name(self.output_names, outputs), expected, self.extras) / own

        return distance


class PlanScorer:
    """Distance of a plan's outputs to the float model's, on fixed feeds; plans compile through ``builder``."""

    def __init__(
        self,
        builder: Builder,
        metric: str,
        feeds: list[dict[str, np.ndarray]],
        default: Precision = Precision.FP16,
        output_index: int = 0,
        threads: int | None = None,
        fp32_nodes: frozenset[str] = frozenset(),
        user: UserDistance | None = None,
    ) -> None:
        self.builder, self.metric, self.feeds, self.default = builder, metric, feeds, default
        self.fp32_nodes = fp32_nodes  # the job's all-high plan's FP32 nodes, kept in every scored plan
        self.output_index = output_index  # the graph output the metric scores
        self.threads = threads  # ONNX Runtime's threads (None: all usable cores)
        reference = self._raw(builder.model)
        self._user = user.bind(reference) if user is not None else None
        self.reference = self._scored(reference)

    def _raw(self, model: onnx.ModelProto) -> list[list[np.ndarray]]:
        """Every output of ``model`` on every feed."""
        with OnnxRuntimeRunner(model, threads=self.threads, optimize=True) as runner:
            return [runner.infer(feed) for feed in self.feeds]

    def _scored(self, raw: list[list[np.ndarray]]) -> np.ndarray:
        return np.concatenate([outputs[self.output_index] for outputs in raw])

    def _distance(self, raw: list[list[np.ndarray]]) -> float:
        """The user's distance, or the built-in metric's divergence of the scored output."""
        if self._user is not None:
            return self._user(raw)
        return divergence(self.metric, self._scored(raw), self.reference)

    def distance(self, int8_units: list[str]) -> float:
        """Divergence of the plan with ``int8_units`` in INT8 (the rest in the default precision)."""
        plan = PrecisionPlan.with_int8(int8_units, default=self.default, fp32_nodes=self.fp32_nodes)
        return self._distance(self._raw(self.builder.compile(plan, check=False)))

    def close(self) -> None:
        """Nothing is held between plans."""


class SwitchedScorer(PlanScorer):
    """``PlanScorer`` from one switched graph and one session (``trtmix.quant.switched``).

    The exact scorer compiles and opens a session per plan; this one compiles once, so the ``kl`` ordering costs one
    graph plus a short run per unit, and a group of units is scored by turning on all its switches.
    """

    def __init__(
        self,
        builder: Builder,
        metric: str,
        feeds: list[dict[str, np.ndarray]],
        default: Precision = Precision.FP16,
        output_index: int = 0,
        threads: int | None = None,
        fp32_nodes: frozenset[str] = frozenset(),
        user: UserDistance | None = None,
    ) -> None:
        super().__init__(builder, metric, feeds, default, output_index, threads, fp32_nodes, user)
        if builder.ranges is None:
            raise ValueError("switched scoring needs activation ranges")
        graph, self.switches = compile_switched(builder.model, builder.units, builder.ranges, builder.flavour, default,
                                                fp32_nodes)  # fmt: skip
        self._session = OnnxRuntimeRunner(graph, threads=threads, optimize=True)

    def distance(self, int8_units: list[str]) -> float:
        """Divergence with ``int8_units`` in INT8: their switches flipped in the shared session."""
        raw = [self._session.infer({**feed, **switch_feeds(self.switches, int8_units)}) for feed in self.feeds]
        return self._distance(raw)

    def close(self) -> None:
        """Release the session."""
        self._session.close()


@dataclass
class ScoringJob:
    """What scoring plans needs, and nothing engine-bound, so a Ray worker can score its share of them."""

    model: onnx.ModelProto
    units: list[Unit]
    ranges: Ranges
    flavour: str | Flavour
    metric: str
    feeds: list[dict[str, np.ndarray]]
    default: Precision = Precision.FP16
    output_index: int = 0
    exact: bool = False  # a compile and a session per plan (else one switched graph)
    fp32_nodes: frozenset[str] = frozenset()  # the job's all-high plan's FP32 nodes (``trtmix.job.float_baseline``)
    user: UserDistance | None = None  # the user's own metric as a distance (else ``metric``'s divergence)

    def scorer(self, threads: int | None = None) -> PlanScorer:
        """A scorer of this job's plans (``close`` it): exact where the switched graph has no form for a unit."""
        unswitchable = [] if self.exact else padded_centred_convs(self.model, self.units, self.ranges)
        if unswitchable:
            LOG.info("scoring each plan on its own graph: %d centred convolutions pad inputs of dynamic size, which "
                     "the switched graph cannot flip (%s)", len(unswitchable), ", ".join(unswitchable[:3]))  # fmt: skip
        kind = PlanScorer if self.exact or unswitchable else SwitchedScorer
        builder = Builder(self.model, self.units, self.ranges, self.flavour)
        return kind(builder, self.metric, self.feeds, self.default, self.output_index, threads, self.fp32_nodes,
                    self.user)  # fmt: skip


def padded_centred_convs(model: onnx.ModelProto, units: list[Unit], ranges: Ranges) -> list[str]:
    """Centred convolutions that pad an input of dynamic spatial size: ``trtmix.quant.switched`` refuses them.

    Where the sizes are static, ``compile`` corrects the padded border with a constant map, which the switched graph
    adds behind the unit's switch; with dynamic sizes it writes a Pad of −z instead, which a switch cannot flip.
    Pads and sizes are read by compile's own readers (``conv_pads``, ``spatial_sizes``), so the two cannot disagree.
    """
    index = GraphIndex(model)
    found = [unit for unit in units if unit.kind == KIND_CONV and unit.inputs[0] in ranges.shifts
             and conv_pads(index.nodes[unit.name])]  # fmt: skip
    if not found:
        return []
    inferred = shape_view(model)
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)  # 0: dynamic
              for v in [*inferred.graph.value_info, *inferred.graph.input]}  # fmt: skip
    return [unit.name for unit in found if spatial_sizes(shapes.get(unit.inputs[0]), unit_spatial(unit)) is None]


def distances(
    job: ScoringJob, plans: list[list[str]], threads: int | None = None, label: str | None = None
) -> list[float]:
    """Each plan's divergence (its units INT8) from one scorer: one worker's share, or the whole serial run.

    ``label`` shows a progress bar under that name.
    """
    scorer = job.scorer(threads)
    try:
        return [scorer.distance(plan) for plan in (progress_bar(plans, desc=label, unit="plan") if label else plans)]
    finally:
        scorer.close()


def score_plans(
    job: ScoringJob, plans: list[list[str]], label: str, cluster: TaskRunner | None = None, progress: bool = True
) -> list[float]:
    """Each plan's divergence, in order: serially (``progress``: with a bar), or shared among ``cluster``'s workers.

    Each worker builds one scorer and scores every w-th plan.  A share whose worker was lost twice is scored here.
    """
    if cluster is None or (job.user is not None and job.user.spec.startswith("python:")):  # a function lives here
        return distances(job, plans, label=label if progress else None)
    shares = [list(range(start, len(plans), cluster.workers)) for start in range(min(cluster.workers, len(plans)))]
    shared_job = cluster.put(job)
    results = cluster.map(distances, [(shared_job, [plans[i] for i in share], TASK_THREADS) for share in shares],
                          label)  # fmt: skip
    scores: dict[int, float] = {}
    for share, result in zip(shares, results, strict=True):
        if isinstance(result, Failure):
            result = distances(job, [plans[i] for i in share])  # the job goes on without the lost worker
        scores.update(zip(share, result, strict=True))
    return [scores[index] for index in range(len(plans))]


def single_unit_scores(
    job: ScoringJob, units: list[Unit], cluster: TaskRunner | None = None, progress: bool = True
) -> dict[str, float]:
    """The ``kl`` baseline: divergence with only that unit in INT8."""
    names = [unit.name for unit in units]
    return dict(zip(names, score_plans(job, [[name] for name in names], "kl", cluster, progress), strict=True))


def context_scores(
    job: ScoringJob, units: list[Unit], cluster: TaskRunner | None = None, progress: bool = True
) -> dict[str, float]:
    """Variant B: divergence(all INT8) − divergence(all INT8 but u)."""
    names = [unit.name for unit in units]
    plans = [names, *([other for other in names if other != name] for name in names)]
    everything, *without = score_plans(job, plans, "B", cluster, progress)
    return {name: everything - score for name, score in zip(names, without, strict=True)}
