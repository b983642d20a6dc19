"""A unit's INT8 weight as ``compile`` writes it: one implementation for every place that needs it.

``compile`` writes it into the graph, the switched ``kl`` graph puts its dequantized form behind a switch, and the
``noise`` and Hessian orderings take their ΔW from it.  Each used to compute it on its own (the orderings with 127
levels, no smoothing and max weight ranges whatever the job used), and so measured a quantizer no plan was built
with.  The rules that decide it: per-output-channel symmetric int8 with the flavour's levels; the amax of
``ranges.weights`` (``--weights``) when given, else the weight's own max; where the unit's input is smoothed, the
weight's rows multiplied by s first, and its own max used (the calibrated amax is of the unscaled weight).  The bias
terms that go with it (z·W for a centred input, bias correction) are ``trtmix.quant.bias.bias_delta``.  Where the
ranges carry int8 values learned for the weight (``Ranges.rounding``, ``trtmix.quant.rounding``) for exactly these
scales, levels and input transform, ``int8`` returns them instead of round-to-nearest, so every consumer sees them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from trtmix.calibration.ranges import Ranges
from trtmix.ir.units import Unit
from trtmix.quant.flavours import Flavour
from trtmix.quant.float_types import plan_float32_rule
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.qdq import per_channel_amax, quantize_int8, symmetric_scale
from trtmix.quant.smooth import input_axis, scaled_weight, unit_scales, unit_shift


@dataclass(frozen=True)
class QuantizedWeight:
    """One unit's weight quantization: what is quantized, its per-channel scales, and the smoothing around it."""

    unit: Unit
    exact: np.ndarray  # the float weight as exported
    weight: np.ndarray  # what is quantized: ``exact`` with its input rows multiplied by s where smoothed
    scale: np.ndarray  # per output channel, in the float dtype of the graph it is written into (DQ's output dtype)
    axis: int  # the output-channel axis
    smoothing: np.ndarray | None  # s: the unit reads X / s (None: not smoothed)
    shift: np.ndarray | None  # z: the unit reads (X − z) / s (None: not centred)
    learned: np.ndarray | None = None  # int8 values learned on calibration data (None: round to nearest)

    def int8(self) -> np.ndarray:
        """Q(weight): the int8 values, rounded as QuantizeLinear rounds, of the weight as the graph stores it.

        A float16 graph's Q→DQ reads the float16 weight: rounding it first moves ~1% of the values of a float32
        weight by one step (ties), which the switched graph and the orderings must see as the engine does.  Learned
        values, where they apply, replace the rounding.
        """
        if self.learned is not None:
            return self.learned
        return quantize_int8(self.weight.astype(self.scale.dtype), self.scale, self.axis)

    def source(self, float_dtype: np.dtype) -> np.ndarray:
        """The float weight a Q→DQ graph stores: the weight, or with learned values, int8 × scale.

        QuantizeLinear of int8 × scale gives the int8 back: in float16, |q| ≤ 127 times the scale is off by at most
        2⁻¹¹ relative, far from half a step.
        """
        if self.learned is None:
            return self.weight.astype(float_dtype)
        return self.dequantized().astype(float_dtype)

    def dequantized(self) -> np.ndarray:
        """DQ(Q(weight)) in float64, exactly: the rounding to int8 alone (what bias correction removes)."""
        shape = [1] * self.weight.ndim
        shape[self.axis % self.weight.ndim] = -1
        return self.int8().astype(np.float64) * self.scale.astype(np.float64).reshape(shape)

    def stored(self) -> np.ndarray:
        """DQ(Q(weight)) in the graph's float dtype: what the INT8 unit multiplies its (divided) input by."""
        return self.dequantized().astype(self.scale.dtype)

    def effective_delta(self) -> np.ndarray:
        """ΔW in the float weight's coordinates (float64): DQ(Q(W·s)) / s − W, so X·(W + ΔW) is the INT8 product.

        DQ is the graph's (``stored``: in a float16 graph, rounded to float16).  The shift moves no weight: its z·W
        goes into the bias exactly.  This is the ΔW the orderings score.
        """
        dequantized = self.stored().astype(np.float64)
        if self.smoothing is not None:  # a 2-D weight, or a centred convolution's [out, in, k…] (s = 1)
            shape = [1] * dequantized.ndim
            shape[input_axis(self.unit)] = -1
            dequantized = dequantized / self.smoothing.reshape(shape)
        return dequantized - self.exact.astype(np.float64)


def quantize_unit_weight(
    unit: Unit, exact: np.ndarray, ranges: Ranges | None, levels: int, float_dtype: np.dtype
) -> QuantizedWeight:
    """``unit``'s weight ``exact`` quantized under ``ranges`` with ``levels``, its scales in ``float_dtype``."""
    s, z = unit_scales(unit, ranges), unit_shift(unit, ranges)
    weight, amax = exact, (ranges.weights.get(unit.weight) if ranges is not None else None)  # type: ignore[arg-type]
    if s is not None and not np.all(s == 1.0):  # a centred-only input (s = 1) keeps the weight and its amax
        weight, amax = scaled_weight(unit, exact, s), None
    axis = unit.weight_axis if unit.weight_axis is not None else 0
    channel_amax = np.asarray(amax, dtype=np.float32) if amax is not None else per_channel_amax(weight, axis)
    scale = symmetric_scale(channel_amax, float_dtype, levels)
    return QuantizedWeight(unit, exact, weight, scale, axis, s, z, _learned(unit, exact, ranges, scale, levels))


def _learned(unit: Unit, exact: np.ndarray, ranges: Ranges | None, scale: np.ndarray, levels: int) -> np.ndarray | None:
    """The learned int8 values for ``unit``'s weight when they were learned for this very quantizer, else None.

    Values learned for other scales, levels or another input transform are stale and are not used.
    """
    learned = ranges.rounding.get(unit.weight) if ranges is not None and unit.weight else None
    if learned is None or learned.values.shape != exact.shape or learned.levels != levels:
        return None
    if not _same_scale(learned.scale, scale) or learned.guard != input_guard(unit, ranges):
        return None
    return np.asarray(learned.values, np.int8)


def _same_scale(learned: np.ndarray, scale: np.ndarray) -> bool:
    """The scales the values were learned for, up to float16's rounding (a unit the plan keeps in float32 too)."""
    learned = np.asarray(learned, np.float64)
    return learned.shape == scale.shape and bool(np.allclose(learned, scale.astype(np.float64), rtol=2**-10, atol=0))


def input_guard(unit: Unit, ranges: Ranges | None) -> str:
    """A digest of how ``unit`` reads its input (s, z, bias correction): learned values are tied to it.

    The values were learned on the input as the unit sees it, so a new smoothing or centring of that input, or bias
    correction switched, makes them stale even where the scales happen to be the same.
    """
    hasher = hashlib.sha256()
    for value in (unit_scales(unit, ranges), unit_shift(unit, ranges)):
        hasher.update(b"-" if value is None else np.asarray(value, np.float64).tobytes())
    hasher.update(b"corrected" if ranges is not None and ranges.bias_correction else b"plain")
    return hasher.hexdigest()[:16]


@dataclass(frozen=True)
class WeightQuantizer:
    """The job's weight quantizer for any one unit, as that unit's single-unit plan compiles it.

    What the orderings use instead of compiling: the job's ranges (weight amax, smoothing, shifts), the flavour's
    levels, and the float dtype the plan gives the unit's weight (its scales are rounded to it).
    """

    ranges: Ranges | None
    flavour: Flavour
    default: Precision = Precision.FP16
    fp32_nodes: frozenset[str] = frozenset()

    def float_dtype(self, unit: Unit, exact: np.ndarray) -> np.dtype:
        """The weight's dtype in ``unit``'s single-unit graph: the plan's float typing, as ``compile`` applies it."""
        if self.flavour.float_base is not Precision.FP16:
            return np.dtype(exact.dtype)  # compile leaves the graph's dtypes as exported
        plan = PrecisionPlan.with_int8([unit.name], self.default, self.fp32_nodes)
        return np.dtype(np.float32) if plan_float32_rule([unit], plan)(unit.name) else np.dtype(np.float16)

    def quantize(self, unit: Unit, exact: np.ndarray) -> QuantizedWeight:
        """``unit``'s weight ``exact`` as the job's ``compile`` quantizes it."""
        return quantize_unit_weight(unit, exact, self.ranges, self.flavour.weight_levels, self.float_dtype(unit, exact))
