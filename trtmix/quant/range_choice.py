"""Range method chosen per tensor by measurement: the one whose int8 quantizer costs the unit's output least.

``calibrate`` applies one method (``max``, ``percentile``, ``entropy`` or ``mse``) to every tensor, but the best
clipping differs between a LayerNorm output with a few outlier channels, a one-sided GELU output and a softmax.
``choose_ranges`` takes the candidate ranges of each method (from the same histograms: ``calibrate`` with each
``CalibrationConfig.method``, which the histogram cache makes cheap) and calibration batches, and for every activation
tensor a unit reads, quantizes it with each candidate range and measures the error at the output of every unit that
reads it (the unit's anchor output: MatMul/Conv/Gemm, its weight in float, the unit's other inputs in float), summed
over those units and batches.  The method of least error wins, ties going to the earlier candidate.

The choice is made on the data the candidates were calibrated on, so ``max`` never clips there; what it measures
is rounding against clipping on that data.  Each tensor's choice is also made on the first and the second half of
the batches: ``stable`` says whether both halves agree, a cheap check that the set is large enough to choose with.
Tensors that no unit reads as an activation input (a unit's output, a residual Add's) keep the first candidate's
range.  Scoring runs each unit alone (``trtmix.ir.graph.extract_subgraph``), in ONNX Runtime, as float32;
smoothing, centring and the flavour's float16 are not applied here: ``trtmix.quant.smooth`` works on the chosen
ranges afterwards.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from trtmix.calibration.ranges import Ranges, TensorRange
from trtmix.errors import CalibrationError
from trtmix.ir.graph import extract_subgraph
from trtmix.ir.units import Unit
from trtmix.quant.qdq import INT8_MAX, UINT8_MAX, asymmetric_uint8, symmetric_scale

LOG = logging.getLogger(__name__)
MIN_BATCHES = 2  # one per half: the stability check compares the choices made on each half


@dataclass(frozen=True)
class TensorChoice:
    """One tensor's choice: the method, each method's relative error at its readers' outputs, and the halves' say."""

    method: str
    errors: dict[str, float]  # method → ‖Δ output‖ / ‖output‖ over the tensor's readers and every batch
    readers: tuple[str, ...]
    stable: bool  # the first and the second half of the batches chose the same method


@dataclass
class RangeChoice:
    """The per-tensor choice record: what each tensor took, and a summary a report can show."""

    tensors: dict[str, TensorChoice] = field(default_factory=dict)
    unscored: dict[str, str] = field(default_factory=dict)  # tensor → why it kept the first candidate's range
    batches: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """How many tensors took each method."""
        counts: dict[str, int] = defaultdict(int)
        for choice in self.tensors.values():
            counts[choice.method] += 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the report's ``calibration.per_tensor``)."""
        return {"batches": self.batches, "seconds": round(self.seconds, 2), "counts": self.counts(),
                "stable": sum(c.stable for c in self.tensors.values()), "scored": len(self.tensors),
                "tensors": {name: {"method": c.method, "errors": c.errors, "readers": list(c.readers),
                                   "stable": c.stable} for name, c in sorted(self.tensors.items())},
                "unscored": dict(sorted(self.unscored.items()))}  # fmt: skip


def choose_ranges(
    model: onnx.ModelProto,
    units: list[Unit],
    candidates: Mapping[str, Ranges],
    batches: Iterable[dict[str, np.ndarray]],
    *,
    symmetric: bool = True,
) -> tuple[Ranges, RangeChoice]:
    """Ranges whose every unit-input tensor takes the candidate method of least error at its readers' outputs.

    Args:
        model: the float model the candidates were calibrated on.
        units: its units (``trtmix.ir.units.find_units``).
        candidates: method name → the ``Ranges`` that method gives (same model, same histograms); the first one is
            the base (its channel statistics and weight ranges are kept, and so is its range where nothing scores).
        batches: calibration feeds; at least ``MIN_BATCHES``.
        symmetric: score symmetric int8 (the ``tensorrt`` flavour) or asymmetric uint8 (``ort-cpu``).

    Raises:
        CalibrationError: fewer than ``MIN_BATCHES`` batches, or no tensor could be scored (nothing to choose).
    """
    start = time.perf_counter()
    feeds = list(batches)
    _check(candidates, feeds)
    methods = list(candidates)
    base = candidates[methods[0]]
    readers: dict[str, list[Unit]] = defaultdict(list)
    for unit in units:
        for tensor in unit.inputs:
            readers[tensor].append(unit)
    record = RangeChoice(batches=len(feeds))
    scored = {t: r for t, r in readers.items() if all(t in c.tensors for c in candidates.values())}
    for tensor in sorted(set(base.tensors) - set(scored)):
        record.unscored[tensor] = "read by no unit as an activation input"
    for tensor in sorted(set(readers) - set(scored)):
        record.unscored[tensor] = "a candidate has no range for it"
    # errors[tensor][method] = [squared error per batch], reference[tensor] = [squared output norm per batch]
    errors: dict[str, dict[str, list[float]]] = {t: {m: [] for m in methods} for t in scored}
    reference: dict[str, list[float]] = {t: [] for t in scored}
    sessions = _unit_sessions(model, units, record)
    tensors = sorted({t for unit in units if unit.name in sessions for t in unit.inputs})
    float_model = _float_session(model, tensors)
    for feed in feeds:
        values = _float_tensors(float_model, feed, tensors)
        for tensor in scored:
            squared = {m: 0.0 for m in methods}
            norm = 0.0
            for unit in readers[tensor]:
                if unit.name not in sessions:
                    continue
                session, output = sessions[unit.name]
                inputs = {name: values[name] for name in unit.inputs}
                exact = session.run([output], inputs)[0].astype(np.float64)
                norm += float(np.square(exact).sum())
                done: dict[TensorRange, float] = {}
                for method in methods:
                    value_range = candidates[method].tensors[tensor]
                    if value_range not in done:
                        quantized = {**inputs, tensor: _fake_quantize(values[tensor], value_range, symmetric)}
                        out = session.run([output], quantized)[0].astype(np.float64)
                        done[value_range] = float(np.square(out - exact).sum())
                    squared[method] += done[value_range]
            for method in methods:
                errors[tensor][method].append(squared[method])
            reference[tensor].append(norm)
    for tensor, per_method in errors.items():
        total = max(sum(reference[tensor]), 1e-30)
        if not any(unit.name in sessions for unit in readers[tensor]):
            record.unscored[tensor] = "no reader could be run alone"
            continue
        method = _least(per_method, slice(None))
        half = max(len(feeds) // 2, 1)
        stable = _least(per_method, slice(0, half)) == _least(per_method, slice(half, None))
        relative = {m: float(np.sqrt(sum(v) / total)) for m, v in per_method.items()}
        record.tensors[tensor] = TensorChoice(method, relative, tuple(u.name for u in readers[tensor]), stable)
    record.seconds = time.perf_counter() - start
    if not record.tensors:
        raise CalibrationError(
            "No activation could be scored for a per-tensor range choice: no unit reading one could be run alone.",
            expected="units whose inputs are activations, each runnable alone in ONNX Runtime",
            fix="use one range method for every tensor (--no-range-choice in compile)",
        )
    LOG.info("per-tensor ranges: %s (%d of %d stable)", record.counts(),
             sum(c.stable for c in record.tensors.values()), len(record.tensors))  # fmt: skip
    return applied_choice(candidates, {t: c.method for t, c in record.tensors.items()}), record


def applied_choice(candidates: Mapping[str, Ranges], methods: Mapping[str, str]) -> Ranges:
    """The first candidate's ranges with each tensor of ``methods`` taking its method's range.

    Also how a resumed job rebuilds a choice it recorded (tensor → method) without scoring again.
    """
    base = candidates[next(iter(candidates))]
    unknown = sorted(set(methods.values()) - set(candidates))
    if unknown:
        raise CalibrationError(f"The recorded per-tensor choice names methods with no candidate: {', '.join(unknown)}.")
    chosen = {**base.tensors, **{tensor: candidates[method].tensors[tensor] for tensor, method in methods.items()}}
    meta = {**base.meta, "method": "per-tensor", "candidates": list(candidates),
            "per_tensor": dict(sorted(methods.items()))}  # fmt: skip
    return replace(base, tensors=chosen, meta=meta)


def _check(candidates: Mapping[str, Ranges], feeds: list[dict[str, np.ndarray]]) -> None:
    if len(feeds) < MIN_BATCHES:
        raise CalibrationError(
            f"A per-tensor range choice needs at least {MIN_BATCHES} calibration batches; {len(feeds)} given.",
            expected=f"{MIN_BATCHES} or more batches: the choice is made on each half of them to check it is stable",
            fix=f"give the calibration split at least {MIN_BATCHES} batches (--batches {MIN_BATCHES} or more), "
            "or use one range method for every tensor",
        )
    if not candidates:
        raise CalibrationError("A per-tensor range choice needs candidate ranges; none given.",
                               expected="method name → Ranges, e.g. from calibrate() with each method")  # fmt: skip
    hashes = {c.meta.get("model_sha256") for c in candidates.values()} - {None}
    if len(hashes) > 1:
        raise CalibrationError("The candidate ranges were calibrated on different models (their hashes differ).",
                               fix="calibrate every method on the same model")  # fmt: skip


def _least(per_method: dict[str, list[float]], part: slice) -> str:
    """The method of least summed squared error over the batches in ``part`` (ties: the first listed)."""
    return min(per_method, key=lambda m: sum(per_method[m][part]))


def _fake_quantize(values: np.ndarray, value_range: TensorRange, symmetric: bool) -> np.ndarray:
    """Q→DQ of ``values`` with one range, as the flavour's activation Q/DQ computes it (in float32)."""
    x = values.astype(np.float64)
    if symmetric:
        scale = float(symmetric_scale(value_range.amax, np.float32))
        return (np.clip(np.rint(x / scale), -INT8_MAX - 1, INT8_MAX) * scale).astype(values.dtype)
    scale, zero_point = asymmetric_uint8(value_range.min, value_range.max)
    q = np.clip(np.rint(x / float(scale)) + int(zero_point), 0, UINT8_MAX)
    return ((q - int(zero_point)) * float(scale)).astype(values.dtype)


def _unit_sessions(model: onnx.ModelProto, units: list[Unit], record: RangeChoice) -> dict[str, tuple[Any, str]]:
    """Unit name → (ONNX Runtime session of the unit alone, from its activation inputs to its anchor's output)."""
    from trtmix.runtime.onnxruntime import ort_session

    anchors = {node.name: node for node in model.graph.node}
    sessions = {}
    for unit in units:
        anchor = anchors.get(unit.name)
        if anchor is None:
            continue
        try:
            alone = extract_subgraph(model, unit.inputs, [anchor.output[0]])
            sessions[unit.name] = (ort_session(alone, threads=1, optimize=False), anchor.output[0])
        except Exception as err:  # noqa: BLE001 - an extractor or ORT failure only leaves this unit unscored
            LOG.warning("per-tensor ranges: unit %s cannot run alone (%s)", unit.name, str(err).splitlines()[0])
            for tensor in unit.inputs:
                record.unscored.setdefault(tensor, f"its reader {unit.name} cannot run alone")
    return sessions


def _float_session(model: onnx.ModelProto, tensors: list[str]) -> Any:
    """An ONNX Runtime session of the float model that also outputs ``tensors`` (graph inputs excepted)."""
    from trtmix.calibration.calibrate import _outputs
    from trtmix.runtime.onnxruntime import ort_session

    inputs = {value.name for value in model.graph.input}
    return ort_session(model, extra_outputs=_outputs(model, [t for t in tensors if t not in inputs]))


def _float_tensors(session: Any, feed: dict[str, np.ndarray], tensors: list[str]) -> dict[str, np.ndarray]:
    """The float model's values of ``tensors`` on one feed (graph inputs from the feed itself)."""
    wanted = [t for t in tensors if t not in feed]
    values = dict(zip(wanted, session.run(wanted, feed), strict=True)) if wanted else {}  # run([]) returns all
    return {**{t: feed[t] for t in tensors if t in feed}, **values}
