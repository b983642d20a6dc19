"""Loading ONNX files with clear errors, and small read-only queries over a graph."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from trtmix.errors import ModelLoadError
from trtmix.io import atomic_write_bytes
from trtmix.ir.large import appending_writer, is_large, skeleton

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX model, check it, and give every node a unique name (units are named after nodes)."""
    source = Path(path)
    if not source.is_file():
        raise ModelLoadError(
            f"ONNX file {source} does not exist.", fix="check the path, or export one with `trtmix export`"
        )
    if source.stat().st_size >= PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{source} is {source.stat().st_size / 2**30:.1f} GiB in one file: protobuf cannot parse an ONNX file "
            "over 2 GiB, so its weights must live in external data.",
            expected="a .onnx graph under 2 GiB with its weights in a separate data file",
            fix="re-export with torch.onnx.export(..., external_data=True) (dynamo does it by default), or save with "
            "onnx.save_model(model, path, save_as_external_data=True)",
        )
    try:
        model = onnx.load(str(source), load_external_data=False)  # parsed once; the weights follow if external
        _require_external_data(model, source)
        external = bool(external_locations(model))
        external_data_helper.load_external_data_for_model(model, str(source.parent))
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
    try:  # from the file when the weights are external: the checker would serialize them all (>2 GiB fails)
        onnx.checker.check_model(str(source) if external else model)
    except onnx.checker.ValidationError as err:
        raise ModelLoadError(f"{source} is not a valid ONNX model: {err}", fix="re-export the model") from err
    name_unnamed_nodes(model)
    return model


PROTOBUF_LIMIT = 2**31


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path`` as one self-contained file, atomically; with external data when it is too large.

    Graphs loaded from a file with external data hold their weights in memory, so the copy written here never
    depends on where the user's ``.data`` file lives. Above protobuf's 2 GiB limit the weights go to
    ``<name>.data`` beside the file (written first; the graph file's rename commits both).
    """
    target = Path(path)
    if not is_large(model):
        atomic_write_bytes(target, model.SerializeToString())
        return target
    data = target.with_name(f"{target.name}.data")
    temp = data.with_name(f".{data.name}.tmp")
    with temp.open("wb") as sink:
        graph = skeleton(model, appending_writer(sink, data.name))
        sink.flush()
        os.fsync(sink.fileno())
    temp.replace(data)
    atomic_write_bytes(target, graph.SerializeToString())
    return target


def external_locations(proto: onnx.ModelProto) -> set[str]:
    """The external data files a graph's initializers name (empty for a self-contained graph)."""
    return {
        entry.value
        for init in proto.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }


def self_contained(source: Path, target: Path) -> Path:
    """``source`` itself when it holds its own weights, else a self-contained copy of it written to ``target``."""
    try:
        proto = onnx.load(str(source), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise ModelLoadError(f"{source} is not a readable ONNX model ({type(err).__name__}: {err}).") from err
    if not external_locations(proto):
        return source
    external_data_helper.load_external_data_for_model(proto, str(source.parent))
    return save_onnx(proto, target)


def copy_onnx(source: Path, target: Path) -> Path:
    """Copy an ONNX file atomically.

    In the same folder, external data references still resolve, so the graph file is copied as it is (the job's
    tensor store keeps one copy of each weight); elsewhere a graph with external data becomes self-contained.
    """
    if source.parent.resolve() == target.parent.resolve() or self_contained(source, target) == source:
        atomic_write_bytes(target, source.read_bytes())
    return target


def _require_external_data(model: onnx.ModelProto, source: Path) -> None:
    """A clear error when the external data files a graph names are not beside it."""
    missing = sorted(name for name in external_locations(model) if not (source.parent / name).is_file())
    if missing:
        raise ModelLoadError(
            f"{source} keeps its weights in external data, and {', '.join(missing)} is not beside it.",
            expected=f"the data file(s) in {source.parent}, as the exporter wrote them",
            fix="copy the .onnx together with its data file(s), or re-export",
        )


def name_unnamed_nodes(model: onnx.ModelProto, tag: str = "") -> None:
    """Give nameless or duplicate-named nodes a deterministic name ``<op>_<tag><index>`` so units can be addressed.

    A new name never repeats one the graph already has (a converted graph's indices shift: ``tag`` tells its new
    nodes apart from those named when it was loaded).
    """
    taken = {node.name for node in model.graph.node if node.name}
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            name = f"{node.op_type}_{tag}{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
        seen.add(node.name)


def implicated_nodes(path: Path, message: str, limit: int = 5) -> str:
    """The nodes an engine's error ``message`` points at, as text to append to it ("" when it names them already).

    Engines often name the op type that failed ("Frobnicate is not a registered op") but not the node; a user
    needs the node to find it in their graph.
    """
    try:
        nodes = list(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:  # noqa: BLE001 - the engine's own message is still reported
        return ""
    if any(node.name and _mentions(message, node.name) for node in nodes):
        return ""
    ops = {node.op_type for node in nodes if _mentions(message, node.op_type)}
    hits = [f"{node.name} ({node.domain + '.' if node.domain else ''}{node.op_type})"
            for node in nodes if node.op_type in ops]  # fmt: skip
    if not hits:
        return ""
    more = f" and {len(hits) - limit} more" if len(hits) > limit else ""
    return f" [node{'s' if len(hits) > 1 else ''} of that op: {', '.join(hits[:limit])}{more}]"


def _mentions(message: str, word: str) -> bool:
    """``word`` appears in ``message`` as a whole word (a node called ``mm`` is not mentioned by "Summary")."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", message) is not None


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

    def constant_shape(self, tensor: str) -> tuple[int, ...] | None:
        """The shape of a constant tensor (from its dims, without reading its data), or None when computed."""
        if tensor in self.initializers:
            return tuple(int(d) for d in self.initializers[tensor].dims)
        value = self.constant_value(tensor)
        return tuple(int(d) for d in value.shape) if value is not None else None

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


def extract_subgraph(model: onnx.ModelProto, inputs: Iterable[str], outputs: Iterable[str]) -> onnx.ModelProto:
    """The nodes that compute ``outputs`` from ``inputs`` (and constants), as a model of their own.

    ``onnx.utils.Extractor`` needs a ``value_info`` for every boundary tensor, and shape inference leaves it out on
    some exporters' graphs (Paddle2ONNX's text detector: none of its units could be run alone).  Here a boundary
    tensor keeps what the graph records of it, and one it records nothing of is declared float32 of unknown shape:
    the tensors this is asked for are a float model's activations.
    """
    inputs, outputs = list(dict.fromkeys(inputs)), list(dict.fromkeys(outputs))  # MatMul(a, a) reads ``a`` once
    index = GraphIndex(model)
    needed: set[int] = set()  # id() of the nodes: a graph's names may be empty or repeated
    pending = list(outputs)
    while pending:
        tensor = pending.pop()
        if not tensor or tensor in inputs or tensor in index.initializers:
            continue
        node = index.producer.get(tensor)
        if node is None:
            raise ValueError(f"{tensor} is neither computed in the graph nor one of the inputs {inputs}")
        if id(node) not in needed:
            needed.add(id(node))
            pending.extend(node.input)
    nodes = [node for node in model.graph.node if id(node) in needed]  # graph order is a topological order
    used = {name for node in nodes for name in node.input}
    known = {value.name: value for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]}

    def declared(name: str) -> onnx.ValueInfoProto:
        value = known.get(name)
        if value is not None and value.type.tensor_type.elem_type:
            return value
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)

    graph = onnx.helper.make_graph(nodes, f"{model.graph.name}/extracted", [declared(n) for n in inputs],
                                   [declared(n) for n in outputs],
                                   [init for init in model.graph.initializer if init.name in used])  # fmt: skip
    extracted = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    extracted.functions.extend(model.functions)
    return extracted
