"""The int8 quantizers trtmix writes into graphs, as plain numpy.

They live apart from the graph editing so that a unit's weight can be quantized outside a graph exactly as
``compile`` writes it (same scales, same rounding, same clipping): ``trtmix.quant.weights`` does that for compile,
the switched graph and the orderings.
"""

from __future__ import annotations

import numpy as np

INT8_MAX = 127
# ONNX Runtime's CPU u8×s8 GEMM (QLinearConv, QGemm, MatMulIntegerToFloat) sums pairs of u8·s8 products in int16
# on CPUs without VNNI and saturates with full-range int8 weights: measured here, a per-channel MatMul was off by
# 1.5 on outputs of magnitude 10.  ORT's own remedy is ``reduce_range``: 7-bit weights, |q| <= 63.
REDUCED_INT8_MAX = 63
UINT8_MAX = 255
# Scales below this are clamped: a zero scale is invalid in QuantizeLinear, and fp16 cannot hold much smaller ones.
MIN_SCALE = {np.dtype(np.float16): 1.2e-7, np.dtype(np.float32): 1e-12}


def per_channel_amax(weight: np.ndarray, axis: int) -> np.ndarray:
    """Max |w| over every axis but ``axis``: one value per output channel."""
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis % weight.ndim)
    return np.abs(weight.astype(np.float32)).max(axis=reduce_axes)


def symmetric_scale(
    amax: np.ndarray | float, dtype: np.dtype | type = np.float32, levels: int = INT8_MAX
) -> np.ndarray:
    """Scale of symmetric int8 quantization (zero point 0): amax / levels, floored so it is never zero."""
    dtype = np.dtype(dtype)
    scale = np.asarray(amax, dtype=np.float64) / levels
    return np.maximum(scale, MIN_SCALE[dtype]).astype(dtype)


def quantize_int8(values: np.ndarray, scale: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Round-to-nearest-even int8 quantization as QuantizeLinear computes it (saturating to [-128, 127])."""
    scale64 = np.asarray(scale, dtype=np.float64)
    if axis is not None and scale64.ndim == 1:
        shape = [1] * values.ndim
        shape[axis % values.ndim] = -1
        scale64 = scale64.reshape(shape)
    return np.clip(np.rint(values.astype(np.float64) / scale64), -128, INT8_MAX).astype(np.int8)


def fake_quantize_weight(
    weight: np.ndarray, axis: int, dtype: np.dtype | type = np.float32, levels: int = INT8_MAX
) -> np.ndarray:
    """Q(W): the weight after per-channel symmetric int8 quantization and dequantization, in ``weight``'s dtype.

    Its own max per channel, no smoothing: not a job's quantizer (that is ``trtmix.quant.weights.WeightQuantizer``).
    """
    scale = symmetric_scale(per_channel_amax(weight, axis), dtype, levels)
    quantized = quantize_int8(weight, scale, axis).astype(np.float64)
    shape = [1] * weight.ndim
    shape[axis % weight.ndim] = -1
    return (quantized * scale.astype(np.float64).reshape(shape)).astype(weight.dtype)


def asymmetric_uint8(minimum: float, maximum: float) -> tuple[np.float32, np.uint8]:
    """Scale and zero point of uint8 asymmetric quantization; the range is widened to hold 0 exactly."""
    low, high = min(float(minimum), 0.0), max(float(maximum), 0.0)
    scale = max((high - low) / UINT8_MAX, MIN_SCALE[np.dtype(np.float32)])
    zero_point = int(np.clip(round(-low / scale), 0, UINT8_MAX))
    return np.float32(scale), np.uint8(zero_point)
