"""Weight rounding learned per unit on calibration data (GPTQ-style error feedback), the scales left as they are.

Round-to-nearest makes each int8 weight as close as it can be on its own; what matters is the unit's output X·W,
and the errors of weights that meet correlated inputs can cancel.  GPTQ (Frantar et al., 2022, after OBQ) rounds
one input column at a time and moves the columns not yet rounded to absorb the error, weighted by H = Σ xᵀx of the
unit's input: it is one pass of linear algebra per unit, deterministic, with no learning rate (AdaRound-style
gradient steps were not added: they would need torch and many more seconds per unit, and nothing here measured
that they help more).

What is learned is only the int8 values: the per-channel scales are the ones ``quantize_unit_weight`` computes,
so ``trtmix.quant.weights`` stays the one quantizer, and the values travel in ``Ranges.rounding`` (weight name →
``LearnedRounding``, guarded by the scales and a digest of the unit's input transform: ``input_guard``).

H is of the input as the INT8 unit's output error sees it.  A smoothed unit multiplies X/s by Q(W·s); a centred
one reads (X − z)/s, but its bias takes z·Q(W·s)/s (``trtmix.quant.bias.bias_delta``), so its output error is
still (X/s)·ΔW and z does not enter H.  With bias correction the mean error E[X/s]·ΔW is removed from the bias, so
H is taken about the calibration mean (the channel means bias correction uses).  Conv units use im2col patches, one
H per group; MatMul/Gemm use the weight's input axis.

Cost: the calibration batches once through the float graph in ONNX Runtime (every unit's input), H once per input
tensor and transform (at most ``MAX_ROWS`` rows), and per unit a Cholesky and an inverse of H (columns³) and the
error feedback (outputs × columns²).  MiniLM-L6, 36 units, 8 batches of 8 × 128 tokens: 35 s on a busy 2-core
machine, 8 s of it ONNX Runtime.  H for all units at once could exceed memory on a large model (BERT-large's FFN
inputs alone: 6 GiB), so units are taken in passes whose H fit ``H_BUDGET``, each pass running the batches again.
The batches are split: the last quarter (at least one) is held out, and a unit keeps its learned values only where
they lower tr(ΔW H ΔWᵀ) on it, so ``MIN_BATCHES`` = 2.  Units that cannot be rounded (weight shared by several
nodes, not a constant in the graph, more than ``MAX_COLUMNS`` input columns, a Conv that is not 2-D) are left at
round-to-nearest with the reason in the record.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from trtmix.calibration.ranges import LearnedRounding, Ranges
from trtmix.ir.graph import GraphIndex
from trtmix.ir.units import KIND_CONV, KIND_LINEAR, Unit
from trtmix.quant.flavours import Flavour
from trtmix.quant.plan import Precision
from trtmix.quant.range_choice import _float_session, _float_tensors
from trtmix.quant.smooth import input_axis
from trtmix.quant.weights import QuantizedWeight, WeightQuantizer, input_guard

LOG = logging.getLogger(__name__)
MIN_BATCHES = 2  # at least one batch to learn on and one held out to check on
MAX_ROWS = 8192  # input rows per unit that H sums over (sampled evenly from each batch)
MAX_COLUMNS = 8192  # a unit with more input columns (per group) is "huge": H alone would be > 512 MiB
DAMP = 0.01  # GPTQ's dampening: H + 1% of its mean diagonal
H_BUDGET = 1 << 30  # bytes of H held at once (a BERT-large's 24 FFN inputs of 4,096 columns alone are 6 GiB)
BLOCK = 128  # columns rounded together before the rest is updated (the result does not depend on it)


@dataclass
class RoundingRecord:
    """What ``learn_rounding`` did: per unit rounded (held-out error ratio) or skipped (why), batches, seconds."""

    rounded: dict[str, float] = field(default_factory=dict)  # unit → learned / nearest output error, held out
    skipped: dict[str, str] = field(default_factory=dict)  # unit → why it keeps round-to-nearest
    note: str | None = None  # why nothing was learned at all
    batches: int = 0
    rows: int = 0  # the most rows any unit's H summed
    seconds: float = 0.0
    passes: int = 0  # passes over the batches (``h_budget``)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the report's ``quantizers.weight_rounding.units``)."""
        return {"batches": self.batches, "rows": self.rows, "passes": self.passes, "seconds": round(self.seconds, 2),
                "note": self.note,
                "rounded": {name: round(ratio, 4) for name, ratio in sorted(self.rounded.items())},
                "skipped": dict(sorted(self.skipped.items()))}  # fmt: skip


def learn_rounding(
    model: onnx.ModelProto,
    units: list[Unit],
    ranges: Ranges,
    flavour: Flavour,
    batches: Iterable[dict[str, np.ndarray]],
    *,
    default: Precision = Precision.FP16,
    fp32_nodes: frozenset[str] = frozenset(),
    max_rows: int = MAX_ROWS,
    h_budget: int = H_BUDGET,
) -> tuple[Ranges, RoundingRecord]:
    """``ranges`` with int8 values learned for every INT8 weight unit where they beat round-to-nearest, and a record.

    Args:
        model: the float model ``ranges`` were calibrated on.
        units: its units; those with a constant weight (linear, conv) are candidates.
        ranges: the job's chosen ranges (smoothing, shifts, bias correction as they will be compiled).
        flavour: gives the weight levels and the float dtype of the scales.
        batches: calibration feeds; fewer than ``MIN_BATCHES`` learns nothing (``record.note`` says so).
        default: the precision the all-INT8 plan leaves other nodes in (the scales' float dtype follows it).
        fp32_nodes: the all-INT8 plan's FP32 nodes, for the same reason.
        max_rows: rows of each unit's input that H sums (learning batches; as many again held out at most).
        h_budget: bytes of H (learning and held-out, float64) held at once; more units take more passes over the
            batches through ONNX Runtime rather than more memory.
    """
    start = time.perf_counter()
    feeds = list(batches)
    record = RoundingRecord(batches=len(feeds))
    base = replace(ranges, rounding={})
    if len(feeds) < MIN_BATCHES:
        record.note = (f"calibration has {len(feeds)} batch(es); learned rounding needs at least {MIN_BATCHES} "
                       "(one to learn on, one held out to check on)")  # fmt: skip
        record.seconds = time.perf_counter() - start
        return base, record
    index = GraphIndex(model)
    quantizer = WeightQuantizer(base, flavour, default, fp32_nodes)
    candidates = _candidates(index, units, quantizer, record)
    held = max(1, len(feeds) // 4)
    learn_feeds, held_feeds = feeds[:-held], feeds[-held:]
    tensors = sorted({unit.inputs[0] for unit, _ in candidates})
    session = _float_session(model, tensors) if tensors else None
    views = {unit.name: _view(unit, quantized, base) for unit, quantized in candidates}  # Q, K, V share one H
    learned: dict[str, LearnedRounding] = {}
    with _one_blas_thread():
        for group in _passes(index, candidates, views, h_budget):  # each pass holds at most h_budget bytes of H
            statistics = {views[unit.name]: _Statistics() for unit, _ in group}
            for part, part_feeds in (("learn", learn_feeds), ("held", held_feeds)):
                per_batch = max(1, max_rows // len(part_feeds))
                for feed in part_feeds:
                    values = _float_tensors(session, feed, tensors)
                    done = set()
                    for unit, quantized in group:
                        if views[unit.name] not in done:
                            done.add(views[unit.name])
                            columns = _unit_rows(index, unit, quantized, values[unit.inputs[0]], base, per_batch)
                            statistics[views[unit.name]].add(part, columns)
            learned.update(_learned_values(group, statistics, views, base, flavour.weight_levels, record))
            record.passes += 1
    record.seconds = time.perf_counter() - start
    LOG.info("learned rounding: %d units rounded, %d skipped, %.1f s", len(record.rounded), len(record.skipped),
             record.seconds)  # fmt: skip
    return replace(base, rounding=learned), record


@contextlib.contextmanager
def _one_blas_thread():  # type: ignore[no-untyped-def]
    """OpenBLAS on one thread while learning (without threadpoolctl, BLAS is left as it is).

    On a busy 2-core machine its two threads made one 384² Cholesky take 1 s instead of 15 ms (measured): 122 s to
    learn MiniLM's 36 units, 35 s on one thread.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _passes(
    index: GraphIndex, candidates: list[tuple[Unit, QuantizedWeight]], views: dict[str, tuple[str, ...]], budget: int
) -> list[list[tuple[Unit, QuantizedWeight]]]:
    """The candidates in graph order, cut into groups whose distinct H (learning + held out) fit ``budget`` bytes.

    A unit whose H alone exceeds the budget gets a pass of its own (``MAX_COLUMNS`` bounds it).
    """
    groups: list[list[tuple[Unit, QuantizedWeight]]] = [[]]
    held: set[tuple[str, ...]] = set()
    used = 0
    for unit, quantized in candidates:
        view = views[unit.name]
        size = 0 if view in held else _h_bytes(index, unit, quantized)
        if groups[-1] and used + size > budget:
            groups.append([])
            held, used = set(), 0
            size = _h_bytes(index, unit, quantized)
        groups[-1].append((unit, quantized))
        held.add(view)
        used += size
    return [group for group in groups if group]


def _h_bytes(index: GraphIndex, unit: Unit, quantized: QuantizedWeight) -> int:
    """Bytes of one unit's H, learning and held-out: groups × (columns per group)² float64, twice."""
    columns = _columns(unit, quantized.weight)
    return 2 * 8 * _groups(index, unit) * columns * columns


def _groups(index: GraphIndex, unit: Unit) -> int:
    """A Conv's ``group`` attribute (1 for MatMul/Gemm)."""
    if unit.kind != KIND_CONV:
        return 1
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in index.nodes[unit.name].attribute}
    return int(attributes.get("group", 1))


def _view(unit: Unit, quantized: QuantizedWeight, ranges: Ranges) -> tuple[str, ...]:
    """Which H a unit needs: linear units reading one tensor the same way share it (a Conv's patches are its own)."""
    if unit.kind == KIND_CONV:
        return ("conv", unit.name)
    smoothing = "-" if quantized.smoothing is None else quantized.smoothing.tobytes().hex()
    centred = "mean" if _channel_mean(unit, ranges) is not None else "-"
    return ("linear", unit.inputs[0], smoothing, centred)


def _learned_values(
    candidates: list[tuple[Unit, QuantizedWeight]], statistics: dict[tuple[str, ...], _Statistics],
    views: dict[str, tuple[str, ...]], ranges: Ranges, levels: int, record: RoundingRecord,
) -> dict[str, LearnedRounding]:  # fmt: skip
    """Weight name → learned values, for each candidate whose values beat round-to-nearest on the held-out H."""
    learned = {}
    for unit, quantized in candidates:
        stats = statistics[views[unit.name]]
        record.rows = max(record.rows, stats.rows)
        values, reason = _round_unit(unit, quantized, stats, levels, record)
        if values is None:
            record.skipped[unit.name] = reason
            continue
        learned[unit.weight] = LearnedRounding(values, np.asarray(quantized.scale, np.float32), levels,
                                               input_guard(unit, ranges))  # fmt: skip
    return learned  # type: ignore[return-value]


def _candidates(
    index: GraphIndex, units: list[Unit], quantizer: WeightQuantizer, record: RoundingRecord
) -> list[tuple[Unit, QuantizedWeight]]:
    """The units whose weights can be rounded, with their round-to-nearest quantization; the others noted."""
    candidates = []
    for unit in units:
        if unit.weight is None or unit.kind not in (KIND_LINEAR, KIND_CONV):
            continue
        reason = _unroundable(index, unit, len(index.consumers.get(unit.weight, [])))
        exact = index.constant_value(unit.weight) if reason is None else None
        if reason is None and exact is None:
            reason = "its weight is not a constant of the graph"
        if reason is None and _columns(unit, exact) > MAX_COLUMNS:  # type: ignore[arg-type]
            reason = f"huge: {_columns(unit, exact)} input columns (H would exceed {MAX_COLUMNS}²)"  # type: ignore[arg-type]
        if reason is not None:
            record.skipped[unit.name] = reason
            continue
        candidates.append((unit, quantizer.quantize(unit, exact)))  # type: ignore[arg-type]
    return candidates


def _unroundable(index: GraphIndex, unit: Unit, readers: int) -> str | None:
    """Why ``unit``'s weight cannot be learned alone (shared, a Conv that is not 2-D, a transposed Gemm input)."""
    if readers > 1:
        return f"its weight {unit.weight} is shared by {readers} nodes (one rounding cannot fit each reader's input)"
    node = index.nodes[unit.name]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if unit.kind == KIND_CONV:
        if len(unit.weight_shape or ()) != 4:
            return "only 2-D convolutions are rounded (im2col here is 2-D)"
        if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return "auto_pad convolutions are not rounded (explicit pads only)"
    elif len(unit.weight_shape or ()) != 2:
        return "its weight is not 2-D"
    elif unit.op == "Gemm" and attributes.get("transA", 0):
        return "Gemm with transA is not rounded"
    return None


def _columns(unit: Unit, weight: np.ndarray) -> int:
    """The input columns per output channel: H's size."""
    if unit.kind == KIND_CONV:
        return int(np.prod(weight.shape[1:]))
    return int(weight.shape[input_axis(unit)])


class _Statistics:
    """Σ xᵀx of a unit's input rows, per group, on the learning and the held-out batches."""

    def __init__(self) -> None:
        self.hessians: dict[str, np.ndarray] = {}
        self.rows = 0

    def add(self, part: str, columns: np.ndarray) -> None:
        """Add rows ``columns`` [groups, rows, columns per group] to ``part``'s H."""
        product = np.matmul(columns.transpose(0, 2, 1), columns)
        self.hessians[part] = self.hessians[part] + product if part in self.hessians else product
        if part == "learn":
            self.rows += columns.shape[1]


def _unit_rows(
    index: GraphIndex, unit: Unit, quantized: QuantizedWeight, value: np.ndarray, ranges: Ranges, limit: int
) -> np.ndarray:
    """The unit's input rows as its INT8 output error sees them: [groups, rows, columns], at most ``limit`` rows.

    X/s for a smoothed unit (z does not enter: the bias takes z·Q(W·s)/s), less the calibration mean where bias
    correction removes the mean error; im2col patches per group for a Conv.
    """
    mean = _channel_mean(unit, ranges)
    if unit.kind == KIND_CONV:
        return _patches(index, unit, value, mean, limit)
    rows = value.reshape(-1, value.shape[-1]).astype(np.float64)
    rows = rows[_sample(rows.shape[0], limit)]
    if mean is not None:
        rows = rows - mean
    if quantized.smoothing is not None:
        rows = rows / quantized.smoothing
    return rows[None]


def _channel_mean(unit: Unit, ranges: Ranges) -> np.ndarray | None:
    """E[X] per input channel where bias correction will remove the mean error (as ``bias_delta`` decides)."""
    summary = ranges.channels.get(unit.inputs[0]) if ranges.bias_correction else None
    if summary is None or unit.weight_axis is None:
        return None
    return np.asarray(summary.mean, dtype=np.float64)


def _sample(count: int, limit: int) -> np.ndarray:
    """``limit`` row positions spread evenly over ``count`` (all of them when there are fewer): deterministic."""
    if count <= limit:
        return np.arange(count)
    return np.linspace(0, count - 1, limit).round().astype(np.int64)


def _patches(index: GraphIndex, unit: Unit, value: np.ndarray, mean: np.ndarray | None, limit: int) -> np.ndarray:
    """im2col of a 2-D Conv's input: [groups, rows, (channels per group)·kh·kw], the weight's column order."""
    node = index.nodes[unit.name]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    kernel = unit.weight_shape[2:]  # type: ignore[index]
    strides = list(attributes.get("strides", [1, 1]))
    dilations = list(attributes.get("dilations", [1, 1]))
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    groups = int(attributes.get("group", 1))
    x = np.pad(value.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    if mean is not None and mean.size == x.shape[1]:
        x = x - mean.reshape(1, -1, 1, 1)  # after padding: a padded zero is also read less E[X]
    spans = [dilations[i] * (kernel[i] - 1) + 1 for i in range(2)]
    windows = np.lib.stride_tricks.sliding_window_view(x, spans, axis=(2, 3))
    windows = windows[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    batch, channels, height, width = windows.shape[:4]
    chosen = _sample(batch * height * width, limit)
    n, rest = np.divmod(chosen, height * width)
    h, w = np.divmod(rest, width)
    patches = windows[n, :, h, w]  # [rows, channels, kh, kw]
    return patches.reshape(len(chosen), groups, -1).transpose(1, 0, 2)


def _oriented(unit: Unit, weight: np.ndarray) -> np.ndarray:
    """The weight as [output channels, input columns] (a Conv's flattened in its own order)."""
    if unit.kind == KIND_CONV:
        return weight.reshape(weight.shape[0], -1)
    return weight if (unit.weight_axis or 0) == 0 else weight.T


def _round_unit(
    unit: Unit, quantized: QuantizedWeight, stats: _Statistics, levels: int, record: RoundingRecord
) -> tuple[np.ndarray | None, str]:
    """The learned int8 values of ``unit`` in its weight's shape, or None and why it keeps round-to-nearest."""
    learn, held = stats.hessians["learn"], stats.hessians["held"]
    target = _oriented(unit, quantized.weight.astype(np.float64))
    nearest = _oriented(unit, quantized.int8())
    scale = quantized.scale.astype(np.float64)
    groups = learn.shape[0]
    per_group = target.shape[0] // groups
    learned = np.empty_like(nearest)
    for group in range(groups):
        rows = slice(group * per_group, (group + 1) * per_group)
        learned[rows] = gptq(target[rows], scale[rows], learn[group], levels)
    before = _output_error(target, nearest, scale, held, per_group)
    after = _output_error(target, learned, scale, held, per_group)
    if not after < before:
        return None, f"not better than round-to-nearest on the held-out batches ({after:.3g} vs {before:.3g})"
    record.rounded[unit.name] = after / before if before > 0 else 0.0
    values = learned if unit.kind == KIND_CONV or (unit.weight_axis or 0) == 0 else learned.T
    return np.ascontiguousarray(values.reshape(quantized.weight.shape), dtype=np.int8), ""


def _output_error(target: np.ndarray, q: np.ndarray, scale: np.ndarray, hessians: np.ndarray, per_group: int) -> float:
    """Σ over groups of tr(ΔW H ΔWᵀ): the squared output error of the int8 weight ``q`` on H's rows."""
    delta = q.astype(np.float64) * scale[:, None] - target
    total = 0.0
    for group, hessian in enumerate(hessians):
        part = delta[group * per_group : (group + 1) * per_group]
        total += float(np.sum((part @ hessian) * part))  # tr(ΔW H ΔWᵀ) by BLAS (einsum's three operands loop)
    return total


def gptq(weight: np.ndarray, scale: np.ndarray, hessian: np.ndarray, levels: int, damp: float = DAMP) -> np.ndarray:
    """GPTQ's rounding of ``weight`` [outputs, columns] with fixed per-output ``scale``: int8 values within ±levels.

    Columns go in order of decreasing H diagonal (the inputs that carry most energy first, GPTQ's "act order": with
    one scale per output row, any column order keeps the scales).  Each column is rounded, and its error, divided by
    the Cholesky factor of H⁻¹, is pushed onto the columns not yet rounded.  A dead column (H diagonal 0) is rounded
    to nearest and moves nothing.
    """
    hessian = hessian.astype(np.float64).copy()
    diagonal = np.diag(hessian).copy()
    dead = diagonal <= 0
    hessian[dead, dead] = 1.0
    order = np.argsort(-np.diag(hessian), kind="stable")
    hessian = hessian[np.ix_(order, order)]
    hessian[np.diag_indices_from(hessian)] += damp * float(np.mean(np.diag(hessian)))
    upper = _inverse_cholesky(hessian)
    w = weight.astype(np.float64)[:, order].copy()
    q = np.empty(w.shape, dtype=np.int64)
    columns = w.shape[1]
    for first in range(0, columns, BLOCK):
        last = min(first + BLOCK, columns)
        block = w[:, first:last].copy()
        errors = np.zeros_like(block)
        factor = upper[first:last, first:last]
        for i in range(last - first):
            rounded = np.clip(np.rint(block[:, i] / scale), -levels, levels)
            q[:, first + i] = rounded
            error = (block[:, i] - rounded * scale) / factor[i, i]
            block[:, i:] -= np.outer(error, factor[i, i:])
            errors[:, i] = error
        w[:, last:] -= errors @ upper[first:last, last:]
    result = np.empty_like(q)
    result[:, order] = q
    return result.astype(np.int8)


def _inverse_cholesky(hessian: np.ndarray) -> np.ndarray:
    """The upper Cholesky factor of H⁻¹ (GPTQ's), H dampened further until it is positive definite."""
    extra = 0.0
    for _ in range(6):
        try:
            lower = np.linalg.cholesky(hessian + extra * np.eye(len(hessian)))
            break
        except np.linalg.LinAlgError:
            extra = max(extra * 10, 1e-6 * float(np.mean(np.diag(hessian))))
    else:
        raise np.linalg.LinAlgError("H stays singular after dampening")
    inverse_lower = np.linalg.inv(lower)
    inverse = inverse_lower.T @ inverse_lower
    return np.linalg.cholesky(inverse).T
