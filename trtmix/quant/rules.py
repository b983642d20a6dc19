"""The graph rules of each flavour: a compiled graph is checked before it is written, so no engine gets a broken one.

``tensorrt`` — TensorRT's documented explicit-quantization and typing rules, checked on CPU.  TensorRT either rejects
a graph that breaks these rules or, worse, builds it with another precision than planned.  The checks (each a clear
message naming the node):

* Q/DQ: scales are constant, finite and positive; zero points are int8 and all zero (TensorRT's Q/DQ are symmetric
  and signed); float16 scales need opset ≥ 19; an activation QuantizeLinear feeds only DequantizeLinear.
* weights: per-output-channel DQ along the unit's output-channel axis (axis 0 for Conv and Gemm with transB, the
  last axis for MatMul), one scale per channel.
* the plan: every unit planned INT8 reads DQ outputs on its activation input(s) and weight; no other unit's anchor
  reads a DQ'd weight.
* typing: with a float16 base, no node outside the units planned fp32 computes on float32 tensors (Casts, Shape-like
  ops and the float32-only inputs of Resize excepted); float32 values appear only at the graph I/O and around fp32
  units.

``ort-cpu`` — the plan rules above, activation zero points uint8 and weights int8 within the flavour's levels (ONNX
Runtime's u8×s8 kernels saturate with full-range weights on CPUs without VNNI).
"""

from __future__ import annotations

import numpy as np
import onnx

from trtmix.ir.graph import GraphIndex, node_attribute, opset_version
from trtmix.ir.large import shape_view
from trtmix.ir.units import Unit
from trtmix.quant.float_rules import float32_rules
from trtmix.quant.float_types import FLOAT32_ONLY_INPUTS
from trtmix.quant.plan import Precision, PrecisionPlan

TYPE_NEUTRAL = frozenset({"Cast", "Shape", "Size", "QuantizeLinear", "DequantizeLinear", "Constant", "ConstantOfShape"})


def tensorrt_issues(model: onnx.ModelProto, units: list[Unit], plan: PrecisionPlan) -> list[str]:
    """Every TensorRT rule the graph breaks, as messages (empty when TensorRT will build it as planned)."""
    index = GraphIndex(model)
    return [*_qdq_issues(model, index), *_plan_issues(units, plan, index), *_typing_issues(model, units, plan)]


def ort_cpu_issues(model: onnx.ModelProto, units: list[Unit], plan: PrecisionPlan, weight_levels: int) -> list[str]:
    """Every ``ort-cpu`` rule the graph breaks: the plan's Q/DQ, uint8 activations, int8 weights within the levels."""
    index = GraphIndex(model)
    issues = _plan_issues(units, plan, index)
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = index.constant_value(node.input[0])
        zero_point = index.constant_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        where = f"DequantizeLinear {node.name!r}"
        if source is None and (zero_point is None or zero_point.dtype != np.uint8):
            issues.append(f"{where}: activations are uint8 with a uint8 zero point in the ort-cpu flavour")
        elif source is not None and source.dtype == np.int8 and np.abs(source.astype(np.int32)).max() > weight_levels:
            issues.append(f"{where}: int8 weights exceed ±{weight_levels}")
    return issues


def _qdq_issues(model: onnx.ModelProto, index: GraphIndex) -> list[str]:
    issues = []
    opset = opset_version(model)
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = index.constant_value(node.input[1]) if len(node.input) > 1 else None
        zero_point = index.constant_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        where = f"{node.op_type} {node.name!r}"
        if scale is None:
            issues.append(f"{where}: the scale must be a constant")
        elif not (np.isfinite(scale).all() and (scale > 0).all()):
            issues.append(f"{where}: scales must be finite and positive")
        elif scale.dtype == np.float16 and opset < 19:
            issues.append(f"{where}: float16 scales need opset 19 or newer (the model has {opset})")
        if zero_point is None:
            issues.append(f"{where}: needs an explicit int8 zero point")
        elif zero_point.dtype != np.int8:
            issues.append(f"{where}: zero point is {zero_point.dtype}; TensorRT's Q/DQ are signed int8")
        elif zero_point.any():
            issues.append(f"{where}: zero point must be 0 (TensorRT quantization is symmetric)")
        if node.op_type == "QuantizeLinear" and not index.is_constant(node.input[0]):
            readers = index.consumers.get(node.output[0], [])
            if not readers or any(r.op_type != "DequantizeLinear" for r in readers):
                issues.append(f"{where}: an activation QuantizeLinear must feed DequantizeLinear only")
    return issues


def _dq_producer(index: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    producer = index.producer.get(tensor)
    return producer if producer is not None and producer.op_type == "DequantizeLinear" else None


def _plan_issues(units: list[Unit], plan: PrecisionPlan, index: GraphIndex) -> list[str]:
    issues = []
    for unit in units:
        anchor = index.nodes.get(unit.name)
        if anchor is None:
            issues.append(f"unit {unit.name!r}: its anchor node is missing from the graph")
            continue
        int8 = plan.precision_of(unit.name) is Precision.INT8
        weight_dq = _dq_producer(index, anchor.input[1]) if unit.weight is not None else None
        if int8:
            issues += [
                f"unit {unit.name!r} is planned INT8 but its input {position} has no Q/DQ"
                for position in range(len(unit.inputs))
                if _dq_producer(index, anchor.input[position]) is None
            ]
            if unit.weight is not None and weight_dq is None:
                issues.append(f"unit {unit.name!r} is planned INT8 but its weight has no Q/DQ")
            elif weight_dq is not None:
                issues += _weight_axis_issues(unit, weight_dq, index)
        elif weight_dq is not None:
            issues.append(
                f"unit {unit.name!r} is planned {plan.precision_of(unit.name).value} but its weight is quantized"
            )
    return issues


def _weight_axis_issues(unit: Unit, dq: onnx.NodeProto, index: GraphIndex) -> list[str]:
    scale = index.constant_value(dq.input[1])
    if scale is None or scale.size == 1 or unit.weight_shape is None or unit.weight_axis is None:
        return []
    axis = int(node_attribute(dq, "axis", 1))  # type: ignore[call-overload]
    expected = unit.weight_axis % len(unit.weight_shape)
    if axis % len(unit.weight_shape) != expected:
        return [
            f"unit {unit.name!r}: per-channel weight scales run along axis {axis}, not the output channels ({expected})"
        ]
    if scale.size != unit.weight_shape[expected]:
        return [f"unit {unit.name!r}: {scale.size} weight scales for {unit.weight_shape[expected]} output channels"]
    return []


SMOOTHING = "/smooth/"  # the nodes ``trtmix.quant.smooth`` inserts before a unit's input Q/DQ
# the nodes a centred convolution gets (``trtmix.quant.smooth``): a Pad of −z before it, a border-map Add after it
CENTRING = ("/centring/", "/border/")


def _typing_issues(model: onnx.ModelProto, units: list[Unit], plan: PrecisionPlan) -> list[str]:
    base = plan.default if plan.default is not Precision.INT8 else Precision.FP16
    if base is Precision.FP32:
        return []
    fp32_nodes = {node for u in units if plan.precision_of(u.name) is Precision.FP32 for node in u.nodes}
    rules = float32_rules(model)  # nodes that cannot be float16, and inputs typed float32 whatever T is
    fp32_nodes |= plan.fp32_nodes | set(rules.nodes)
    inferred = shape_view(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    issues = []
    for node in model.graph.node:
        if node.name in fp32_nodes or node.op_type in TYPE_NEUTRAL or SMOOTHING in node.name:
            continue  # a smoothing Mul/Sub computes in the dtype of the tensor it divides
        if any(marker in node.name for marker in CENTRING):
            continue  # in the dtype of the convolution it pads or corrects, FP32 where that unit is
        float32_inputs = [
            name
            for position, name in enumerate(node.input)
            if name
            and types.get(name) == onnx.TensorProto.FLOAT
            and (node.op_type, position) not in FLOAT32_ONLY_INPUTS
            and (node.name, position) not in rules.inputs
        ]
        if float32_inputs:
            issues.append(
                f"node {node.name!r} ({node.op_type}) computes on float32 {float32_inputs[0]!r}, the plan says fp16"
            )
    return issues
