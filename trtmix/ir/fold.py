"""Fold what TensorRT's builder folds, in float32, before anything is retyped or quantized.

TensorRT folds an inference-mode BatchNormalization into the Conv or ConvTranspose before it.  trtmix has to do the
same *before* the float16 pass: on PP-OCRv4's text detector (Paddle2ONNX) a convolution's output reaches 11,760,
where float16 steps by 8, and the BatchNormalization after it subtracts a running mean of about the same size; in
float16 the difference kept almost nothing (all-FP16 cosine to FP32 0.03-0.87 per image).  Folded in float32, the
convolution writes the normalised values directly.  torch's exporter folds BatchNormalization in eval mode already,
so torch graphs come out of this unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from trtmix.ir.graph import GraphIndex, load_onnx

LOG = logging.getLogger(__name__)
FOLDABLE = ("Conv", "ConvTranspose")


def load_float_model(path: str | Path) -> onnx.ModelProto:
    """The float model every command works on: ``load_onnx``, then what TensorRT folds folded in float32.

    ``trtmix units``, ``calibrate``, ``build`` and ``compile`` all see this graph, so ranges calibrated by one
    command fit the graph another compiles.
    """
    model, _ = fold_batch_norms(load_onnx(path))
    return model


def fold_batch_norms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with each foldable BatchNormalization folded into its convolution, and the folded BN names.

    Returns ``model`` itself (not a copy) when nothing folds.  A BN folds when it is in inference mode (one output),
    its parameters are constants, and it is the only reader of a convolution with a constant weight (and bias).
    """
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    bias_adds = _fold_bias_adds(folded.graph)
    index = GraphIndex(folded)
    pairs = [(index.producer[bn.input[0]], bn) for bn in folded.graph.node if _foldable(index, bn)]
    if not pairs:
        return (folded, []) if bias_adds else (model, [])
    nodes = {node.name: node for node in folded.graph.node}
    for conv, bn in pairs:
        _fold(index, nodes[conv.name], nodes[bn.name], folded.graph)
    kept = [node for node in folded.graph.node if node.name not in {bn.name for _, bn in pairs}]
    del folded.graph.node[:]
    folded.graph.node.extend(kept)
    _drop_unread(folded.graph)
    names = [bn.name for _, bn in pairs]
    LOG.info("folded %d BatchNormalization node(s) into their convolutions in float32", len(names))
    return folded, names


def _fold_bias_adds(graph: onnx.GraphProto) -> int:
    """Fold ``conv → Add(per-channel constant)`` into the convolution's bias (Paddle2ONNX writes biases so).

    Without this a BatchNormalization after a ConvTranspose's bias Add (PP-OCR's detector head) could not fold.
    """
    model = onnx.helper.make_model(graph)  # an index over ``graph`` itself: the rewrite below edits its nodes
    index = GraphIndex(model)
    nodes = {node.name: node for node in graph.node}
    folded = []
    for add in model.graph.node:
        conv, bias = _conv_and_bias(index, add)
        if conv is None:
            continue
        target = nodes[conv.name]
        old = index.constant_value(target.input[2]) if len(target.input) > 2 and target.input[2] else 0.0
        name = f"{conv.name}/folded_add_bias"
        graph.initializer.append(numpy_helper.from_array((old + bias).astype(bias.dtype), name))  # type: ignore[operator]
        del target.input[2:]
        target.input.append(name)
        target.output[0] = add.output[0]
        folded.append(add.name)
    kept = [node for node in graph.node if node.name not in set(folded)]
    del graph.node[:]
    graph.node.extend(kept)
    return len(folded)


def _conv_and_bias(index: GraphIndex, add: onnx.NodeProto) -> tuple[onnx.NodeProto | None, np.ndarray]:
    """(the convolution, its per-channel bias) when ``add`` adds a constant per output channel to a sole conv."""
    empty = np.zeros(0)
    if add.op_type != "Add":
        return None, empty
    for data, other in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        conv, value = index.producer.get(data), index.constant_value(other)
        if conv is None or conv.op_type not in FOLDABLE or value is None or index.sole_consumer(data) is not add:
            continue
        weight = index.constant_value(conv.input[1])
        if weight is None:
            continue
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        channels = weight.shape[0] if conv.op_type == "Conv" else weight.shape[1] * group
        spatial = weight.ndim - 2
        if value.size == channels and value.ndim >= spatial + 1 and value.shape[-spatial - 1] == channels:
            return conv, value.reshape(-1)
    return None, empty


def _foldable(index: GraphIndex, bn: onnx.NodeProto) -> bool:
    if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
        return False
    conv = index.producer.get(bn.input[0])
    if conv is None or conv.op_type not in FOLDABLE or index.sole_consumer(bn.input[0]) is not bn:
        return False
    constants = [*bn.input[1:5], *conv.input[1:]]
    return all(name and index.constant_value(name) is not None for name in constants)


def _fold(index: GraphIndex, conv: onnx.NodeProto, bn: onnx.NodeProto, graph: onnx.GraphProto) -> None:
    """Rewrite ``conv`` to compute ``bn(conv(x))``: its weight and bias scaled per output channel, in float64."""
    gamma, beta, mean, var = (index.constant_value(name).astype(np.float64) for name in bn.input[1:5])  # type: ignore[union-attr]
    epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + epsilon)
    weight = index.constant_value(conv.input[1])
    dtype = weight.dtype  # type: ignore[union-attr]
    bias = index.constant_value(conv.input[2]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0  # type: ignore[union-attr]
    scaled = _scaled_weight(weight.astype(np.float64), scale, conv)  # type: ignore[union-attr]
    new_bias = (bias - mean) * scale + beta
    weight_name, bias_name = f"{conv.name}/folded_weight", f"{conv.name}/folded_bias"
    graph.initializer.extend([numpy_helper.from_array(scaled.astype(dtype), weight_name),
                              numpy_helper.from_array(new_bias.astype(dtype), bias_name)])  # fmt: skip
    del conv.input[1:]
    conv.input.extend([weight_name, bias_name])
    conv.output[0] = bn.output[0]


def _scaled_weight(weight: np.ndarray, scale: np.ndarray, conv: onnx.NodeProto) -> np.ndarray:
    """``weight`` times ``scale`` along the output channels: axis 0 for Conv; for ConvTranspose axis 1 per group."""
    if conv.op_type == "Conv":
        return weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    per_group_in, per_group_out = weight.shape[0] // group, weight.shape[1]
    grouped = weight.reshape(group, per_group_in, per_group_out, *weight.shape[2:])
    grouped = grouped * scale.reshape(  # output channel g·C_out/g + j
        group, 1, per_group_out, *([1] * (weight.ndim - 2))
    )
    return grouped.reshape(weight.shape)


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove the Constant nodes and initializers that only the folded nodes read."""
    read = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    read |= {graph_input.name for graph_input in graph.input}  # IR < 4 lists initializers as inputs
    read |= {name for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH
             for sub in a.g.node for name in sub.input}  # fmt: skip
    kept = [node for node in graph.node if node.op_type != "Constant" or any(o in read for o in node.output)]
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [tensor for tensor in graph.initializer if tensor.name in read]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
