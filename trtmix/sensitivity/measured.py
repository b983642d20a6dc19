"""Sensitivities measured on compiled graphs with ONNX Runtime: they see fusion and activation effects.

* ``kl`` (baseline): each unit alone in INT8, the rest float.
* variant B (inter-layer, measured context): loss(all INT8) − loss(all INT8 but u): how much keeping u in high
  precision helps once every other unit is already quantized.  N + 1 compiles.
The loss is the distance of the outputs to the float model's on calibration batches (KL, or 1 − cosine).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from trtmix.evaluate import divergence
from trtmix.ir.units import Unit
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.switched import compile_switched, switch_feeds
from trtmix.runtime.build import Builder
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner


class PlanScorer:
    """Distance of a plan's outputs to the float model's, on fixed feeds; plans compile through ``builder``."""

    def __init__(
        self,
        builder: Builder,
        metric: str,
        feeds: list[dict[str, np.ndarray]],
        default: Precision = Precision.FP16,
        output_index: int = 0,
    ) -> None:
        self.builder, self.metric, self.feeds, self.default = builder, metric, feeds, default
        self.output_index = output_index  # the graph output the metric scores
        self.reference = self._outputs(builder.model)

    def _outputs(self, model: onnx.ModelProto) -> np.ndarray:
        with OnnxRuntimeRunner(model, optimize=True) as runner:
            return np.concatenate([runner.infer(feed)[self.output_index] for feed in self.feeds])

    def distance(self, int8_units: list[str]) -> float:
        """Divergence of the plan with ``int8_units`` in INT8 (the rest in the default precision)."""
        plan = PrecisionPlan.with_int8(int8_units, default=self.default)
        return divergence(self.metric, self._outputs(self.builder.compile(plan, check=False)), self.reference)

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
    ) -> None:
        super().__init__(builder, metric, feeds, default, output_index)
        if builder.ranges is None:
            raise ValueError("switched scoring needs activation ranges")
        graph, self.switches = compile_switched(builder.model, builder.units, builder.ranges, builder.flavour, default)
        self._session = OnnxRuntimeRunner(graph, optimize=True)

    def distance(self, int8_units: list[str]) -> float:
        """Divergence with ``int8_units`` in INT8: their switches flipped in the shared session."""
        outputs = [self._session.infer({**feed, **switch_feeds(self.switches, int8_units)})[self.output_index]
                   for feed in self.feeds]  # fmt: skip
        return divergence(self.metric, np.concatenate(outputs), self.reference)

    def close(self) -> None:
        """Release the session."""
        self._session.close()


def single_unit_scores(
    scorer: PlanScorer, units: list[Unit], tick: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """The ``kl`` baseline: divergence with only that unit in INT8."""
    scores = {}
    for unit in units:
        scores[unit.name] = scorer.distance([unit.name])
        tick()
    return scores


def context_scores(scorer: PlanScorer, units: list[Unit], tick: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Variant B: divergence(all INT8) − divergence(all INT8 but u)."""
    names = [u.name for u in units]
    everything = scorer.distance(names)
    tick()
    scores = {}
    for unit in units:
        scores[unit.name] = everything - scorer.distance([n for n in names if n != unit.name])
        tick()
    return scores
