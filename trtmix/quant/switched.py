"""One graph holding every unit's INT8 form behind its own switch: the ``kl`` ordering scores all units in one session.

Scoring a unit exactly compiles its single-unit plan and opens a session on it: for BERT-base, 96 copies of a 440 MB
graph. Here, for each unit ``u``, the flavour's single-unit sites (``flavour.sites(model, [u], ranges)``) say which
edges its plan quantizes; each such edge reads ``Where(switch_u, DQ(Q(x)), x)``, and ``u``'s weight (and int32 Gemm
bias) is switched the same way. ``switch_u`` is a bool scalar graph input. With only ``switch_u`` on, the graph
computes what ``u``'s single-unit graph computes with its Q/DQ unfused (ONNX Runtime cannot fuse int8 kernels
through a ``Where``): fake quantization, the same scales and rounding. Edges two units quantize get nested
``Where``s; with one switch on at a time, each reads its own quantizer. The float typing is the plan's (an INT8 unit
is typed like the float base), so it matches the single-unit graphs'. The exact per-unit compile stays available to
check this one (``--kl-exact``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtmix.calibration.ranges import Ranges
from trtmix.errors import CompileError
from trtmix.ir.graph import GraphIndex, model_sha256
from trtmix.ir.units import Unit
from trtmix.quant.bias import bias_input, expected_shift
from trtmix.quant.compile import activation_qdq, reader_edges, working_graph
from trtmix.quant.flavours import Flavour, get_flavour
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.qdq import asymmetric_uint8, per_channel_amax, quantize_int8, symmetric_scale
from trtmix.quant.smooth import input_range, scaled_weight, smoothed_range, unit_scales

SWITCH_PREFIX = "trtmix_switch_"


def compile_switched(
    model: onnx.ModelProto,
    units: list[Unit],
    ranges: Ranges,
    flavour: str | Flavour,
    default: Precision = Precision.FP16,
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The switched graph and, per unit, the name of its switch input (see the module docstring)."""
    flavour = get_flavour(flavour)
    graph = working_graph(model, units, PrecisionPlan.with_int8([u.name for u in units], default), flavour)
    original = GraphIndex(model)
    model_hash = model_sha256(model)  # once: serialising a 440 MB graph per unit would cost minutes
    switches: dict[str, str] = {}
    for index, unit in enumerate(units):
        switch = gs.Variable(f"{SWITCH_PREFIX}{index}", dtype=np.bool_, shape=[])
        graph.inputs.append(switch)
        switches[unit.name] = switch.name
        sites = flavour.sites(model, [unit], ranges)
        ranges.require(sites.activations, model_hash)
        smoothing = unit_scales(unit, ranges)
        for tensor, readers in sorted(sites.activations.items()):
            rerouted: dict[str, gs.Variable] = {}  # one Q/DQ and Where per tensor read, shared by its readers
            for node, position in reader_edges(graph, original, tensor, readers):
                current = node.inputs[position]
                smoothed = smoothing is not None and node.name == unit.name and position == 0
                key = f"{current.name}/smoothed" if smoothed else current.name
                if key not in rerouted:
                    prefix = f"{current.name}/s{index}"  # names unique to this switch
                    source = _divided(graph, current, smoothing, prefix) if smoothed else current  # type: ignore[arg-type]
                    value_range = smoothed_range(ranges, tensor) if smoothed else ranges.tensors[tensor]
                    quantized = activation_qdq(graph, source, value_range, flavour.symmetric, prefix=prefix)
                    rerouted[key] = _where(graph, switch, quantized, current)
                node.inputs[position] = rerouted[key]
        if unit.weight is not None:
            _switch_weight(graph, unit, original, ranges, flavour, switch)
    graph.cleanup().toposort()
    switched = gs.export_onnx(graph)
    switched.ir_version = model.ir_version
    return switched, switches


def switch_feeds(switches: dict[str, str], on: str | Iterable[str] | None) -> dict[str, np.ndarray]:
    """Every switch off except those of the unit(s) ``on`` (None: all off, the float graph).

    Several switches on give the plan with those units in INT8: each unit's edges read its own quantizer, and an
    edge two of them quantize reads both, nested, with the same scale (quantizing twice is quantizing once).
    """
    chosen = {on} if isinstance(on, str) else set(on or ())
    return {name: np.array(unit in chosen) for unit, name in switches.items()}


def _divided(graph: gs.Graph, variable: gs.Tensor, s: np.ndarray, prefix: str) -> gs.Variable:
    """X / s as an explicit Mul (this graph never folds: one switch flips one unit, never every reader of X)."""
    dtype = np.dtype(variable.dtype) if variable.dtype is not None else np.dtype(np.float32)
    output = gs.Variable(f"{prefix}/smoothed", dtype=variable.dtype, shape=variable.shape)
    inverse = gs.Constant(f"{prefix}/smooth_inverse", (1.0 / s).astype(dtype))
    graph.nodes.append(gs.Node("Mul", f"{prefix}/smooth/Mul", {}, [variable, inverse], [output]))
    return output


def _switch_weight(
    graph: gs.Graph, unit: Unit, original: GraphIndex, ranges: Ranges, flavour: Flavour, switch: gs.Variable
) -> None:
    """The unit's weight (and, where the flavour makes it int32, its Gemm bias) behind ``switch``.

    The quantized weight is a constant, DQ(Q(W)) computed here with the quantizer ``compile`` writes: in the graph,
    ONNX Runtime would requantize every weight of every unit on every run (``Where`` evaluates both branches, and
    its constant folding leaves DequantizeLinear alone).
    """
    anchor = next(n for n in graph.nodes if n.name == unit.name)
    weight = original.constant_value(unit.weight)  # type: ignore[arg-type]
    if weight is None:
        raise CompileError(f"Internal error: unit {unit.name} has no constant weight to switch.")
    smoothing = unit_scales(unit, ranges)
    if smoothing is not None:
        weight = scaled_weight(unit, weight, smoothing)
    float_weight = anchor.inputs[1]
    float_dtype = np.dtype(float_weight.dtype) if float_weight.dtype is not None else np.dtype(np.float32)
    axis = unit.weight_axis if unit.weight_axis is not None else 0
    amax = ranges.weights.get(unit.weight) if smoothing is None else None  # type: ignore[arg-type]
    channel_amax = np.asarray(amax, dtype=np.float32) if amax is not None else per_channel_amax(weight, axis)
    scale = symmetric_scale(channel_amax, float_dtype, flavour.weight_levels)
    shape = [1] * weight.ndim
    shape[axis % weight.ndim] = -1
    dequantized = quantize_int8(weight, scale, axis).astype(np.float64) * scale.astype(np.float64).reshape(shape)
    fake = gs.Constant(f"{unit.name}/weight_fake_quantized", dequantized.astype(float_dtype))
    anchor.inputs[1] = _where(graph, switch, fake, float_weight)
    shift = _bias_shift(unit, weight, scale, ranges, smoothing)
    if flavour.int32_gemm_bias and unit.op == "Gemm" and len(anchor.inputs) > 2:
        _switch_gemm_bias(graph, unit, anchor, original, scale, ranges, switch, shift)
    elif shift is not None and (found := bias_input(graph, unit)) is not None:
        node, position = found
        current = node.inputs[position]
        corrected = gs.Constant(f"{current.name}/s_corrected", (current.values - shift).astype(current.values.dtype))
        node.inputs[position] = _where(graph, switch, corrected, current)


def _bias_shift(
    unit: Unit, weight: np.ndarray, scale: np.ndarray, ranges: Ranges, smoothing: np.ndarray | None
) -> np.ndarray | None:
    """What bias correction subtracts from the unit's bias (None when it is off or cannot apply)."""
    summary = ranges.channels.get(unit.inputs[0])
    if not ranges.bias_correction or summary is None:
        return None
    mean = np.asarray(summary.mean, dtype=np.float64)
    return expected_shift(unit, weight, scale, mean / smoothing if smoothing is not None else mean)


def _switch_gemm_bias(
    graph: gs.Graph, unit: Unit, anchor: gs.Node, original: GraphIndex, weight_scale: np.ndarray, ranges: Ranges,
    switch: gs.Variable, shift: np.ndarray | None,
) -> None:  # fmt: skip
    """The int32 Gemm bias ORT's QGemm needs (scale = input scale x weight scale), dequantized, behind ``switch``."""
    bias = original.constant_value(original.nodes[unit.name].input[2])
    if bias is None or bias.ndim != 1:
        return
    if shift is not None:
        bias = bias - shift
    x = input_range(unit, ranges)
    input_scale, _ = asymmetric_uint8(x.min, x.max)
    bias_scale = (np.float64(input_scale) * weight_scale.astype(np.float64)).astype(np.float32)
    quantized = np.clip(np.rint(bias / bias_scale), -(2**31), 2**31 - 1)
    fake = gs.Constant(f"{unit.name}/bias_fake_quantized", (quantized * bias_scale).astype(np.float32))
    anchor.inputs[2] = _where(graph, switch, fake, anchor.inputs[2])


def _where(graph: gs.Graph, switch: gs.Variable, on: gs.Tensor, off: gs.Tensor) -> gs.Variable:
    """``on`` while ``switch`` is true, else ``off``."""
    output = gs.Variable(f"{on.name}/{switch.name}", dtype=on.dtype)
    graph.nodes.append(gs.Node("Where", f"{on.name}/{switch.name}/Where", {}, [switch, on, off], [output]))
    return output
