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
from trtmix.errors import CompileError
from trtmix.ir.units import KIND_CONV, Unit
from trtmix.quant.qdq import quantize_int8


def correct_bias(
    graph: gs.Graph,
    unit: Unit,
    weight: np.ndarray,
    weight_scale: np.ndarray,
    ranges: Ranges,
    smoothing: np.ndarray | None = None,
    shift: np.ndarray | None = None,
) -> bool:
    """Subtract E[X]·ΔW from the unit's bias in ``graph``; False when there is no bias or no channel mean.

    ``weight`` is the weight as quantized (scaled by the smoothing, if any); the unit then reads (X − shift)/s.
    """
    summary = ranges.channels.get(unit.inputs[0])
    found = bias_input(graph, unit)
    if summary is None or found is None or unit.weight_axis is None:
        return False
    delta = expected_shift(unit, weight, weight_scale, input_mean(summary.mean, smoothing, shift))
    if delta is None:
        return False
    add_to_bias(*found, -delta, "corrected")
    return True


def input_mean(mean: tuple[float, ...], smoothing: np.ndarray | None, shift: np.ndarray | None) -> np.ndarray:
    """E[(X − shift)/s] per channel: the mean of what the unit reads."""
    value = np.asarray(mean, dtype=np.float64) - (shift if shift is not None else 0.0)
    return value / smoothing if smoothing is not None else value


def absorb_shift(graph: gs.Graph, unit: Unit, weight: np.ndarray, shift: np.ndarray) -> None:
    """Add shift·W (the float weight, unscaled) to the unit's bias: (X − z)·W + z·W + b is X·W + b."""
    found = bias_input(graph, unit)
    if found is None:
        raise CompileError(f"Internal error: unit {unit.name} has no bias to take its input shift.")
    add_to_bias(*found, shift_product(unit, weight, shift), "shifted")


def shift_product(unit: Unit, weight: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """z·W per output channel, for a 2-D weight in either orientation."""
    oriented = weight.astype(np.float64) if (unit.weight_axis or 0) == 1 else weight.astype(np.float64).T
    return shift @ oriented


def add_to_bias(node: gs.Node, position: int, delta: np.ndarray, label: str) -> None:
    """Replace the bias constant at ``node.inputs[position]`` by bias + ``delta``, in its own dtype.

    The new constant is named after the node, not the old constant: exporters share one initializer between layers
    whose values are equal (every zero bias of a model at init), and each node's moved bias differs.
    """
    bias = node.inputs[position]
    moved = (bias.values.astype(np.float64) + delta).astype(bias.values.dtype)
    node.inputs[position] = gs.Constant(f"{node.name}/bias_{label}", moved)


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
