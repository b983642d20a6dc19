"""Give every node of a float32 graph a float dtype (float16 or float32) and make the tensors agree.

This is how a strongly typed TensorRT network learns precisions: float16 tensors run in FP16.  Each node runs in
one dtype; float initializers and ``Constant`` values are stored in their reader's dtype; a Cast is inserted only on
an edge whose producer and reader disagree, and at float32 graph inputs and outputs, which keep their type.
ONNX Runtime's float16 converter was tried first and rejected: it put an fp16 round trip between two adjacent fp32
nodes and wrapped fp32 weights in redundant Casts.

Nodes that cannot be float16 at all (shape computations, ops without a float16 form, subgraphs) stay float32
whatever the caller asks: ``trtmix.quant.float_rules``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtmix.ir.large import array_of, import_graph
from trtmix.ir.units import Unit
from trtmix.quant.float_rules import float32_rules
from trtmix.quant.plan import Precision, PrecisionPlan

FP16, FP32 = np.dtype(np.float16), np.dtype(np.float32)
FP16_MAX = float(np.finfo(np.float16).max)
# Inputs that ONNX types as float32 whatever the data type is (Resize roi/scales, Upsample scales).
FLOAT32_ONLY_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})
DTYPE_ATTRIBUTES = {"Cast": "to", "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "EyeLike": "dtype"}


def plan_float32_rule(units: list[Unit], plan: PrecisionPlan) -> Callable[[str], bool]:
    """Whether ``plan`` keeps a node float32: an FP32 unit or node, or any node when the plan's base is FP32.

    An INT8 unit is typed like the base.  One rule for ``compile``'s typing and for the dtype the orderings give a
    unit's weight scales (``trtmix.quant.weights``), so that they quantize alike.
    """
    base = plan.default if plan.default is not Precision.INT8 else Precision.FP16
    unit_precision = {node: plan.precision_of(u.name) for u in units for node in u.nodes}

    def is_fp32(node_name: str) -> bool:
        if node_name in plan.fp32_nodes:
            return True
        precision = unit_precision.get(node_name, base)
        return (base if precision is Precision.INT8 else precision) is Precision.FP32

    return is_fp32


def to_float16(model: onnx.ModelProto, is_fp32_node: Callable[[str], bool]) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes run in float16 except those ``is_fp32_node`` names and those that must.

    ``model`` is topologically sorted with every node named (as ``load_onnx`` leaves it).
    """
    rules = float32_rules(model)
    graph = import_graph(model)  # its weights are read from ``model`` as each is converted
    node_dtype = {node.name: FP32 if is_fp32_node(node.name) or node.name in rules.nodes else FP16
                  for node in graph.nodes}  # fmt: skip
    fixed_inputs = _float32_only_inputs(graph) | rules.inputs
    _constants_follow_readers(graph, node_dtype, fixed_inputs)
    for node in graph.nodes:
        if node_dtype[node.name] == FP16:
            _retype_attributes(node)
    _keep_float32_outputs(graph, node_dtype)
    casts: dict[tuple[str, np.dtype], gs.Variable] = {}
    constants: dict[tuple[str, np.dtype], gs.Constant] = {}
    edges = [(node, position, tensor, FP32 if (node.name, position) in fixed_inputs else node_dtype[node.name])
             for node in list(graph.nodes) if node.op != "Cast"  # a Cast reads any dtype
             for position, tensor in enumerate(node.inputs)]  # fmt: skip
    float32_readers = {id(tensor) for _, _, tensor, wanted in edges if wanted == FP32}
    for node, position, tensor, wanted in edges:
        if isinstance(tensor, gs.Constant):
            node.inputs[position] = _constant_as(tensor, wanted, constants, id(tensor) in float32_readers)
        elif _is_float(tensor) and _dtype_of(tensor, node_dtype) != wanted:
            node.inputs[position] = _cast(graph, tensor, wanted, casts)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and _is_float(tensor) and tensor.inputs:
            tensor.dtype = node_dtype.get(tensor.inputs[0].name, tensor.dtype)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def _constants_follow_readers(
    graph: gs.Graph, node_dtype: dict[str, np.dtype], fixed_inputs: set[tuple[str, int]]
) -> None:
    """A ``Constant`` node stays float32 when any reader takes it in float32 (Paddle2ONNX stores weights so).

    Otherwise an FP32 node would read a float16-rounded weight through a Cast.
    """
    for node in graph.nodes:
        if node.op != "Constant":
            continue
        readers = [(reader, position) for output in node.outputs for reader in output.outputs
                   for position, tensor in enumerate(reader.inputs) if tensor is output]  # fmt: skip
        if any(node_dtype.get(r.name) == FP32 or (r.name, p) in fixed_inputs for r, p in readers):
            node_dtype[node.name] = FP32


def _float32_only_inputs(graph: gs.Graph) -> set[tuple[str, int]]:
    """(node name, position) of every input that ONNX types float32 whatever the data type is."""
    return {(node.name, position) for node in graph.nodes for position in range(len(node.inputs))
            if (node.op, position) in FLOAT32_ONLY_INPUTS}  # fmt: skip


def _is_float(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype) in (FP16, FP32)


def _dtype_of(tensor: gs.Variable, node_dtype: dict[str, np.dtype]) -> np.dtype:
    """The dtype a float tensor has after the rewrite: its producer's, or float32 for graph inputs."""
    return node_dtype.get(tensor.inputs[0].name, FP32) if tensor.inputs else FP32


def _retype_attributes(node: gs.Node) -> None:
    """Float32 attribute values and dtype attributes of a node that now runs in float16."""
    name = DTYPE_ATTRIBUTES.get(node.op)
    if name and node.attrs.get(name) == onnx.TensorProto.FLOAT:
        node.attrs[name] = onnx.TensorProto.FLOAT16
    for key, value in node.attrs.items():
        if isinstance(value, gs.Constant) and np.dtype(value.values.dtype) == FP32:
            node.attrs[key] = gs.Constant(value.name, _clip_fp16(value.values))
        elif isinstance(value, np.ndarray) and value.dtype == FP32:
            node.attrs[key] = _clip_fp16(value)


def _clip_fp16(values: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(values, -FP16_MAX, FP16_MAX), dtype=FP16)


def _constant_as(
    constant: gs.Constant, dtype: np.dtype, cache: dict[tuple[str, np.dtype], gs.Constant], kept: bool = False
) -> gs.Constant:
    """The constant in ``dtype`` (one shared copy per dtype); non-float constants are returned unchanged.

    ``kept``: the float32 original stays in the graph for a float32 reader, so a float16 copy needs its own name.
    """
    if np.dtype(constant.dtype) not in (FP16, FP32) or np.dtype(constant.dtype) == dtype:
        return constant
    key = (constant.name, dtype)
    if key not in cache:
        values = array_of(constant)  # not kept on ``constant``: only the converted copy stays in the graph
        values = _clip_fp16(values) if dtype == FP16 else np.asarray(values, dtype=dtype)
        name = constant.name if dtype == FP16 and not kept else f"{constant.name}_{'fp16' if dtype == FP16 else 'fp32'}"
        cache[key] = gs.Constant(name, values)
    return cache[key]


def _cast(
    graph: gs.Graph, tensor: gs.Variable, dtype: np.dtype, cache: dict[tuple[str, np.dtype], gs.Variable]
) -> gs.Variable:
    """``tensor`` cast to ``dtype``: one Cast per tensor and dtype, shared by its readers."""
    key = (tensor.name, dtype)
    if key not in cache:
        suffix = "fp16" if dtype == FP16 else "fp32"
        output = gs.Variable(f"{tensor.name}_{suffix}", dtype=dtype, shape=tensor.shape)
        to = onnx.TensorProto.FLOAT16 if dtype == FP16 else onnx.TensorProto.FLOAT
        graph.nodes.append(gs.Node("Cast", f"{tensor.name}/Cast_to_{suffix}", {"to": to}, [tensor], [output]))
        cache[key] = output
    return cache[key]


def _keep_float32_outputs(graph: gs.Graph, node_dtype: dict[str, np.dtype]) -> None:
    """Float graph outputs made by fp16 nodes: the node writes an fp16 tensor, a Cast restores the fp32 output."""
    for position, output in enumerate(graph.outputs):
        if not (_is_float(output) and output.inputs and node_dtype.get(output.inputs[0].name) == FP16):
            continue
        producer = output.inputs[0]
        half = gs.Variable(f"{output.name}_fp16", dtype=FP16, shape=output.shape)
        producer.outputs[producer.outputs.index(output)] = half
        for reader in list(output.outputs):
            reader.inputs[reader.inputs.index(output)] = half
        cast_name = f"{output.name}/Cast_to_fp32"
        graph.nodes.append(gs.Node("Cast", cast_name, {"to": onnx.TensorProto.FLOAT}, [half], [output]))
        node_dtype[cast_name] = FP32
        graph.outputs[position] = output
