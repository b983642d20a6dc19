"""Outlier-aware scaling (SmoothQuant) for MatMul/Gemm units, decided once per job from calibration statistics.

A transformer's activations carry a few channels with outliers 10–100× the rest, and one per-tensor int8 scale
wastes most levels on them.  For a tensor X read by linear units with weights W, dividing channel j of X by
s_j = max|X_j|^α / max|W_j|^(1−α) and multiplying row j of every reader's W by s_j leaves X·W unchanged in exact
arithmetic while moving the outliers into the weights, which are quantized per output channel.

The decision (``plan_smoothing``) is made per tensor, from the per-channel statistics the calibration pass records
(``trtmix.calibration.channels``): the expected output noise of int8 activations and weights with and without the
scaling (uniform rounding noise, Δ²/12 per element).  A tensor keeps its scaling only when that noise drops; α is
searched over ``ALPHAS`` per model (``--smooth-alpha`` fixes it).  The scales travel in ``Ranges.smoothing`` and so
key every artifact.  ``compile`` writes them only for INT8 units: folded into the LayerNormalization that produces X
when every reader of X is such a unit, else as an explicit Mul in front of the Q/DQ; the weight is scaled before it
is quantized.  High-precision units read X as exported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtmix.calibration.channels import ChannelSummary
from trtmix.calibration.ranges import Ranges, TensorRange
from trtmix.errors import TrtmixError
from trtmix.ir.graph import GraphIndex
from trtmix.ir.units import KIND_LINEAR, Unit

LOG = logging.getLogger(__name__)
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
FLOAT16_MAX = 65504.0
FLOAT16_SAFE = FLOAT16_MAX / 4  # headroom for the products a scaled weight takes part in
LEVELS = 127


@dataclass(frozen=True)
class SmoothSettings:
    """``--smooth-alpha`` / ``--no-smooth``: whether to smooth, and α (None: searched per model)."""

    enabled: bool = True
    alpha: float | None = None

    def validate(self) -> None:
        """α must lie strictly between 0 and 1 (0 or 1 put all of the outliers on one side)."""
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise TrtmixError(
                f"--smooth-alpha {self.alpha} is outside (0, 1).",
                expected="a migration strength strictly between 0 and 1, e.g. 0.5",
                fix="pass a value such as 0.5, or leave --smooth-alpha out to search it, or --no-smooth",
            )


def readers(units: list[Unit], tensor: str) -> list[Unit]:
    """The units a scaling of ``tensor`` applies to: linear units with a 2-D weight reading it as their input."""
    return [u for u in units if u.kind == KIND_LINEAR and u.inputs[0] == tensor and _is_2d(u)]


def _is_2d(unit: Unit) -> bool:
    return unit.weight_shape is not None and len(unit.weight_shape) == 2


def input_axis(unit: Unit) -> int:
    """The weight axis that meets the activation's channels (the axis the scaling multiplies)."""
    return 1 - (unit.weight_axis or 0)


def plan_smoothing(
    model: onnx.ModelProto, units: list[Unit], ranges: Ranges, settings: SmoothSettings, float16: bool
) -> tuple[Ranges, dict[str, Any]]:
    """``ranges`` with the chosen scales in ``smoothing``, and a report of what was decided and why."""
    settings.validate()
    if not settings.enabled:
        return replace(ranges, smoothing={}), {"enabled": False}
    index = GraphIndex(model)
    candidates = {}
    for tensor, summary in ranges.channels.items():
        reading = readers(units, tensor)
        if reading and summary.axis == -1:
            weights = [_oriented(index, unit) for unit in reading]
            if all(w is not None and w.shape[0] == len(summary.maximum) for w in weights):
                candidates[tensor] = (summary, weights, reading)
    if not candidates:
        return replace(ranges, smoothing={}), {"enabled": True, "tensors": 0, "reason": "no MatMul/Gemm input"}
    alphas = ALPHAS if settings.alpha is None else (settings.alpha,)
    choices = {alpha: _choose(candidates, alpha, float16) for alpha in alphas}
    alpha = min(choices, key=lambda a: choices[a][1])
    scales, noise, clamped = choices[alpha]
    for unit_names in clamped:
        LOG.warning("smoothing scale clamped to keep float16 finite for %s", ", ".join(unit_names))
    report = {"enabled": True, "alpha": alpha, "searched": settings.alpha is None, "candidates": len(candidates),
              "tensors": len(scales), "kept_units": sorted(u.name for t in scales for u in candidates[t][2]),
              "noise_ratio": noise / max(_baseline_noise(candidates), 1e-30),
              "clamped": [name for names in clamped for name in names]}  # fmt: skip
    smoothing = {tensor: tuple(float(v) for v in s) for tensor, s in scales.items()}
    return replace(ranges, smoothing=smoothing, meta={**ranges.meta, "smoothing_alpha": alpha}), report


def prepare_ranges(
    model: onnx.ModelProto, units: list[Unit], ranges: Ranges, smooth: SmoothSettings, bias_correction: bool,
    float16: bool,
) -> tuple[Ranges, dict[str, Any]]:  # fmt: skip
    """The ranges every build of a job uses: smoothing decided, bias correction set; and what was decided."""
    smoothed, report = plan_smoothing(model, units, ranges, smooth, float16)
    correction = {"enabled": bias_correction, "channel_statistics": len(ranges.channels)}
    return replace(smoothed, bias_correction=bias_correction), {"smoothing": report, "bias_correction": correction}


def describe_quantizers(report: dict[str, Any]) -> str:
    """One summary line: smoothing (α, how many tensors) and bias correction."""
    smoothing = report["smoothing"]
    if not smoothing["enabled"]:
        text = "smoothing off (--no-smooth)"
    elif not smoothing.get("tensors"):
        text = f"smoothing: no tensor gains ({smoothing.get('reason', 'expected noise not lower')})"
    else:
        how = "searched" if smoothing["searched"] else "--smooth-alpha"
        text = (f"smoothing: α={smoothing['alpha']} ({how}) on {smoothing['tensors']} of {smoothing['candidates']} "
                f"MatMul/Gemm input tensors ({len(smoothing['kept_units'])} units), expected int8 noise "
                f"{smoothing['noise_ratio']:.2f}x unsmoothed")  # fmt: skip
    correction = "on" if report["bias_correction"]["enabled"] else "off (--bias-correction turns it on)"
    return f"quantizers: {text}; bias correction {correction}"


def _oriented(index: GraphIndex, unit: Unit) -> np.ndarray | None:
    """The unit's weight as [input channels, output channels]."""
    weight = index.constant_value(unit.weight) if unit.weight else None
    if weight is None or weight.ndim != 2:
        return None
    return weight.astype(np.float64) if input_axis(unit) == 0 else weight.astype(np.float64).T


def _choose(
    candidates: dict[str, Any], alpha: float, float16: bool
) -> tuple[dict[str, np.ndarray], float, list[list[str]]]:
    """Per tensor at ``alpha``: the scales where they lower the expected noise; the total noise; clamped units."""
    scales, total, clamped = {}, 0.0, []
    for tensor, (summary, weights, reading) in candidates.items():
        s, was_clamped = _scales(summary, weights, alpha, float16)
        with_scaling, without = _noise(summary, weights, s), _noise(summary, weights, np.ones_like(s))
        if with_scaling < without:
            scales[tensor] = s
            if was_clamped:
                clamped.append([u.name for u in reading])
        total += min(with_scaling, without)
    return scales, total, clamped


def _scales(summary: ChannelSummary, weights: list[np.ndarray], alpha: float, float16: bool) -> tuple[np.ndarray, bool]:
    """s_j = max|X_j|^α / max|W_j|^(1−α), 1 where a channel is all zero; clamped to keep float16 finite."""
    activation = summary.amax.astype(np.float64)
    weight = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    usable = (activation > 0) & (weight > 0)
    s = np.ones_like(activation)
    s[usable] = activation[usable] ** alpha / weight[usable] ** (1 - alpha)
    if not float16:
        return s, False
    high = np.where(weight > 0, FLOAT16_SAFE / np.maximum(weight, 1e-30), np.inf)  # W·s stays finite
    low = activation / FLOAT16_SAFE  # X / s stays finite
    bounded = np.clip(s, low, np.minimum(high, 1 / 6.2e-5))  # 1/s stays a normal float16
    return bounded, bool(np.any(bounded != s))


def _noise(summary: ChannelSummary, weights: list[np.ndarray], s: np.ndarray) -> float:
    """Expected squared output error of int8 X/s (one scale) and per-output-channel int8 W·s, summed over readers."""
    activation_step = float((summary.amax / s).max()) / LEVELS
    mean_square = np.asarray(summary.mean_square) / s**2
    total = 0.0
    for weight in weights:
        scaled = weight * s[:, None]
        weight_step = np.abs(scaled).max(axis=0) / LEVELS
        total += activation_step**2 / 12 * float(np.square(scaled).sum())
        total += float((weight_step**2 / 12).sum()) * float(mean_square.sum())
    return total


def _baseline_noise(candidates: dict[str, Any]) -> float:
    return sum(_noise(summary, weights, np.ones(len(summary.maximum))) for summary, weights, _ in candidates.values())


def unit_scales(unit: Unit, ranges: Ranges | None) -> np.ndarray | None:
    """The divisor of ``unit``'s input channels (its weight rows are multiplied by it), or None when not smoothed."""
    if ranges is None or unit.inputs[0] not in ranges.smoothing or unit.kind != KIND_LINEAR or not _is_2d(unit):
        return None
    return np.asarray(ranges.smoothing[unit.inputs[0]], dtype=np.float64)


def scaled_weight(unit: Unit, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The weight with its input-channel rows multiplied by ``s``, in its own dtype."""
    shape = [1, 1]
    shape[input_axis(unit)] = -1
    return (weight.astype(np.float64) * s.reshape(shape)).astype(weight.dtype)


def smoothed_range(ranges: Ranges, tensor: str) -> TensorRange:
    """The range of X/s: per-channel observed min/max divided by s, shrunk as the calibration method clipped X."""
    summary, s = ranges.channels[tensor], np.asarray(ranges.smoothing[tensor])
    low, high = float((np.asarray(summary.minimum) / s).min()), float((np.asarray(summary.maximum) / s).max())
    calibrated, observed_low, observed_high = ranges.tensors[tensor], min(summary.minimum), max(summary.maximum)
    low *= calibrated.min / observed_low if observed_low < 0 else 1.0
    high *= calibrated.max / observed_high if observed_high > 0 else 1.0
    return TensorRange(min(low, 0.0), max(high, 0.0))


def divided_input(
    graph: gs.Graph, original: GraphIndex, tensor: str, edges: list[tuple[gs.Node, int]], ranges: Ranges
) -> gs.Tensor:
    """The tensor the smoothed readers on ``edges`` quantize: X/s.

    Folded into X's LayerNormalization when every reader of X is on ``edges`` (γ and β divided by s), else an
    explicit Mul by 1/s shared by those readers.
    """
    variable = edges[0][0].inputs[edges[0][1]]
    s = np.asarray(ranges.smoothing[tensor], dtype=np.float64)
    readers_of_x = {node.name for node in original.consumers.get(tensor, [])}
    if readers_of_x <= {node.name for node, _ in edges} and tensor not in original.graph_outputs:
        producer = original.producer.get(tensor)
        if producer is not None and producer.op_type == "LayerNormalization" and _fold(graph, producer.name, s):
            return variable
    dtype = np.dtype(variable.dtype) if variable.dtype is not None else np.dtype(np.float32)
    inverse = gs.Constant(f"{tensor}/smooth_inverse", (1.0 / s).astype(dtype))
    divided = gs.Variable(f"{tensor}/smoothed", dtype=variable.dtype, shape=variable.shape)
    graph.nodes.append(gs.Node("Mul", f"{tensor}/smooth/Mul", {}, [variable, inverse], [divided]))
    return divided


def _fold(graph: gs.Graph, layernorm: str, s: np.ndarray) -> bool:
    """Divide the LayerNormalization's γ (and β) by ``s``; False when they are not constants of the right length."""
    node = next(n for n in graph.nodes if n.name == layernorm)
    parameters = [t for t in node.inputs[1:3] if t is not None and t.name]
    if not all(isinstance(t, gs.Constant) and t.values.shape == s.shape for t in parameters):
        return False
    for position, tensor in enumerate(parameters, start=1):
        values = tensor.values
        node.inputs[position] = gs.Constant(
            f"{tensor.name}/smoothed", (values.astype(np.float64) / s).astype(values.dtype)
        )
    return True


def input_range(unit: Unit, ranges: Ranges) -> TensorRange:
    """The range the unit's quantized input has: that of X/s where the unit is smoothed, else X's."""
    if unit_scales(unit, ranges) is None:
        return ranges.tensors[unit.inputs[0]]
    return smoothed_range(ranges, unit.inputs[0])
