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
from trtmix.ir.graph import GraphIndex
from trtmix.ir.large import model_sha256
from trtmix.ir.units import Unit
from trtmix.quant.bias import bias_delta, bias_input, int32_bias, moved_bias
from trtmix.quant.compile import activation_qdq, correct_border, exported, input_sizes, reader_edges, working_graph
from trtmix.quant.flavours import Flavour, get_flavour
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.smooth import (
    conv_pads,
    explicit_division,
    input_range,
    smoothed_range,
    unit_scales,
    unit_shift,
    unit_spatial,
)
from trtmix.quant.weights import quantize_unit_weight

SWITCH_PREFIX = "trtmix_switch_"


def compile_switched(
    model: onnx.ModelProto,
    units: list[Unit],
    ranges: Ranges,
    flavour: str | Flavour,
    default: Precision = Precision.FP16,
    fp32_nodes: frozenset[str] = frozenset(),
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The switched graph and, per unit, the name of its switch input (see the module docstring).

    ``fp32_nodes``: float nodes kept FP32 in every plan (the job's all-high plan's).
    """
    flavour = get_flavour(flavour)
    everything = PrecisionPlan.with_int8([u.name for u in units], default, fp32_nodes)
    graph = working_graph(model, units, everything, flavour)
    original = GraphIndex(model)
    model_hash = model_sha256(model)  # once: serialising a 440 MB graph per unit would cost minutes
    switches: dict[str, str] = {}
    sizes = input_sizes(graph, units)  # before any edge reads a Where
    for index, unit in enumerate(units):
        switch = gs.Variable(f"{SWITCH_PREFIX}{index}", dtype=np.bool_, shape=[])
        graph.inputs.append(switch)
        switches[unit.name] = switch.name
        sites = flavour.sites(model, [unit], ranges)
        ranges.require(sites.activations, model_hash)
        smoothing = unit_scales(unit, ranges)
        if smoothing is not None and unit_spatial(unit) and unit_shift(unit, ranges) is not None:
            _refuse_padded_centring(graph, unit, sizes.get(unit.name))
        for tensor, readers in sorted(sites.activations.items()):
            rerouted: dict[str, gs.Variable] = {}  # one Q/DQ and Where per tensor read, shared by its readers
            for node, position in reader_edges(graph, original, tensor, readers):
                current = node.inputs[position]
                smoothed = smoothing is not None and node.name == unit.name and position == 0
                key = f"{current.name}/smoothed" if smoothed else current.name
                if key not in rerouted:
                    prefix = f"{current.name}/s{index}"  # names unique to this switch
                    shift, spatial = unit_shift(unit, ranges), unit_spatial(unit)
                    source = (explicit_division(graph, current, smoothing, shift, prefix, spatial)  # type: ignore[arg-type]
                              if smoothed else current)  # never folded: one switch flips one reader of X
                    value_range = smoothed_range(ranges, tensor) if smoothed else ranges.tensors[tensor]
                    quantized = activation_qdq(graph, source, value_range, flavour.symmetric, prefix=prefix)
                    rerouted[key] = _where(graph, switch, quantized, current)
                node.inputs[position] = rerouted[key]
        if unit.weight is not None:
            _switch_weight(graph, unit, original, ranges, flavour, switch, sizes.get(unit.name))
    graph.cleanup().toposort()
    switched = exported(graph, model)
    return switched, switches


def switch_feeds(switches: dict[str, str], on: str | Iterable[str] | None) -> dict[str, np.ndarray]:
    """Every switch off except those of the unit(s) ``on`` (None: all off, the float graph).

    Several switches on give the plan with those units in INT8: each unit's edges read its own quantizer, and an
    edge two of them quantize reads both, nested, with the same scale (quantizing twice is quantizing once).
    """
    chosen = {on} if isinstance(on, str) else set(on or ())
    return {name: np.array(unit in chosen) for unit, name in switches.items()}


def _switch_weight(
    graph: gs.Graph, unit: Unit, original: GraphIndex, ranges: Ranges, flavour: Flavour, switch: gs.Variable,
    sizes: tuple[int, ...] | None = None,
) -> None:  # fmt: skip
    """The unit's weight and bias as ``compile`` writes them in INT8, behind ``switch`` (and a border map).

    The quantized weight is a constant, DQ(Q(W)) from ``compile``'s own quantizer (``trtmix.quant.weights``): in
    the graph, ONNX Runtime would requantize every weight of every unit on every run (``Where`` evaluates both
    branches, and its constant folding leaves DequantizeLinear alone).  The bias moves by ``compile``'s
    ``bias_delta``, and is int32 where the flavour makes a Gemm bias so.  A centred conv that pads gets
    ``compile``'s border map (``correct_border``), added only while the switch is on.
    """
    anchor = next(n for n in graph.nodes if n.name == unit.name)
    exact = original.constant_value(unit.weight)  # type: ignore[arg-type]
    if exact is None:
        raise CompileError(f"Internal error: unit {unit.name} has no constant weight to switch.")
    float_weight = anchor.inputs[1]
    float_dtype = np.dtype(float_weight.dtype) if float_weight.dtype is not None else np.dtype(np.float32)
    quantized = quantize_unit_weight(unit, exact, ranges, flavour.weight_levels, float_dtype)
    fake = gs.Constant(f"{unit.name}/weight_fake_quantized", quantized.stored())
    anchor.inputs[1] = _where(graph, switch, fake, float_weight)
    delta = bias_delta(quantized, ranges)
    if flavour.int32_gemm_bias and unit.op == "Gemm" and len(anchor.inputs) > 2:
        _switch_gemm_bias(graph, unit, anchor, original, quantized.scale, ranges, switch, delta)
    elif delta is not None and (found := bias_input(graph, unit)) is not None:
        node, position = found
        current = node.inputs[position]
        moved = gs.Constant(f"{node.name}/s{unit.name}_bias", moved_bias(current.values, delta))
        node.inputs[position] = _where(graph, switch, moved, current)
    if quantized.shift is not None and unit.op == "Conv" and conv_pads(anchor):
        correct_border(graph, anchor, quantized.stored(), quantized.shift, sizes, switch)


def _switch_gemm_bias(
    graph: gs.Graph, unit: Unit, anchor: gs.Node, original: GraphIndex, weight_scale: np.ndarray, ranges: Ranges,
    switch: gs.Variable, delta: np.ndarray | None,
) -> None:  # fmt: skip
    """The int32 Gemm bias ORT's QGemm needs (``int32_bias``, as ``compile`` writes it), dequantized, switched."""
    bias = original.constant_value(original.nodes[unit.name].input[2])
    if bias is None or bias.ndim != 1:
        return
    if delta is not None:
        bias = moved_bias(bias, delta)
    quantized, bias_scale = int32_bias(bias, weight_scale, input_range(unit, ranges))
    dequantized = quantized.astype(np.float64) * bias_scale.astype(np.float64)
    fake = gs.Constant(f"{unit.name}/bias_fake_quantized", dequantized.astype(np.float32))
    anchor.inputs[2] = _where(graph, switch, fake, anchor.inputs[2])


def _refuse_padded_centring(graph: gs.Graph, unit: Unit, sizes: tuple[int, ...] | None) -> None:
    """A centred convolution that pads needs its border map, which needs its input's spatial sizes static.

    ``compile`` falls back to an explicit Pad of −z where they are dynamic; a switch cannot flip that Pad (the float
    branch reads the same Conv, whose padding the Pad replaces), so the switched graph refuses such a unit rather
    than measure border pixels shifted by z·ΣW.
    """
    node = next(n for n in graph.nodes if n.name == unit.name)
    if sizes is None and any(node.attrs.get("pads", [])):
        raise CompileError(f"Unit {unit.name}: a centred convolution that pads an input of dynamic spatial size is not "
                           "supported by the switched graph.",
                           fix="export with static image sizes, or centre pointwise convs only: "
                               "plan_conv_centring(..., padded=False)")  # fmt: skip


def _where(graph: gs.Graph, switch: gs.Variable, on: gs.Tensor, off: gs.Tensor) -> gs.Variable:
    """``on`` while ``switch`` is true, else ``off``."""
    output = gs.Variable(f"{on.name}/{switch.name}", dtype=on.dtype)
    graph.nodes.append(gs.Node("Where", f"{on.name}/{switch.name}/Where", {}, [switch, on, off], [output]))
    return output
