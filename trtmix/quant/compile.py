"""Write a precision plan into an ONNX graph: Q/DQ pairs make a unit INT8, tensor dtypes make the rest FP16/FP32.

The graph surgery lives here; every engine-specific choice (where Q/DQ go, symmetric or not, weight levels, opset,
float base) is asked of the flavour object (``trtmix.quant.flavours``).  The ``tensorrt`` flavour types the graph
float16 with Casts only at the fp32 graph inputs/outputs and around fp32 units (``trtmix.quant.float_types``).
Without the ``ort-cpu`` flavour's residual-Add rule, Adds ran in float between a DQ and a Q, and the digits ResNet's
all-INT8 plan measured 2.4× its float latency (3 timed runs) where ORT's quantize_static was at par.

Compiling never calibrates: ranges come in as data.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtmix.calibration.ranges import Ranges, TensorRange
from trtmix.errors import CompileError
from trtmix.ir.graph import GraphIndex, name_unnamed_nodes, opset_version
from trtmix.ir.large import convert_version, import_graph, model_sha256, tensor_bytes
from trtmix.ir.units import Unit, require_units
from trtmix.memory import release
from trtmix.quant.bias import add_bias_delta, bias_delta, int32_bias
from trtmix.quant.flavours import ALL_READERS, Flavour, QuantizationSites, get_flavour
from trtmix.quant.float_types import plan_float32_rule, to_float16
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.qdq import asymmetric_uint8, symmetric_scale
from trtmix.quant.smooth import (
    add_to_output,
    border_map,
    conv_pads,
    divided_input,
    input_range,
    smoothed_range,
    static_spatial,
    unit_scales,
    unit_spatial,
)
from trtmix.quant.weights import QuantizedWeight, quantize_unit_weight

LOG = logging.getLogger(__name__)


def compile_plan(
    model: onnx.ModelProto, plan: PrecisionPlan, ranges: Ranges | None, flavour: str | Flavour,
    model_hash: str | None = None,
) -> onnx.ModelProto:
    """A new model with ``plan`` written in the ``flavour``'s form; ``model`` (the float export) is not changed.

    ``model_hash``: ``model``'s hash where the caller has it (a builder does), so that each compile does not serialize
    and hash the whole model again to check the ranges against it.
    """
    flavour = get_flavour(flavour)
    units = require_units(model, "the model")
    plan.validate(u.name for u in units)
    plan.validate_nodes(node.name for node in model.graph.node)
    int8_units = [u for u in units if plan.precision_of(u.name) is Precision.INT8]
    sites = flavour.sites(model, int8_units, ranges)
    if sites.activations:
        if ranges is None:
            raise CompileError(
                "The plan has INT8 units but no activation ranges were given.", fix="pass --ranges or --data"
            )
        ranges.require(sites.activations, model_hash or model_sha256(model))
    compiled = _written(model, units, plan, ranges, flavour, sites)
    release(tensor_bytes(model))  # the working graphs' copies of the weights, unreachable once ``_written`` returned
    onnx.helper.set_model_props(compiled, {**{p.key: p.value for p in compiled.metadata_props}, **flavour.metadata()})
    LOG.debug("compiled %s flavour: %d of %d units INT8", flavour.name, len(int8_units), len(units))
    return compiled


def _written(
    model: onnx.ModelProto, units: list[Unit], plan: PrecisionPlan, ranges: Ranges | None, flavour: Flavour,
    sites: QuantizationSites,
) -> onnx.ModelProto:  # fmt: skip
    """The working graph with the plan's Q/DQ pairs and int8 weights at ``sites``, exported."""
    graph = working_graph(model, units, plan, flavour)
    _drop_relus(graph, sites.dropped_relus)
    original = GraphIndex(model)
    int8_units = [u for u in units if plan.precision_of(u.name) is Precision.INT8]
    smoothed = {u.name: u.inputs[0] for u in int8_units if unit_scales(u, ranges) is not None}
    sizes = input_sizes(graph, [u for u in int8_units if u.name in smoothed])  # before any edge is rerouted
    for tensor, readers in sorted(sites.activations.items()):
        edges = reader_edges(graph, original, tensor, readers)
        if not edges:
            continue
        scaled = [(node, i) for node, i in edges if i == 0 and smoothed.get(node.name) == tensor]
        plain = [(node, i) for node, i in edges if not (i == 0 and smoothed.get(node.name) == tensor)]
        if plain:
            _quantize_activation(graph, plain, ranges.tensors[tensor], flavour.symmetric)  # type: ignore[union-attr]
        if scaled:
            divided = divided_input(graph, original, tensor, scaled, ranges)  # type: ignore[arg-type]
            quantized = activation_qdq(graph, divided, smoothed_range(ranges, tensor), flavour.symmetric)  # type: ignore[arg-type]
            for node, position in scaled:
                node.inputs[position] = quantized
    for unit in sites.weight_units:
        _quantize_unit_weight(graph, unit, original, ranges, flavour, sizes.get(unit.name))
    graph.cleanup().toposort()
    return exported(graph, model)


def input_sizes(graph: gs.Graph, units: list[Unit]) -> dict[str, tuple[int, ...] | None]:
    """Per convolution unit, its input's static spatial sizes in ``graph`` (None: dynamic), read before Q/DQ go in.

    The rerouted input (a DQ output) carries no shape; the border map of a centred padded conv needs these.
    """
    nodes = {node.name: node for node in graph.nodes}
    return {unit.name: static_spatial(nodes[unit.name].inputs[0], unit_spatial(unit))
            for unit in units if unit_spatial(unit)}  # fmt: skip


def _quantize_unit_weight(
    graph: gs.Graph, unit: Unit, original: GraphIndex, ranges: Ranges | None, flavour: Flavour,
    sizes: tuple[int, ...] | None = None,
) -> None:  # fmt: skip
    """The unit's int8 weight (``trtmix.quant.weights``, scaled first where it is smoothed), written into ``graph``.

    Also its bias: moved by ``bias_delta`` (z·W where its input is shifted, bias correction where the ranges ask for
    it), and as int32 where the flavour wants a Gemm bias so.  A centred convolution that still pads (its input's
    ``sizes`` static: ``divided_input``) gets its border map added after it.
    """
    anchor = next(n for n in graph.nodes if n.name == unit.name)
    dtype = anchor.inputs[1].dtype
    float_dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
    exact = original.constant_value(unit.weight)  # type: ignore[arg-type]
    quantized = quantize_unit_weight(unit, exact, ranges, flavour.weight_levels, float_dtype)  # type: ignore[arg-type]
    _write_weight(graph, anchor, quantized, flavour, float_dtype)
    delta = bias_delta(quantized, ranges)
    if delta is not None:
        add_bias_delta(graph, unit, delta, shifted=quantized.shift is not None)
    if quantized.shift is not None and unit.op == "Conv" and conv_pads(anchor):
        correct_border(graph, anchor, quantized.stored(), quantized.shift, sizes)
    if flavour.int32_gemm_bias and unit.op == "Gemm":
        _quantize_gemm_bias(graph, unit, original, quantized.scale, input_range(unit, ranges))  # type: ignore[arg-type]


def correct_border(
    graph: gs.Graph, conv: gs.Node, weight: np.ndarray, shift: np.ndarray, sizes: tuple[int, ...] | None,
    switch: gs.Variable | None = None,
) -> None:  # fmt: skip
    """Add ``border_map`` (of the weight the unit holds) after ``conv``, in the weight's float dtype.

    The weight's dtype is the one the unit computes in (float16 in the tensorrt flavour); the conv output's recorded
    dtype can be the exported float32 still (a graph whose value_info types it), which the flavour check refuses.

    With ``switch`` (the switched ``kl`` graph) the map is added only while the switch is on: Where(switch, map, 0).
    """
    if sizes is None:
        raise CompileError(f"Internal error: {conv.name} pads a centred input of dynamic size but has no Pad of −z.")
    output = conv.outputs[0]
    dtype = np.dtype(weight.dtype)
    values = gs.Constant(f"{output.name}/border_map", border_map(conv, weight, shift, sizes).astype(dtype))
    if switch is None:
        add_to_output(graph, conv, values)
        return
    switched = gs.Variable(f"{output.name}/border_map/{switch.name}", dtype=dtype)
    zero = gs.Constant(f"{output.name}/border_map/off", np.zeros((), dtype=dtype))
    graph.nodes.append(gs.Node("Where", f"{switched.name}/Where", {}, [switch, values, zero], [switched]))
    add_to_output(graph, conv, switched)


def exported(graph: gs.Graph, model: onnx.ModelProto) -> onnx.ModelProto:
    """``graph`` as a model at ``model``'s IR version; two different initializers under one name is a trtmix bug.

    onnx-graphsurgeon only warns about such a pair and keeps one of them, which would be a silently wrong graph.
    """
    seen: dict[str, gs.Constant] = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) and seen.setdefault(tensor.name, tensor) is not tensor:
                raise CompileError(f"Internal error: two different constants are both named {tensor.name!r}.",
                                   fix="this is a trtmix bug; please report it with the model")  # fmt: skip
    compiled = gs.export_onnx(graph)
    compiled.ir_version = model.ir_version
    return compiled


def working_graph(model: onnx.ModelProto, units: list[Unit], plan: PrecisionPlan, flavour: Flavour) -> gs.Graph:
    """The float model at the flavour's opset, typed for ``plan`` (float16 base or float32), ready for Q/DQ.

    ``model`` is not changed, nor copied whole: the graph reads its weights where they are, and types are
    re-inferred on a weightless view after the dtype change.
    """
    working = _with_opset(model, flavour.opset)
    if flavour.float_base is Precision.FP16:
        working = _apply_float_types(working, units, plan)
    return import_graph(working, strict=True, fresh=True)


def _drop_relus(graph: gs.Graph, dropped: dict[str, str]) -> None:
    """Let each Add write its Relu's output tensor directly; the Q after it (zero point 0) does the clamping."""
    nodes = {node.name: node for node in graph.nodes}
    for relu_name, add_name in dropped.items():
        relu, add = nodes[relu_name], nodes[add_name]
        add.outputs = list(relu.outputs)
        relu.outputs.clear()
        relu.inputs.clear()


def _with_opset(model: onnx.ModelProto, minimum: int) -> onnx.ModelProto:
    """The model at opset ``minimum`` or above.

    The ONNX version converter's copy, or ``model`` itself: not copied, since nothing after this changes it.
    """
    current = opset_version(model)
    if current >= minimum:
        return model
    try:
        converted = convert_version(model, minimum)
        name_unnamed_nodes(converted, f"opset{minimum}_")  # the converter names no node it adds (Softmax-13)
        return converted
    except Exception as err:  # noqa: BLE001 - the converter raises RuntimeError from C++ assertions
        missing = sorted({f"{n.op_type} ({n.name})" for n in model.graph.node if not _has_schema(n, minimum)})
        reason = f"no opset {minimum} form of {', '.join(missing)}" if missing else str(err).splitlines()[0][:300]
        raise CompileError(
            f"Cannot convert the model from opset {current} to {minimum}: {reason}.",
            fix=f"re-export with --opset {minimum} or higher (replacing ops removed from ONNX)",
        ) from err


def _has_schema(node: onnx.NodeProto, opset: int) -> bool:
    """True when ``node``'s op exists at ``opset`` (custom domains are not the converter's business)."""
    if node.domain not in ("", "ai.onnx"):
        return True
    try:
        onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return False
    return True


def _apply_float_types(model: onnx.ModelProto, units: list[Unit], plan: PrecisionPlan) -> onnx.ModelProto:
    """Float16 everywhere except nodes that must stay float32 (fp32 units; everything else if the base is fp32)."""
    is_fp32 = plan_float32_rule(units, plan)
    if all(is_fp32(node.name) for node in model.graph.node):
        return model
    return to_float16(model, is_fp32)


def reader_edges(graph: gs.Graph, original: GraphIndex, tensor: str, readers: set[str]) -> list[tuple[gs.Node, int]]:
    """(node, input position) pairs that read ``tensor`` in the float model and must read its Q/DQ instead.

    Positions come from the float model, because the fp16 rewrite may have put a Cast between a graph input and
    its reader: the reader's input at that position is then the Cast's output, which is what gets quantized.
    """
    nodes = {node.name: node for node in graph.nodes}
    if ALL_READERS in readers:
        readers = {node.name for node in original.consumers.get(tensor, [])}
    edges = []
    for name in sorted(readers):
        positions = [i for i, inp in enumerate(original.nodes[name].input) if inp == tensor]
        edges.extend((nodes[name], position) for position in positions)
    if not edges and tensor not in original.graph_outputs:  # a graph output nothing reads is left float
        raise CompileError(f"Internal error: no reader of {tensor!r} found to quantize ({sorted(readers)}).")
    return edges


def _quantize_activation(
    graph: gs.Graph, edges: list[tuple[gs.Node, int]], value_range: TensorRange, symmetric: bool
) -> None:
    """Insert one Q→DQ per distinct tensor read on ``edges`` and reroute those edges to its output."""
    by_tensor: dict[str, list[tuple[gs.Node, int]]] = defaultdict(list)
    for node, position in edges:
        by_tensor[node.inputs[position].name].append((node, position))
    for group in by_tensor.values():
        dequantized = activation_qdq(graph, group[0][0].inputs[group[0][1]], value_range, symmetric)
        for node, position in group:
            node.inputs[position] = dequantized


def activation_qdq(
    graph: gs.Graph, variable: gs.Tensor, value_range: TensorRange, symmetric: bool, prefix: str | None = None
) -> gs.Variable:
    """Q→DQ of an activation with its range: symmetric int8 (zero point 0) or asymmetric uint8; the DQ output."""
    float_dtype = np.dtype(variable.dtype) if variable.dtype is not None else np.dtype(np.float32)
    if symmetric:
        scale = symmetric_scale(value_range.amax, float_dtype)
        zero_point = np.zeros((), dtype=np.int8)
    else:
        scale_u8, zero_point_u8 = asymmetric_uint8(value_range.min, value_range.max)
        scale, zero_point = np.asarray(scale_u8, dtype=float_dtype), np.asarray(zero_point_u8)
    return _qdq_pair(graph, variable, scale, zero_point, axis=None, float_dtype=float_dtype, prefix=prefix)


def _write_weight(
    graph: gs.Graph, anchor: gs.Node, quantized: QuantizedWeight, flavour: Flavour, float_dtype: np.dtype
) -> None:
    """Per-output-channel symmetric int8 weight: Q→DQ on the float weight, or an int8 initializer → DQ."""
    scale, axis = quantized.scale, quantized.axis
    zero_point = np.zeros(scale.shape, dtype=np.int8)
    prefix = f"{quantized.unit.name}/weight"
    if flavour.float_weights:
        source = gs.Constant(f"{prefix}_float", quantized.source(float_dtype))  # learned int8 × scale where learned
        dequantized = _qdq_pair(graph, source, scale, zero_point, axis=axis, float_dtype=float_dtype, prefix=prefix)
    else:
        source = gs.Constant(f"{prefix}_int8", quantized.int8())
        dequantized = _dq(graph, source, scale, zero_point, axis, float_dtype, prefix)
    anchor.inputs[1] = dequantized


def _quantize_gemm_bias(
    graph: gs.Graph, unit: Unit, original: GraphIndex, weight_scale: np.ndarray, x: TensorRange
) -> None:
    """Gemm bias as int32 → DQ (scale = input scale × weight scale), the form ORT fuses into QGemm.

    ORT's QGemm selector rejects a float bias; its own quantizer writes the bias this way.
    """
    anchor = next(n for n in graph.nodes if n.name == unit.name)
    current = anchor.inputs[2] if len(anchor.inputs) > 2 else None
    bias = current.values if isinstance(current, gs.Constant) else (  # as bias correction left it
        original.constant_value(original.nodes[unit.name].input[2]) if current is not None else None
    )
    if bias is None or bias.ndim != 1:
        return
    quantized, bias_scale = int32_bias(bias, weight_scale, x)
    prefix = f"{unit.name}/bias"
    source = gs.Constant(f"{prefix}_int32", quantized)
    zero_point = np.zeros(bias_scale.shape, dtype=np.int32)
    anchor.inputs[2] = _dq(graph, source, bias_scale, zero_point, 0, np.dtype(np.float32), prefix)


def _qdq_pair(
    graph: gs.Graph,
    source: gs.Tensor,
    scale: np.ndarray,
    zero_point: np.ndarray,
    axis: int | None,
    float_dtype: np.dtype,
    prefix: str | None = None,
) -> gs.Variable:
    """QuantizeLinear → DequantizeLinear on ``source``; returns the dequantized tensor."""
    prefix = prefix or source.name
    scale_const = gs.Constant(f"{prefix}_scale", np.asarray(scale, dtype=float_dtype))
    zero_const = gs.Constant(f"{prefix}_zero_point", zero_point)
    quantized = gs.Variable(f"{prefix}_quantized", dtype=zero_point.dtype)
    attrs = {"axis": axis} if axis is not None else {}
    graph.nodes.append(
        gs.Node("QuantizeLinear", f"{prefix}/QuantizeLinear", attrs, [source, scale_const, zero_const], [quantized])
    )
    return _dq(graph, quantized, scale_const, zero_const, axis, float_dtype, prefix)


def _dq(
    graph: gs.Graph,
    source: gs.Tensor,
    scale: np.ndarray | gs.Constant,
    zero_point: np.ndarray | gs.Constant,
    axis: int | None,
    float_dtype: np.dtype,
    prefix: str,
) -> gs.Variable:
    scale_const = (
        scale if isinstance(scale, gs.Constant) else gs.Constant(f"{prefix}_scale", np.asarray(scale, float_dtype))
    )
    zero_const = zero_point if isinstance(zero_point, gs.Constant) else gs.Constant(f"{prefix}_zero_point", zero_point)
    dequantized = gs.Variable(f"{prefix}_dequantized", dtype=float_dtype)
    attrs = {"axis": axis} if axis is not None else {}
    graph.nodes.append(
        gs.Node(
            "DequantizeLinear", f"{prefix}/DequantizeLinear", attrs, [source, scale_const, zero_const], [dequantized]
        )
    )
    return dequantized
