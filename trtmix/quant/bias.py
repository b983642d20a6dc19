"""Bias correction: remove the mean output shift that rounding a unit's weights to int8 causes.

With Q(W) = W + ΔW, a unit computes X·W + X·ΔW; the second term has mean E[X]·ΔW per output channel, which is not
zero when a channel's few weights all round the same way (depthwise convolutions, with 9 weights per channel, are
the known case).  E[X] per input channel comes from the calibration pass (``trtmix.calibration.channels``); the
shift is subtracted from the unit's bias, so the int8 unit is unbiased on the calibration data's mean.  A unit
without a bias (a Conv whose BatchNorm was not folded, a bare MatMul) is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from trtmix.calibration.ranges import Ranges
from trtmix.ir.units import KIND_CONV, Unit
from trtmix.quant.qdq import quantize_int8


def correct_bias(
    graph: gs.Graph,
    unit: Unit,
    weight: np.ndarray,
    weight_scale: np.ndarray,
    ranges: Ranges,
    smoothing: np.ndarray | None = None,
) -> bool:
    """Subtract E[X]·ΔW from the unit's bias in ``graph``; False when there is no bias or no channel mean."""
    summary = ranges.channels.get(unit.inputs[0])
    found = bias_input(graph, unit)
    if summary is None or found is None or unit.weight_axis is None:
        return False
    node, position = found
    mean = np.asarray(summary.mean, dtype=np.float64)
    if smoothing is not None:
        mean = mean / smoothing  # the unit reads X / s
    shift = expected_shift(unit, weight, weight_scale, mean)
    if shift is None:
        return False
    bias = node.inputs[position]
    values = bias.values
    node.inputs[position] = gs.Constant(
        f"{bias.name}/corrected", (values.astype(np.float64) - shift).astype(values.dtype)
    )
    return True


def expected_shift(unit: Unit, weight: np.ndarray, weight_scale: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """E[X]·ΔW per output channel for the unit's int8 weight (None when the shapes do not line up)."""
    axis = unit.weight_axis or 0
    shape = [1] * weight.ndim
    shape[axis] = -1
    exact = weight.astype(np.float64)
    rounded = quantize_int8(weight, weight_scale, axis).astype(np.float64) * weight_scale.astype(np.float64).reshape(
        shape
    )
    error = rounded - exact
    if unit.kind == KIND_CONV:
        outputs, per_group = error.shape[0], error.shape[1]
        if mean.size % per_group or outputs % (mean.size // per_group):
            return None
        groups = mean.size // per_group
        means = mean.reshape(groups, per_group)[np.arange(outputs) // (outputs // groups)]
        return (error.reshape(outputs, per_group, -1).sum(axis=2) * means).sum(axis=1)
    oriented = error if axis == 1 else error.T  # [input channels, output channels]
    return mean @ oriented if oriented.shape[0] == mean.size else None


def bias_input(graph: gs.Graph, unit: Unit) -> tuple[gs.Node, int] | None:
    """(node, input position) of the unit's constant bias in ``graph``: Conv/Gemm input 2, or a MatMul's bias Add."""
    nodes = {node.name: node for node in graph.nodes}
    if unit.op in ("Conv", "Gemm"):
        anchor = nodes[unit.name]
        if len(anchor.inputs) > 2 and isinstance(anchor.inputs[2], gs.Constant) and anchor.inputs[2].values.ndim == 1:
            return anchor, 2
        return None
    add = nodes.get(unit.nodes[1]) if len(unit.nodes) > 1 else None
    if add is None or add.op != "Add":
        return None
    for position, tensor in enumerate(add.inputs):
        if isinstance(tensor, gs.Constant) and tensor.values.ndim == 1:
            return add, position
    return None
