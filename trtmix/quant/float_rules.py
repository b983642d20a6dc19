"""Which nodes of a float32 graph can never run in float16, whatever the plan says.

These are validity rules, not accuracy choices (those are the plan's ``fp32_nodes``):

* **Not float compute.**  A node whose inputs come only from constants and ``Shape``/``Size`` computes a shape or an
  index (anchor grids, ``Range`` limits).  TensorRT folds or runs it as a shape tensor; retyping it broke
  ultralytics' YOLOv8 export (a float16 constant fed ``Range``, which has no float16 form).
* **No float16 form in the ONNX schema.**  Checked per input against the op's type constraints at the graph's
  opset (``onnx.defs.get_schema(op, opset).type_constraints``): when the constraint shared by the node's float
  inputs and outputs excludes float16, the node stays float32.  An input with a fixed ``tensor(float)`` type (Resize
  scales) keeps float32 on its own; see ``float32_inputs``.
* **Read inside a subgraph.**  ``If``/``Loop``/``Scan`` bodies stay float32 and read outer tensors by name, so those
  nodes and the producers of the outer tensors their bodies read stay float32.
* **Outside the standard domain**: no schema to check, so float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from trtmix.ir.graph import opset_version

FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16})
SHAPE_OPS = frozenset({"Shape", "Size"})
FLOAT16 = "tensor(float16)"


@dataclass(frozen=True)
class Float32Rules:
    """The nodes that must stay float32, why, and the (node, input position) pairs that take float32 only."""

    nodes: dict[str, str]  # node name → reason
    inputs: frozenset[tuple[str, int]]


def float32_rules(model: onnx.ModelProto) -> Float32Rules:
    """Apply the module's rules to ``model`` (topologically sorted, every node named)."""
    opset = opset_version(model)
    reasons: dict[str, str] = {}
    data = _data_tensors(model)
    fixed_inputs: set[tuple[str, int]] = set()
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        if not any(name in data for name in node.input if name):
            reasons[node.name] = "computes a shape or index from constants (not float compute)"
        elif node.op_type in SHAPE_OPS:
            reasons[node.name] = f"{node.op_type} reads only its input's shape (no cast for it)"
        elif any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            reasons[node.name] = f"{node.op_type} has a subgraph (kept float32 as a whole)"
        else:
            reason, fixed = _schema_rule(node, opset)
            if reason:
                reasons[node.name] = reason
            fixed_inputs.update((node.name, position) for position in fixed)
    producers = {output: node for node in model.graph.node for output in node.output}
    for name in _read_in_subgraphs(model.graph):
        producer = producers.get(name)
        if producer is not None and producer.name not in reasons:
            reasons[producer.name] = "its output is read inside a subgraph, which stays float32"
    return Float32Rules(reasons, frozenset(fixed_inputs))


def _data_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors that depend on graph input *values* (a Shape of an input does not)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    data = {graph_input.name for graph_input in model.graph.input if graph_input.name not in initializers}
    for node in model.graph.node:
        if node.op_type not in SHAPE_OPS and any(name in data for name in node.input if name):
            data.update(node.output)
        elif node.op_type not in SHAPE_OPS and _reads_data_in_subgraph(node, data):
            data.update(node.output)
    return data


def _reads_data_in_subgraph(node: onnx.NodeProto, data: set[str]) -> bool:
    return any(name in data for a in node.attribute if a.type == onnx.AttributeProto.GRAPH
               for name in _graph_reads(a.g))  # fmt: skip


def _schema_rule(node: onnx.NodeProto, opset: int) -> tuple[str | None, list[int]]:
    """(why ``node`` must stay float32, or None; its input positions typed ``tensor(float)`` whatever T is)."""
    if node.domain not in ("", "ai.onnx"):
        return f"{node.domain}.{node.op_type} is outside the standard domain (no float16 schema to check)", []
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return f"{node.op_type} has no schema at opset {opset}", []
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    fixed = []
    for position in range(len(node.input)):
        formal = _formal(schema.inputs, position)
        if formal is None:
            continue
        if formal.type_str in allowed:
            if "tensor(float)" in allowed[formal.type_str] and FLOAT16 not in allowed[formal.type_str]:
                return f"{node.op_type}'s type constraint {formal.type_str} has no float16 (ONNX opset {opset})", []
        elif formal.type_str == "tensor(float)":
            fixed.append(position)
    for position in range(len(node.output)):
        formal = _formal(schema.outputs, position)
        constraint = allowed.get(formal.type_str) if formal is not None else None
        if constraint and "tensor(float)" in constraint and FLOAT16 not in constraint:
            return f"{node.op_type}'s output type {formal.type_str} has no float16 (ONNX opset {opset})", []  # type: ignore[union-attr]
    return None, fixed


def _formal(parameters: list, position: int):  # type: ignore[no-untyped-def]
    """The formal parameter at ``position`` (the last one when it is variadic)."""
    if position < len(parameters):
        return parameters[position]
    if parameters and parameters[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return parameters[-1]
    return None


def _read_in_subgraphs(graph: onnx.GraphProto) -> set[str]:
    """Outer-scope tensor names that subgraphs of ``graph``'s nodes read."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                names |= _graph_reads(attribute.g)
            for sub in attribute.graphs:
                names |= _graph_reads(sub)
    return names


def _graph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads that it does not define itself (its outer-scope inputs), nested ones included."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {output for node in graph.node for output in node.output}
    reads = {name for node in graph.node for name in node.input if name} | {o.name for o in graph.output}
    return (reads | _read_in_subgraphs(graph)) - defined
