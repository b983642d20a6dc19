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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtmix.calibration.channels import ChannelSummary
from trtmix.calibration.ranges import Ranges, TensorRange
from trtmix.errors import TrtmixError
from trtmix.ir.graph import GraphIndex
from trtmix.ir.units import KIND_CONV, KIND_LINEAR, Unit
from trtmix.quant.flavours import Flavour
from trtmix.quant.plan import Precision
from trtmix.quant.qdq import symmetric_scale

LOG = logging.getLogger(__name__)
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
FLOAT16_MAX = 65504.0
FLOAT16_SAFE = FLOAT16_MAX / 4  # headroom for the products a scaled weight takes part in
LEVELS = 127
ONE_SIDED = 0.5  # a channel with min ≥ −max/2 (or the mirror) is bounded on that side: see _centred


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


@dataclass(frozen=True)
class Candidate:
    """A tensor smoothing may apply to: its channel statistics, its readers and their weights as [in, out]."""

    summary: ChannelSummary
    readers: tuple[Unit, ...]
    weights: tuple[np.ndarray, ...]
    shiftable: bool  # every reader has a bias to take the shift's z·W


def plan_smoothing(
    model: onnx.ModelProto, units: list[Unit], ranges: Ranges, settings: SmoothSettings, float16: bool,
    centre: bool = False,
) -> tuple[Ranges, dict[str, Any]]:  # fmt: skip
    """``ranges`` with the chosen scales (and, with ``centre``, shifts) and a report of what was decided.

    With ``centre`` (meant for symmetric int8, the ``tensorrt`` flavour) a tensor may also be centred,
    X' = (X − z) / s (z per channel: ``_centred``, put on the int8 grid by ``applied_shift``), and z·Q(W·s)/s goes
    into each reader's bias (``trtmix.quant.bias.bias_delta``): a skewed channel (GELU's output) then uses both halves
    of the int8 range, which asymmetric uint8 (``ort-cpu``) gets from its zero point.
    """
    settings.validate()
    if not settings.enabled:
        return replace(ranges, smoothing={}, shifts={}), {"enabled": False}
    candidates = find_candidates(model, units, ranges)
    if not candidates:
        return replace(ranges, smoothing={}, shifts={}), {"enabled": True, "tensors": 0,
                                                          "reason": "no MatMul/Gemm input"}  # fmt: skip
    alphas = ALPHAS if settings.alpha is None else (settings.alpha,)
    choices = {alpha: _choose(candidates, alpha, float16, centre) for alpha in alphas}
    alpha = min(choices, key=lambda a: choices[a][2])
    scales, shifts, noise, clamped = choices[alpha]
    for unit_names in clamped:
        LOG.warning("smoothing scale clamped to keep float16 finite for %s", ", ".join(unit_names))
    baseline = sum(_noise(c.summary.amax, np.asarray(c.summary.mean_square), c.weights, 1.0)
                   for c in candidates.values())  # fmt: skip
    report = {"enabled": True, "alpha": alpha, "searched": settings.alpha is None, "candidates": len(candidates),
              "tensors": len(scales), "shifted": len(shifts),
              "kept_units": sorted(u.name for t in scales for u in candidates[t].readers),
              "noise_ratio": noise / max(baseline, 1e-30),
              "clamped": [name for names in clamped for name in names],
              "not_centred": sorted(u.name for c in candidates.values() if centre and not c.shiftable
                                    for u in c.readers)}  # fmt: skip
    as_tuples = {tensor: tuple(float(v) for v in value) for tensor, value in scales.items()}
    centred = {tensor: tuple(float(v) for v in value) for tensor, value in shifts.items()}
    return replace(ranges, smoothing=as_tuples, shifts=centred, meta={**ranges.meta, "smoothing_alpha": alpha}), report


def find_candidates(model: onnx.ModelProto, units: list[Unit], ranges: Ranges) -> dict[str, Candidate]:
    """Every tensor read by MatMul/Gemm units with 2-D weights whose channel statistics were recorded."""
    index = GraphIndex(model)
    candidates = {}
    for tensor, summary in ranges.channels.items():
        reading = readers(units, tensor)
        if not reading or summary.axis != -1:
            continue
        weights = [_oriented(index, unit) for unit in reading]
        if all(w is not None and w.shape[0] == len(summary.maximum) for w in weights):
            shiftable = all(_has_bias(index, unit) for unit in reading)
            candidates[tensor] = Candidate(summary, tuple(reading), tuple(weights), shiftable)  # type: ignore[arg-type]
    return candidates


def _has_bias(index: GraphIndex, unit: Unit) -> bool:
    """True when the unit ends in a bias the shift's z·W can go into, as ``trtmix.quant.bias.bias_input`` finds it.

    That is a 1-D initializer: Gemm input 2, or an input of a MatMul's bias Add.  A unit without one (Paddle2ONNX
    writes MatMuls without bias, and biases as Constant nodes) leaves its input tensor uncentred, with the other
    readers of that tensor; its scaling still applies (``not_centred`` in the report).
    """
    anchor = index.nodes[unit.name]
    if unit.op == "Gemm":
        return len(anchor.input) > 2 and _vector_initializer(index, anchor.input[2])
    if len(unit.nodes) < 2 or index.nodes[unit.nodes[1]].op_type != "Add":
        return False
    return any(_vector_initializer(index, name) for name in index.nodes[unit.nodes[1]].input)


def _vector_initializer(index: GraphIndex, name: str) -> bool:
    return name in index.initializers and len(index.initializers[name].dims) == 1


def prepare_ranges(
    model: onnx.ModelProto, units: list[Unit], ranges: Ranges, smooth: SmoothSettings, bias_correction: bool,
    flavour: Flavour,
) -> tuple[Ranges, dict[str, Any]]:  # fmt: skip
    """``build``'s ranges: smoothing from the expected-noise model alone (no metric to measure with, no centring).

    ``compile`` measures its options instead (``trtmix.job.quantizers``).
    """
    float16 = flavour.float_base is Precision.FP16
    smoothed, report = plan_smoothing(model, units, ranges, smooth, float16)
    correction = {"enabled": bias_correction, "channel_statistics": len(ranges.channels)}
    return replace(smoothed, bias_correction=bias_correction), {"smoothing": report, "bias_correction": correction}


def plan_conv_centring(
    model: onnx.ModelProto, units: list[Unit], ranges: Ranges, padded: bool = True
) -> tuple[Ranges, dict[str, Any]]:
    """``ranges`` with the one-sided inputs of convolutions centred, for symmetric int8 (issue 33).

    A ReLU or ReLU6 output spans [0, max], and symmetric int8 (TensorRT's only kind) spends half its levels on
    values below 0 that never come: one bit lost.  A pointwise convolution (1×1 kernel, one group, no padding) that
    reads X can read X − z instead, with z·Q(W) added to its bias, as a centred linear unit does (``plan_smoothing``
    with ``centre``, ``trtmix.quant.bias.bias_delta``): every output pixel reads one input pixel and no padding, so
    nothing reads the shifted zero.  EfficientNet-Lite0's 16 projection convs read ReLU6 outputs
    (``benchmarks/efficientnet_int8.py``).

    With ``padded`` a convolution that pads its input (EfficientNet-Lite0's depthwise convs, which read the ReLU6
    outputs whose lost bit costs the most) is centred too.  Where its input's spatial sizes are static, the Conv
    keeps its own zero padding of X − z (X padded with z) and ``compile`` adds a constant ``border_map`` after it,
    −z·Σ of the held weight DQ(Q(W)) over the taps that read padding, per output channel and pixel: DQ → Conv stays
    the fusable pattern, and on OpenVINO the all-INT8 EfficientNet-Lite0 ran 1.04× the plain graph this way
    (``benchmarks/efficientnet_int8.py --only latency``).  Where they are dynamic, ``divided_input`` pads X − z
    with −z in an explicit Pad (the zero X would have been padded with) and the Conv pads nothing: exact too, −z
    being on the int8 grid (``applied_shift``), but a copy of the input per conv (1.49× the plain graph in the same
    run).  Every padded reader of a tensor must pad it the same way (one Pad serves them all in that fallback).

    A tensor is centred when its calibrated range is one-sided (min ≥ 0 or max ≤ 0), every unit reading it is such a
    convolution with a constant bias, and its channel statistics were recorded.  z is the same for every channel, the
    middle of the tensor's calibrated range (put on the int8 grid by ``applied_shift``), so each channel keeps the
    whole [0, max] a ReLU can give it.  Per-channel centres, ``_centred``'s rule for linear units, put a ReLU6
    channel whose calibration minimum was 3.4 at z = 6.4, and its zeros elsewhere clipped: EfficientNet-Lite0's
    all-INT8 agreement fell from 0.80 to 0.68.  s stays 1 (no scaling).  Tensors ``ranges`` already smooths are
    left as they are, so this composes after ``plan_smoothing``.
    """
    index = GraphIndex(model)
    smoothing, shifts = dict(ranges.smoothing), dict(ranges.shifts)
    centred, refused = [], {}
    for tensor, summary in sorted(ranges.channels.items()):
        reading = [unit for unit in units if tensor in unit.inputs]
        found = ranges.tensors.get(tensor)
        if tensor in smoothing or found is None or not reading or summary.axis != 1:
            continue
        if found.min < 0 < found.max or found.min == found.max:
            continue  # two-sided: no level is wasted
        why = next((why for unit in reading if (why := _not_centrable(index, unit, tensor, padded))), None)
        if why is None and len({conv_pads(index.nodes[unit.name]) for unit in reading}) > 1:
            why = "its readers pad it differently"
        if why is not None:
            refused[tensor] = why
            continue
        channels = len(summary.maximum)
        smoothing[tensor] = (1.0,) * channels
        shifts[tensor] = ((found.min + found.max) / 2,) * channels
        centred.append(tensor)
    report = {"centred": centred, "readers": sorted(u.name for u in units if u.inputs[0] in centred),
              "refused": refused}  # fmt: skip
    return replace(ranges, smoothing=smoothing, shifts=shifts), report


def _not_centrable(index: GraphIndex, unit: Unit, tensor: str, padded: bool) -> str | None:
    """Why ``unit`` cannot read ``tensor`` centred (None: it can): a Conv with a bias, unpadded unless ``padded``."""
    node = index.nodes[unit.name]
    if unit.kind != KIND_CONV or unit.inputs[0] != tensor or unit.weight_shape is None:
        return f"{unit.name} is not a convolution reading it as its input"
    auto_pad = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}.get("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        return f"{unit.name} pads by auto_pad {auto_pad!r}, not explicit pads"
    if any(conv_pads(node)) and not padded:
        return f"{unit.name} pads its input (the padding would read the shifted zero)"
    if not (len(node.input) > 2 and _vector_initializer(index, node.input[2])):
        return f"{unit.name} has no constant bias to take z·W"
    return None


def conv_pads(node: onnx.NodeProto | gs.Node) -> tuple[int, ...]:
    """A Conv's explicit ``pads`` (begin…, end…), () when it pads nothing: ``explicit_pads`` of its attributes."""
    if isinstance(node, gs.Node):
        return explicit_pads(node.attrs)
    return explicit_pads({a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})


def explicit_pads(attributes: Mapping[str, Any]) -> tuple[int, ...]:
    """``pads`` of a Conv's attributes (name → value), () when it pads nothing.

    On plain values, so the ONNX proto (``trtmix.sensitivity.measured``) and graphsurgeon (compile) read it alike.
    """
    pads = attributes.get("pads") or []
    return tuple(int(p) for p in pads) if any(pads) else ()


def unit_spatial(unit: Unit) -> int:
    """The axes after the channel axis of ``unit``'s input: a convolution's spatial axes, 0 for a linear unit."""
    return len(unit.weight_shape) - 2 if unit.kind == KIND_CONV and unit.weight_shape is not None else 0


def describe_quantizers(report: dict[str, Any]) -> str:
    """One summary line: the smoothing option chosen (and what each measured option scored), bias correction."""
    smoothing = report["smoothing"]
    measured = smoothing.get("measured") or {}
    if not smoothing["enabled"]:
        text = "smoothing off" + (" (--no-smooth)" if not measured else "")
    elif not smoothing.get("tensors"):
        text = f"smoothing: no tensor gains ({smoothing.get('reason', 'expected noise not lower')})"
    else:
        centred = f", {smoothing['shifted']} centred" if smoothing.get("shifted") else ""
        text = (f"smoothing α={smoothing['alpha']} on {smoothing['tensors']} of {smoothing['candidates']} "
                f"MatMul/Gemm input tensors{centred}")  # fmt: skip
    if len(measured) > 1:
        scores = ", ".join(f"{label} {value:.5f}" for label, value in measured.items())
        text += f" (all-INT8 score on the search split: {scores})"
    correction = "on" if report["bias_correction"]["enabled"] else "off (--no-bias-correction)"
    extras = _describe_per_tensor(report.get("per_tensor_ranges")) + _describe_extras(report)
    return f"quantizers: {text}; bias correction {correction}{extras}"


def _describe_extras(report: dict[str, Any]) -> str:
    """Conv centring and learned weight rounding in the summary line, where the job measured them."""
    text = ""
    conv = report.get("conv_centring")
    if conv is not None:
        text += f"; {len(conv['centred'])} conv inputs centred: {'kept' if conv['kept'] else 'not kept (not higher)'}"
    rounding = report.get("weight_rounding") or {}
    if rounding.get("requested") and "score_with" in rounding:
        verdict = "kept" if rounding["enabled"] else "not kept (not higher)"
        text += f"; learned weight rounding {verdict} ({rounding.get('seconds', 0):.1f} s)"
    return text


def _describe_per_tensor(record: dict[str, Any] | None) -> str:
    """The per-tensor range choice in the summary line: kept or not, what it chose, or why it was not made."""
    if record is None:
        return ""
    if "skipped" in record:
        return f"; per-tensor ranges not measured: {record['skipped']}"
    counts = ", ".join(f"{method} {count}" for method, count in record.get("counts", {}).items())
    verdict = "kept" if record.get("kept") else "not kept (not higher)"
    return f"; per-tensor ranges {verdict}: {counts} ({record.get('seconds', 0):.1f} s)"


def _oriented(index: GraphIndex, unit: Unit) -> np.ndarray | None:
    """The unit's weight as [input channels, output channels]."""
    weight = index.constant_value(unit.weight) if unit.weight else None
    if weight is None or weight.ndim != 2:
        return None
    return weight.astype(np.float64) if input_axis(unit) == 0 else weight.astype(np.float64).T


def _choose(
    candidates: dict[str, Candidate], alpha: float, float16: bool, centre: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float, list[list[str]]]:
    """Per tensor at ``alpha``, the option of least expected noise: as exported, scaled, or scaled and centred.

    Returns the scales and shifts kept, the total noise, and the units whose scales were clamped.  Centring is its
    own option, measured against scaling alone: before issue 33 it replaced it, so a tensor whose centred scaling lost
    to no scaling at all (MiniLM's first FFN input) was left unscaled.  The centred option keeps the s of scaling
    alone: (X − z)/s then spans half of X/s on a one-sided channel (one bit back) while the weight and its noise stay
    as they were; the weight noise sees X/s, not X − z, since the bias takes z·Q(W·s)/s
    (``trtmix.quant.bias.bias_delta``).
    """
    scales, shifts, total, clamped = {}, {}, 0.0, []
    for tensor, candidate in candidates.items():
        summary = candidate.summary
        mean_square = np.asarray(summary.mean_square)
        without = _noise(summary.amax, mean_square, candidate.weights, 1.0)
        s, was_clamped = _scales(summary.amax, candidate.weights, alpha, float16)
        options = [(without, None, None), (_noise(summary.amax, mean_square, candidate.weights, s), s, None)]
        if centre and candidate.shiftable:
            half, z = _centred(summary, s)
            options.append((_noise(half, mean_square, candidate.weights, s), s, z))
        noise, chosen, z = min(options, key=lambda option: option[0])  # ties: the simpler option, listed first
        if chosen is not None:
            scales[tensor] = chosen
            if z is not None:
                shifts[tensor] = z
            if was_clamped:
                clamped.append([u.name for u in candidate.readers])
        total += noise
    return scales, shifts, total, clamped


def _centred(summary: ChannelSummary, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel half-range of X − z, and z: each channel placed in the int8 range of (X − z)/s with its headroom.

    The range of (X − z)/s is ±R, R = max over channels of (max − min)/(2s), set by the widest channel (its z is its
    middle).  Every narrower channel has room to spare, ±R·s around its z, and where it goes decides which unseen
    values clip.  A one-sided channel (min ≥ −max/2: GELU's output, bounded below at −0.17) puts its minimum at the
    bottom, −R·s, and all its room above, where its tail grows; one bounded above, the mirror; any other channel is
    moved as little as fits it (not at all where it fits), keeping its room on both sides.  The middle of every
    channel's own range, as first written, left a non-dominant channel half the room it had unshifted: on a tiny
    FFN, 0.1% of unseen values then clipped and the unit's error rose from 0.028 to 0.042 (issue 33).
    """
    low, high = np.asarray(summary.minimum, dtype=np.float64), np.asarray(summary.maximum, dtype=np.float64)
    half = (high - low) / 2
    reach = float((half / s).max()) * s  # R·s: each channel's half-width in the units of X
    z = np.clip(0.0, high - reach, low + reach)  # the smallest move that fits [min, max] into z ± R·s
    up = (high > 0) & (low >= -ONE_SIDED * high)
    down = (low < 0) & (high <= -ONE_SIDED * low) & ~up
    z[up] = (low + reach)[up]
    z[down] = (high - reach)[down]
    return half, z


def _scales(amax: np.ndarray, weights: tuple[np.ndarray, ...], alpha: float, float16: bool) -> tuple[np.ndarray, bool]:
    """s_j = max|X_j|^α / max|W_j|^(1−α), 1 where a channel is all zero; clamped to keep float16 finite."""
    activation = amax.astype(np.float64)
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


def _noise(amax: np.ndarray, mean_square: np.ndarray, weights: tuple[np.ndarray, ...], s: np.ndarray | float) -> float:
    """Expected squared output error of int8 X/s (one scale) and per-output-channel int8 W·s, summed over readers."""
    s = np.broadcast_to(np.asarray(s, dtype=np.float64), amax.shape)
    activation_step = float((amax / s).max()) / LEVELS
    scaled_square = float((mean_square / s**2).sum())
    total = 0.0
    for weight in weights:
        scaled = weight * s[:, None]
        weight_step = np.abs(scaled).max(axis=0) / LEVELS
        total += activation_step**2 / 12 * float(np.square(scaled).sum())
        total += float((weight_step**2 / 12).sum()) * scaled_square
    return total


def unit_shift(unit: Unit, ranges: Ranges | None) -> np.ndarray | None:
    """The shift subtracted from ``unit``'s input channels before scaling (None: not shifted): ``applied_shift``."""
    if ranges is None or unit_scales(unit, ranges) is None or unit.inputs[0] not in ranges.shifts:
        return None
    return applied_shift(ranges, unit.inputs[0])


def applied_shift(ranges: Ranges, tensor: str) -> np.ndarray:
    """The z the graph subtracts from ``tensor``: each channel's centre moved to the int8 grid, a multiple of s·Δ.

    Δ is the step of the quantized (X − z)/s (its range's amax / 127).  A one-sided channel (GELU's output) holds
    most of its values in a narrow cluster at 0; with z on the grid, X = 0 stays a level of the quantizer, as it is
    without the shift.  Off the grid, every value of that cluster rounds the same way, and the per-channel errors add
    up coherently over the 1,536 channels of an FFN down-projection: measured on MiniLM's first one (issue 33), the
    activation's share of the unit's output error was 0.0308 unshifted, 0.0247 with z = (max + min)/2, 0.0149 on the
    grid.  The move is at most s·Δ/2, so the range grows by at most half a step at its ends.
    """
    s = np.asarray(ranges.smoothing[tensor], dtype=np.float64)
    z = np.asarray(ranges.shifts[tensor], dtype=np.float64)
    step = float(symmetric_scale(smoothed_range(ranges, tensor).amax, np.float32)) * s
    return np.rint(z / step) * step


def unit_scales(unit: Unit, ranges: Ranges | None) -> np.ndarray | None:
    """The divisor of ``unit``'s input channels (its weight rows are multiplied by it), or None when not smoothed."""
    if ranges is None or unit.inputs[0] not in ranges.smoothing:
        return None
    if not (unit.kind == KIND_LINEAR and _is_2d(unit)) and unit.kind != KIND_CONV:
        return None
    return np.asarray(ranges.smoothing[unit.inputs[0]], dtype=np.float64)


def scaled_weight(unit: Unit, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The weight with its input-channel rows multiplied by ``s``, in its own dtype (2-D, or a conv's [out, in, k…]).

    A centred convolution is not scaled (s = 1, ``plan_conv_centring``): its weight is returned as it is, which a
    grouped one's [out, in / group, k…] needs, its input axis not being the input's channels.
    """
    if np.all(s == 1.0):
        return weight
    shape = [1] * weight.ndim
    shape[input_axis(unit)] = -1
    return (weight.astype(np.float64) * s.reshape(shape)).astype(weight.dtype)


def smoothed_range(ranges: Ranges, tensor: str) -> TensorRange:
    """The range of (X − z)/s: per-channel observed min/max moved and divided, shrunk as calibration clipped X."""
    summary, s = ranges.channels[tensor], np.asarray(ranges.smoothing[tensor])
    z = np.asarray(ranges.shifts.get(tensor, np.zeros_like(s)))
    low = float(((np.asarray(summary.minimum) - z) / s).min())
    high = float(((np.asarray(summary.maximum) - z) / s).max())
    calibrated, observed_low, observed_high = ranges.tensors[tensor], min(summary.minimum), max(summary.maximum)
    low *= calibrated.min / observed_low if observed_low < 0 else 1.0
    high *= calibrated.max / observed_high if observed_high > 0 else 1.0
    return TensorRange(min(low, 0.0), max(high, 0.0))


def divided_input(
    graph: gs.Graph, original: GraphIndex, tensor: str, edges: list[tuple[gs.Node, int]], ranges: Ranges
) -> gs.Tensor:
    """The tensor the smoothed readers on ``edges`` quantize: (X − z)/s.

    Folded into X's LayerNormalization when every reader of X is on ``edges`` (γ/s, (β − z)/s), else explicit
    Sub and Mul nodes shared by those readers.  A centred convolution that pads keeps its own zero padding of X − z
    where X's spatial sizes are static: ``compile`` then adds its ``border_map`` after it (the Pad of −z measured
    1.49× the plain all-INT8 EfficientNet-Lite0 on OpenVINO, the map 1.04×, in one paired run).  Where they are
    dynamic, the map has no shape, and X − z is padded with −z in an explicit Pad (``_padded``) instead.
    """
    variable = edges[0][0].inputs[edges[0][1]]
    s = np.asarray(ranges.smoothing[tensor], dtype=np.float64)
    z = applied_shift(ranges, tensor) if tensor in ranges.shifts else None
    summary = ranges.channels.get(tensor)
    if summary is not None and summary.axis == 1:  # a convolution's NCHW input: the constants broadcast over C
        spatial = _spatial_dims(edges[0][0])
        divided = explicit_division(graph, variable, s, z, tensor, spatial=spatial)
        pads = conv_pads(edges[0][0])
        if pads and z is not None and static_spatial(variable, spatial) is None:
            return _padded(graph, divided, edges, pads, z, tensor)  # no border map without static sizes
        return divided
    readers_of_x = {node.name for node in original.consumers.get(tensor, [])}
    if readers_of_x <= {node.name for node, _ in edges} and tensor not in original.graph_outputs:
        producer = original.producer.get(tensor)
        if producer is not None and producer.op_type == "LayerNormalization" and _fold(graph, producer.name, s, z):
            return variable
    return explicit_division(graph, variable, s, z, tensor)


def explicit_division(
    graph: gs.Graph, variable: gs.Tensor, s: np.ndarray, z: np.ndarray | None, prefix: str, spatial: int = 0
) -> gs.Variable:
    """(X − z) · (1/s) as graph nodes (the Sub only when there is a shift, the Mul only when some s is not 1).

    ``spatial``: how many axes follow the channel axis (2 for a convolution's NCHW input; 0 for the last axis).
    """
    dtype = np.dtype(variable.dtype) if variable.dtype is not None else np.dtype(np.float32)
    shape = (-1,) + (1,) * spatial
    if z is not None:
        centred = gs.Variable(f"{prefix}/centred", dtype=variable.dtype, shape=variable.shape)
        shift = gs.Constant(f"{prefix}/smooth_shift", z.astype(dtype).reshape(shape))
        graph.nodes.append(gs.Node("Sub", f"{prefix}/smooth/Sub", {}, [variable, shift], [centred]))
        variable = centred
        if np.all(s == 1.0):
            return centred
    divided = gs.Variable(f"{prefix}/smoothed", dtype=variable.dtype, shape=variable.shape)
    inverse = gs.Constant(f"{prefix}/smooth_inverse", (1.0 / s).astype(dtype).reshape(shape))
    graph.nodes.append(gs.Node("Mul", f"{prefix}/smooth/Mul", {}, [variable, inverse], [divided]))
    return divided


def _padded(
    graph: gs.Graph, variable: gs.Variable, edges: list[tuple[gs.Node, int]], pads: tuple[int, ...], z: np.ndarray,
    prefix: str,
) -> gs.Variable:  # fmt: skip
    """``variable`` (X − z) padded with −z as the readers' Conv would pad X with 0; the Convs then pad nothing.

    ``plan_conv_centring`` gives every channel one z, so one constant value pads them all.
    """
    if np.ptp(z) != 0:
        raise TrtmixError(f"Internal error: the shift of {prefix} differs between channels; a Pad takes one value.")
    half = len(pads) // 2
    onnx_pads = np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], dtype=np.int64)  # N, C unpadded
    dtype = np.dtype(variable.dtype) if variable.dtype is not None else np.dtype(np.float32)
    padded = gs.Variable(f"{prefix}/padded", dtype=variable.dtype)
    value = gs.Constant(f"{prefix}/pad_value", np.asarray(-z[0], dtype=dtype))
    graph.nodes.append(gs.Node("Pad", f"{prefix}/centring/Pad", {"mode": "constant"},
                               [variable, gs.Constant(f"{prefix}/pads", onnx_pads), value], [padded]))  # fmt: skip
    for node, _ in edges:
        node.attrs["pads"] = [0] * len(pads)
    return padded


def static_spatial(variable: gs.Tensor, spatial: int) -> tuple[int, ...] | None:
    """The spatial sizes of a convolution's NCHW input when shape inference fixed them (None: some are dynamic).

    The border map is one constant per output pixel, so it needs them; the batch may stay dynamic (it broadcasts).
    """
    return spatial_sizes(variable.shape, spatial)


def spatial_sizes(shape: Sequence[Any] | None, spatial: int) -> tuple[int, ...] | None:
    """The sizes after the batch and channel axes of an NC… ``shape`` with ``spatial`` such axes, if all are known.

    A size is known where it is a positive int (a dynamic one: a name, None, or ONNX's unset 0).  On plain values,
    so the ONNX proto (``trtmix.sensitivity.measured``) and graphsurgeon (compile) read it alike.
    """
    if shape is None or len(shape) != 2 + spatial:
        return None
    sizes = shape[2:]
    if not all(isinstance(size, (int, np.integer)) and size > 0 for size in sizes):
        return None
    return tuple(int(size) for size in sizes)


def border_map(node: gs.Node, weight: np.ndarray, shift: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """What a centred Conv ``node`` must add to its output so that its zero padding of X − z reads X's zero padding.

    The Conv pads X − z with 0, i.e. X with z; its bias holds z·ΣW over every tap (``bias_delta``), so at an output
    pixel where taps read padding it is off by z·W of those taps.  The map is −Σ over them of z_ci·W[c, ci, taps]
    (c's group's input channels), [1, out, output sizes…] in float64, 0 inside; ``weight`` must be the weight the
    unit multiplies by (DQ(Q(W)), ``QuantizedWeight.stored``) for the sum to cancel the bias's exactly.  Strides,
    dilations and groups as the Conv's attributes give them; explicit pads only (``plan_conv_centring`` refuses
    auto_pad SAME).
    """
    weight = weight.astype(np.float64)
    outputs, per_group, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
    spatial = len(kernel)
    pads = list(node.attrs.get("pads", [0] * 2 * spatial))
    strides = list(node.attrs.get("strides", [1] * spatial))
    dilations = list(node.attrs.get("dilations", [1] * spatial))
    groups = int(node.attrs.get("group", 1))
    z = np.broadcast_to(np.asarray(shift, dtype=np.float64), (groups * per_group,))
    channel_shift = z.reshape(groups, per_group)[np.arange(outputs) // (outputs // groups)]  # [out, in per group]
    shifted = np.einsum("ci...,ci->c...", weight, channel_shift)  # z·W per output channel and tap
    inside = np.ones((), dtype=bool)
    for axis, size in enumerate(sizes):
        span = dilations[axis] * (kernel[axis] - 1) + 1
        count = (size + pads[axis] + pads[axis + spatial] - span) // strides[axis] + 1
        read = (np.arange(count)[:, None] * strides[axis] - pads[axis]
                + np.arange(kernel[axis])[None, :] * dilations[axis])  # fmt: skip
        inside = np.logical_and.outer(inside, (read >= 0) & (read < size))  # [o₀, k₀, o₁, k₁, …]
    order = [2 * axis for axis in range(spatial)] + [2 * axis + 1 for axis in range(spatial)]
    outside = ~inside.transpose(order)  # [o…, k…]: tap k reads padding at output pixel o
    taps = list(range(1, spatial + 1))
    correction = -np.tensordot(shifted, outside.astype(np.float64), axes=(taps, [spatial + t - 1 for t in taps]))
    return correction[None]


def add_to_output(graph: gs.Graph, node: gs.Node, addend: gs.Tensor) -> None:
    """``node``'s output plus ``addend``, under the output's own name.

    The node writes ``<output>/uncorrected`` and an Add named after the output writes the output itself, so its
    readers, and a graph output of that name, read the corrected value with nothing rerouted.
    """
    output = node.outputs[0]
    uncorrected = gs.Variable(f"{output.name}/uncorrected", dtype=addend.dtype, shape=output.shape)
    output.dtype = addend.dtype  # the Add computes in the addend's (the unit's) float dtype
    node.outputs.clear()
    node.outputs.append(uncorrected)
    graph.nodes.append(gs.Node("Add", f"{output.name}/border/Add", {}, [uncorrected, addend], [output]))


def _spatial_dims(node: gs.Node) -> int:
    """The spatial axes of a Conv node's input: its weight's rank − 2 (2 when the weight is not a constant)."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    return len(weight.values.shape) - 2 if isinstance(weight, gs.Constant) else 2


def _fold(graph: gs.Graph, layernorm: str, s: np.ndarray, z: np.ndarray | None) -> bool:
    """γ/s and (β − z)/s in the LayerNormalization; False when they are not constants of the right length."""
    node = next(n for n in graph.nodes if n.name == layernorm)
    gamma = node.inputs[1]
    beta = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if not all(isinstance(t, gs.Constant) and t.values.shape == s.shape for t in (gamma, beta) if t is not None):
        return False
    if beta is None and z is not None:
        return False  # nowhere to put the shift
    # named after the node: exporters share one initializer between LayerNorms with equal γ (all ones at init)
    node.inputs[1] = _constant(f"{layernorm}/gamma_smoothed", gamma.values.astype(np.float64) / s, gamma.values.dtype)
    if beta is not None:
        moved = (beta.values.astype(np.float64) - (z if z is not None else 0.0)) / s
        node.inputs[2] = _constant(f"{layernorm}/beta_smoothed", moved, beta.values.dtype)
    return True


def _constant(name: str, values: np.ndarray, dtype: np.dtype) -> gs.Constant:
    return gs.Constant(name, values.astype(dtype))


def input_range(unit: Unit, ranges: Ranges) -> TensorRange:
    """The range the unit's quantized input has: that of X/s where the unit is smoothed, else X's."""
    if unit_scales(unit, ranges) is None:
        return ranges.tensors[unit.inputs[0]]
    return smoothed_range(ranges, unit.inputs[0])
