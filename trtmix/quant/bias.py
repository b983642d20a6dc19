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

from trtmix.calibration.ranges import Ranges, TensorRange
from trtmix.errors import CompileError
from trtmix.ir.units import KIND_CONV, Unit
from trtmix.quant.qdq import asymmetric_uint8
from trtmix.quant.smooth import input_axis
from trtmix.quant.weights import QuantizedWeight


def bias_delta(quantized: QuantizedWeight, ranges: Ranges | None) -> np.ndarray | None:
    """What the INT8 unit adds to its bias (None: nothing): z·W for a centred input, minus E[X]·ΔW when corrected.

    One rule for ``compile`` and the switched graph.  The unit reads X' = (X − z)/s and multiplies it by its
    dequantized weight Q(W·s); the bias takes z·Q(W·s)/s, the shift times the weight *as the unit holds it*, so that
    X'·Q(W·s) + z·Q(W·s)/s = X·Q(W·s)/s: the centred unit computes what the uncentred one does, up to the rounding
    of its input.  With the float weight's z·W instead, the unit was off by the constant z·ΔW per output channel
    (issue 33: MiniLM's FFN down-projections, whose GELU input has z ≈ its max / 2 on 1,536 channels, lost more to it
    than centring won).  Bias correction then removes E[X]·ΔW (ΔW in the float weight's coordinates); the two
    together are z·W − E[X − z]·ΔW, as before.  Bias correction needs the input's channel means and a weight axis;
    the shift needs nothing more, and a unit without a bias to take it is refused by ``add_bias_delta``.
    """
    unit = quantized.unit
    delta = None
    if quantized.shift is not None:
        held = quantized.stored().astype(np.float64)  # Q(W·s) in the graph's dtype: what the unit multiplies by
        delta = shift_product(unit, unscaled(unit, held, quantized.smoothing), quantized.shift)
    summary = ranges.channels.get(unit.inputs[0]) if ranges is not None and ranges.bias_correction else None
    if summary is not None and unit.weight_axis is not None:
        mean = input_mean(summary.mean, quantized.smoothing, None)  # E[X]/s: the shift is already exact in z·Q(W·s)
        error = quantized.dequantized() - quantized.weight.astype(np.float64)
        correction = expected_shift(unit, error, mean)
        if correction is not None:
            delta = -correction if delta is None else delta - correction
    return delta


def unscaled(unit: Unit, weight: np.ndarray, smoothing: np.ndarray | None) -> np.ndarray:
    """``weight`` (a smoothed unit's Q(W·s)) with its input rows divided by s again: the float weight's coordinates."""
    if smoothing is None or np.all(smoothing == 1.0):  # a centred convolution is not scaled
        return weight
    shape = [1] * weight.ndim
    shape[input_axis(unit)] = -1
    return weight / smoothing.reshape(shape)


def add_bias_delta(graph: gs.Graph, unit: Unit, delta: np.ndarray, shifted: bool) -> None:
    """Add ``delta`` (``bias_delta``) to the unit's bias in ``graph``; a unit without one is skipped unless shifted.

    A shifted input without a bias to take z·W back would change the float semantics, so that is a trtmix bug.
    """
    found = bias_input(graph, unit)
    if found is None:
        if shifted:
            raise CompileError(f"Internal error: unit {unit.name} has no bias to take its input shift.")
        return
    add_to_bias(*found, delta, "int8")


def input_mean(mean: tuple[float, ...], smoothing: np.ndarray | None, shift: np.ndarray | None) -> np.ndarray:
    """E[(X − shift)/s] per channel: the mean of what the unit reads."""
    value = np.asarray(mean, dtype=np.float64) - (shift if shift is not None else 0.0)
    return value / smoothing if smoothing is not None else value


def shift_product(unit: Unit, weight: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """z·W per output channel, for a 2-D weight in either orientation or a one-group conv's [out, in, k…].

    A convolution's kernel taps all read the same channel's shift, so they are summed (grouped convolutions too); that
    is exact only where no tap reads a padded zero: a centred convolution that pads gets a constant border map after
    it (``trtmix.quant.smooth.border_map``), or a Pad of −z in front where its input's spatial sizes are dynamic.
    """
    if unit.kind == KIND_CONV:
        product = expected_shift(unit, weight.astype(np.float64), np.asarray(shift, dtype=np.float64))
        if product is None:
            raise CompileError(f"Internal error: unit {unit.name}'s input shift does not match its weight's inputs.")
        return product
    oriented = weight.astype(np.float64) if (unit.weight_axis or 0) == 1 else weight.astype(np.float64).T
    return shift @ oriented


def add_to_bias(node: gs.Node, position: int, delta: np.ndarray, label: str) -> None:
    """Replace the bias constant at ``node.inputs[position]`` by bias + ``delta``, in its own dtype.

    The new constant is named after the node, not the old constant: exporters share one initializer between layers
    whose values are equal (every zero bias of a model at init), and each node's moved bias differs.
    """
    node.inputs[position] = gs.Constant(f"{node.name}/bias_{label}", moved_bias(node.inputs[position].values, delta))


def moved_bias(bias: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The bias plus ``delta``, summed in float64 and rounded once to the bias's dtype (what every writer stores)."""
    return (bias.astype(np.float64) + delta).astype(bias.dtype)


def int32_bias(bias: np.ndarray, weight_scale: np.ndarray, x: TensorRange) -> tuple[np.ndarray, np.ndarray]:
    """A Gemm bias as int32 and its scale (input scale × weight scale): the form ONNX Runtime's QGemm fuses.

    ORT's QGemm selector rejects a float bias; its own quantizer writes the bias this way.
    """
    input_scale, _ = asymmetric_uint8(x.min, x.max)
    bias_scale = (np.float64(input_scale) * weight_scale.astype(np.float64)).astype(np.float32)
    return np.clip(np.rint(bias / bias_scale), -(2**31), 2**31 - 1).astype(np.int32), bias_scale


def expected_shift(unit: Unit, error: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """E[X]·ΔW per output channel, ``error`` being ΔW (None when the shapes do not line up)."""
    axis = unit.weight_axis or 0
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
