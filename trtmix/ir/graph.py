"""Loading ONNX files with clear errors, and small read-only queries over a graph."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from trtmix.errors import ModelLoadError

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX model, check it, and give every node a unique name (units are named after nodes)."""
    source = Path(path)
    if not source.is_file():
        raise ModelLoadError(
            f"ONNX file {source} does not exist.", fix="check the path, or export one with `trtmix export`"
        )
    try:
        model = onnx.load(str(source))
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise ModelLoadError(
            f"{source} is not a readable ONNX model ({type(err).__name__}: {err}).",
            expected="a complete ONNX protobuf file, such as `torch.onnx.export` writes",
            fix="re-export the model; if the file was copied, check it is complete",
        ) from err
    if not model.graph.node:
        raise ModelLoadError(
            f"{source} holds no graph nodes.",
            expected="an ONNX model (a truncated or non-ONNX file parses as an empty one)",
            fix="re-export the model",
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ModelLoadError(f"{source} is not a valid ONNX model: {err}", fix="re-export the model") from err
    name_unnamed_nodes(model)
    return model


def name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """Give nameless or duplicate-named nodes a deterministic name ``<op>_<index>`` so units can be addressed."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


def model_sha256(model: onnx.ModelProto) -> str:
    """Hash of the serialized model: keys caches of ranges and artifacts."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


class GraphIndex:
    """Producers, consumers and constant values of a graph's tensors, computed once."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.model = model
        self.nodes = {node.name: node for node in graph.node}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for output in node.output:
                self.producer[output] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.graph_outputs = {out.name for out in graph.output}

    def is_constant(self, tensor: str) -> bool:
        """True for initializers and outputs of ``Constant`` nodes."""
        producer = self.producer.get(tensor)
        return tensor in self.initializers or (producer is not None and producer.op_type == "Constant")

    def constant_value(self, tensor: str) -> np.ndarray | None:
        """The value of a constant tensor, or None when it is computed at run time."""
        if tensor in self.initializers:
            return numpy_helper.to_array(self.initializers[tensor])
        producer = self.producer.get(tensor)
        if producer is not None and producer.op_type == "Constant":
            for attribute in producer.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
        return None

    def sole_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The only node reading ``tensor``, or None when several (or none) read it or it is a graph output."""
        readers = self.consumers.get(tensor, [])
        if len(readers) != 1 or tensor in self.graph_outputs:
            return None
        return readers[0]


def node_attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """One attribute of a node as a Python value."""
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def has_qdq(nodes: Iterable[onnx.NodeProto]) -> bool:
    """True when any node is a QuantizeLinear or DequantizeLinear."""
    return any(node.op_type in QDQ_OPS for node in nodes)


def opset_version(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    raise ModelLoadError("The model imports no default-domain ONNX opset.", fix="re-export the model")


def two_activation_adds(
    model: onnx.ModelProto, index: GraphIndex | None = None
) -> Iterator[tuple[onnx.NodeProto, list[str]]]:
    """Add nodes with two non-constant inputs (residual joins), in graph order, with those two inputs."""
    index = index or GraphIndex(model)
    for node in model.graph.node:
        activations = [t for t in node.input if t and not index.is_constant(t)]
        if node.op_type == "Add" and len(activations) == 2:
            yield node, activations
