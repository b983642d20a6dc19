"""The job's all-high plan: float16 where float16 holds the model, FP32 where it does not, decided by measuring.

Budgets are relative to the all-high plan, so a wrong all-high plan hides behind "100% of the all-high plan": a
Paddle2ONNX text detector's all-FP16 graph had 0.48-0.81 cosine to FP32.  This step makes the baseline faithful:

1. **Observed magnitudes**, as NVIDIA's ModelOpt AutoCast does: every node with a float input or output whose
   largest magnitude on calibration batches exceeds ``DATA_MAX`` (AutoCast's ``data_max``, 512) stays FP32.  Beyond
   it, a square or a sum of a few such values overflows float16's 65,504.
2. **Measured**: the all-high plan is scored against FP32 on the search split.  If it keeps less than
   ``1 - tolerance`` of FP32's score (a tenth of the budget's drop by default), the float nodes are cut into
   ``REGIONS`` regions in topological order; each region is scored alone in FP32, and the regions that recover the
   most are kept FP32, fewest first, until the plan is within tolerance.  Every score is journaled, so a resumed
   job does not measure it again.

The result is a ``PrecisionPlan`` whose ``fp32_nodes`` say which nodes stay FP32; every probe of the search builds
on it.  The ``ort-cpu`` flavour (float32 base) and ``--default fp32`` need none of this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from trtmix.errors import TrtmixError
from trtmix.ir.graph import GraphIndex
from trtmix.ir.large import shape_view
from trtmix.progress import bar as progress_bar
from trtmix.quant.float_rules import float32_rules
from trtmix.quant.float_types import FP16_MAX
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.search.journal import Journal

LOG = logging.getLogger(__name__)
DATA_MAX = 512.0  # ModelOpt AutoCast's data_max
REGIONS = 16
MAGNITUDE_BATCHES = 2
CONSTANT_SCAN_LIMIT = 1 << 20  # weights that large hold no mask constants: not scanned
OUTPUTS_PER_RUN = 256  # intermediate outputs read per ORT run: bounds the memory of one pass on a large model
Feed = dict[str, np.ndarray]
Scorer = Callable[[PrecisionPlan], float]


@dataclass
class FloatBaseline:
    """The all-high plan, and the record of how its FP32 nodes were chosen (the report's ``float_baseline``)."""

    plan: PrecisionPlan
    record: dict[str, Any] = field(default_factory=dict)


def observed_magnitudes(model: onnx.ModelProto, feeds: Sequence[Feed]) -> dict[str, float]:
    """The largest |value| of every float tensor of ``model`` over ``feeds`` (ONNX Runtime, no optimisation)."""
    from trtmix.runtime.onnxruntime import ort_session

    inferred = shape_view(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    names = [o for node in model.graph.node if node.op_type != "Constant" for o in node.output
             if o and types.get(o) == onnx.TensorProto.FLOAT]  # fmt: skip
    value_info = {v.name: v for v in inferred.graph.value_info}
    existing = {o.name for o in model.graph.output}
    largest: dict[str, float] = {}
    for start in range(0, len(names), OUTPUTS_PER_RUN):
        chunk = names[start : start + OUTPUTS_PER_RUN]
        extra = [value_info[name] for name in chunk if name not in existing and name in value_info]
        session = ort_session(model, optimize=False, extra_outputs=extra)
        readable = [name for name in chunk if name in {o.name for o in session.get_outputs()}]
        for feed in feeds:
            for name, value in zip(readable, session.run(readable, feed), strict=True):
                finite = np.abs(value[np.isfinite(value)]) if value.size else np.zeros(1)
                largest[name] = max(largest.get(name, 0.0), float(finite.max()) if finite.size else 0.0)
    return largest


def magnitude_nodes(model: onnx.ModelProto, magnitudes: dict[str, float], data_max: float = DATA_MAX) -> dict[str, str]:
    """Nodes float16 cannot hold → why: AutoCast's ``data_max`` rule on observed values, ``init_max`` on constants.

    A node with a float input or output observed beyond ``data_max``, or reading a float constant beyond float16's
    largest value (an attention mask's -3.4e38), stays FP32.
    """
    index = GraphIndex(model)
    reasons = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        seen = [(name, magnitudes[name]) for name in [*node.input, *node.output] if name in magnitudes]
        beyond = [(name, value) for name, value in seen if value > data_max]
        huge = [name for name in node.input if name and _largest_constant(index, name) > FP16_MAX]
        if beyond:
            name, value = max(beyond, key=lambda item: item[1])
            reasons[node.name] = f"|{name}| reaches {value:.4g} > {data_max:g}"
        elif huge:
            reasons[node.name] = f"constant {huge[0]} holds values beyond float16's {FP16_MAX:g}"
    return reasons


def _largest_constant(index: GraphIndex, name: str) -> float:
    """The largest finite |value| of a float constant (0 for anything else, or a constant too large to scan)."""
    shape = index.constant_shape(name)
    if shape is None or int(np.prod(shape)) > CONSTANT_SCAN_LIMIT:
        return 0.0
    value = index.constant_value(name)
    if value is None or value.dtype not in (np.float32, np.float64) or not value.size:
        return 0.0
    finite = np.abs(value[np.isfinite(value)])
    return float(finite.max()) if finite.size else 0.0


def float_regions(model: onnx.ModelProto, excluded: set[str], count: int = REGIONS) -> list[list[str]]:
    """The float nodes not in ``excluded``, cut into at most ``count`` contiguous regions in topological order."""
    nodes = [node.name for node in model.graph.node if node.op_type != "Constant" and node.name not in excluded]
    if not nodes:
        return []
    return [list(part) for part in np.array_split(np.array(nodes, dtype=object), min(count, len(nodes)))]


def choose_float_baseline(
    model: onnx.ModelProto,
    default: Precision,
    magnitudes: dict[str, float],
    score: Scorer,
    fp32_score: float,
    tolerance: float,
    journal: Journal,
) -> FloatBaseline:
    """The all-high plan: magnitude nodes FP32, then measured regions FP32 until within ``tolerance`` of FP32.

    ``score(plan)`` is the plan's metric on the search split; ``fp32_score`` the FP32 model's.
    """
    rules = float32_rules(model)
    by_magnitude = magnitude_nodes(model, magnitudes)
    plan = PrecisionPlan(default=default, fp32_nodes=frozenset(by_magnitude))
    record: dict[str, Any] = {"data_max": DATA_MAX, "tolerance": tolerance, "fp32_score": fp32_score,
                              "rule_nodes": len(rules.nodes), "magnitude_nodes": by_magnitude}  # fmt: skip
    cached = _journaled(journal, score)
    first = cached(plan)
    record["before_regions"] = first / fp32_score
    if first / fp32_score >= 1 - tolerance:
        record.update(regions=[], all_high=first / fp32_score)
        return FloatBaseline(plan, record)
    everything = cached(PrecisionPlan(default=Precision.FP32))
    if everything / fp32_score < 1 - tolerance:
        raise TrtmixError(
            f"Even with every node in FP32, the engine's graph scores {everything / fp32_score:.4%} of the FP32 "
            f"model on the search split (the all-high plan must keep {1 - tolerance:.2%}).",
            expected="an engine that computes the float graph as ONNX Runtime does",
            fix="check the metric on this model (trtmix compile --metric ...), or use --flavour ort-cpu",
        )
    regions = float_regions(model, set(rules.nodes) | set(by_magnitude))
    kept, final = _kept_regions(plan, regions, cached, fp32_score, tolerance)
    record.update(regions=[{"first": r[0], "last": r[-1], "nodes": len(r), "recovers": gain} for r, gain in kept],
                  all_high=final)  # fmt: skip
    chosen = set(plan.fp32_nodes).union(*[set(r) for r, _ in kept])
    return FloatBaseline(PrecisionPlan(default=default, fp32_nodes=frozenset(chosen)), record)


def _kept_regions(
    plan: PrecisionPlan, regions: list[list[str]], score: Scorer, fp32_score: float, tolerance: float
) -> tuple[list[tuple[list[str], float]], float]:
    """Each region scored alone in FP32; the best ones added, fewest first, until the plan is within tolerance."""
    gains = []
    for region in progress_bar(regions, desc="float regions", unit="region"):
        gains.append((region, score(_with_fp32(plan, region)) / fp32_score))
    gains.sort(key=lambda item: -item[1])
    kept: list[tuple[list[str], float]] = []
    relative = 0.0
    for region, gain in gains:
        kept.append((region, gain))
        relative = score(_with_fp32(plan, [n for r, _ in kept for n in r])) / fp32_score
        if relative >= 1 - tolerance:
            break
    return kept, relative


def _with_fp32(plan: PrecisionPlan, nodes: Sequence[str]) -> PrecisionPlan:
    return PrecisionPlan(plan.default, plan.units, plan.fp32_nodes | set(nodes))


def _journaled(journal: Journal, score: Scorer) -> Scorer:
    """``score``, each plan's result kept in the journal (a resumed job does not measure it again)."""

    def cached(plan: PrecisionPlan) -> float:
        key = f"float-baseline:{plan.stable_hash()}"
        value = journal.cached(key)
        if value is None:
            value = score(plan)
            journal.store(key, value)
            LOG.info("float baseline probe (%d FP32 nodes): %.6f", len(plan.fp32_nodes), value)
        return float(value)

    return cached
