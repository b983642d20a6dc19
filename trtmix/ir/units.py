"""Quantizable units: the fusion groups TensorRT and ONNX Runtime turn into one INT8 kernel.

A unit is anchored on a Conv, Gemm or MatMul and swallows what an engine fuses into it: a BatchNormalization left
unfolded, a bias Add and one activation.  Quantizing a conv while its ReLU stays float would put the quantization
noise before the ReLU and exaggerate its sensitivity, so precision is decided per unit, never per raw node.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from math import prod

import onnx

from trtmix.errors import ModelLoadError
from trtmix.ir.graph import GraphIndex, has_qdq, node_attribute
from trtmix.ir.large import shape_view

ACTIVATIONS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Elu", "Selu", "Softplus"}
)
MODULE_KEY = "trtmix.module"

KIND_CONV = "conv"
KIND_LINEAR = "linear"
KIND_ATTENTION = "attention"


@dataclass(frozen=True)
class Unit:
    """One quantizable fusion group.

    Attributes:
        name: the anchor node's name; plans refer to units by it.
        kind: ``conv``, ``linear`` (weight × activation) or ``attention`` (activation × activation MatMul).
        op: the anchor op type.
        nodes: names of the nodes in the group, anchor first.
        inputs: activation tensors the anchor reads (one, or two for ``attention``).
        weight: the anchor's constant weight tensor, or None for ``attention``.
        weight_shape: its shape, or None.
        weight_axis: the output-channel axis of the weight (per-channel scales run along it), or None.
        output: the tensor the group produces (after bias and activation).
        macs: multiply-accumulates per inference, with unknown (dynamic) dimensions counted as 1.
        module: the torch module the anchor came from, when the export recorded it.
    """

    name: str
    kind: str
    op: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    weight: str | None
    weight_shape: tuple[int, ...] | None
    weight_axis: int | None
    output: str
    macs: int
    module: str | None


def find_units(model: onnx.ModelProto) -> list[Unit]:
    """All quantizable units of a float model, in graph order."""
    if has_qdq(model.graph.node):
        raise ModelLoadError(
            "The model already contains QuantizeLinear/DequantizeLinear nodes.",
            expected="a float model (trtmix adds the quantization itself)",
            fix="pass the float ONNX export, not a quantized one",
        )
    shapes = _tensor_shapes(shape_view(model))
    index = GraphIndex(model)
    units = []
    for node in model.graph.node:
        unit = _unit_at(node, index, shapes)
        if unit is not None:
            units.append(unit)
    return units


def require_units(model: onnx.ModelProto, source: str) -> list[Unit]:
    """``find_units``, failing clearly when the model has nothing to quantize."""
    units = find_units(model)
    if not units:
        raise ModelLoadError(
            f"{source} has no quantizable unit.",
            expected="at least one Conv, Gemm or MatMul node",
            fix="check that this is the model you meant; trtmix quantizes convolutions and matrix multiplies only",
        )
    return units


def units_to_json(units: list[Unit]) -> str:
    """The JSON list ``trtmix units --json`` prints."""
    return json.dumps([asdict(unit) for unit in units], indent=2)


def _unit_at(node: onnx.NodeProto, index: GraphIndex, shapes: dict[str, tuple[int, ...]]) -> Unit | None:
    """The unit anchored at ``node``, or None if ``node`` is not an anchor."""
    if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
        return None
    activation, weight = node.input[0], node.input[1]
    if index.is_constant(activation):
        return None
    if index.is_constant(weight):
        kind = KIND_CONV if node.op_type == "Conv" else KIND_LINEAR
        weight_shape = index.constant_shape(weight)
        inputs: tuple[str, ...] = (activation,)
    elif node.op_type == "MatMul":
        kind, weight, weight_shape, inputs = KIND_ATTENTION, None, None, (activation, node.input[1])
    else:
        return None
    group = _fusion_group(node, index, kind)
    output = group[-1].output[0]
    return Unit(
        name=node.name,
        kind=kind,
        op=node.op_type,
        nodes=tuple(n.name for n in group),
        inputs=inputs,
        weight=weight,
        weight_shape=weight_shape,
        weight_axis=_weight_axis(node, weight_shape),
        output=output,
        macs=_macs(node, shapes, weight_shape),
        module=_module_of(node),
    )


def _fusion_group(anchor: onnx.NodeProto, index: GraphIndex, kind: str) -> list[onnx.NodeProto]:
    """The anchor plus the BatchNorm / bias Add / activation an engine fuses into it."""
    group = [anchor]
    follower = index.sole_consumer(anchor.output[0])
    if follower is not None and kind == KIND_CONV and follower.op_type == "BatchNormalization":
        group.append(follower)
        follower = index.sole_consumer(follower.output[0])
    if follower is not None and kind == KIND_LINEAR and anchor.op_type == "MatMul" and _is_bias_add(follower, index):
        group.append(follower)
        follower = index.sole_consumer(follower.output[0])
    if follower is not None and kind != KIND_ATTENTION and follower.op_type in ACTIVATIONS:
        group.append(follower)
    return group


def _is_bias_add(node: onnx.NodeProto, index: GraphIndex) -> bool:
    return node.op_type == "Add" and sum(index.is_constant(name) for name in node.input) == 1


def _weight_axis(node: onnx.NodeProto, weight_shape: tuple[int, ...] | None) -> int | None:
    """Output-channel axis: 0 for Conv and for Gemm with transB, the last axis for MatMul and plain Gemm."""
    if weight_shape is None:
        return None
    if node.op_type == "Conv" or (node.op_type == "Gemm" and node_attribute(node, "transB", 0) == 1):
        return 0
    return len(weight_shape) - 1


def _macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]], weight_shape: tuple[int, ...] | None) -> int:
    """Multiply-accumulates of the anchor: output elements × reduction length."""
    output_elements = prod(shapes.get(node.output[0], ()))
    if node.op_type == "Conv" and weight_shape is not None:
        return output_elements * prod(weight_shape[1:])
    if weight_shape is not None:
        transposed = node.op_type == "Gemm" and node_attribute(node, "transB", 0) == 1
        return output_elements * (weight_shape[-1] if transposed else weight_shape[0])
    left = shapes.get(node.input[0], ())
    return output_elements * (left[-1] if left else 1)


def _module_of(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == MODULE_KEY:
            return prop.value or None
    return None


def _tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes from ONNX shape inference, unknown dimensions counted as 1."""
    shapes = {}
    for info in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            dims = tensor_type.shape.dim
            shapes[info.name] = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
    return shapes
