"""Models over protobuf's 2 GiB limit: every whole-model serialization in trtmix goes through here.

Protobuf refuses to serialize (or even size) a message over 2 GiB, and onnx's checker, its shape inference, a hash
of the model and an ONNX Runtime session built from memory all serialize the whole model first.  A large model is
handled as its *skeleton* instead: the same graph with every initializer of at least ``THRESHOLD`` bytes
replaced by an external-data reference (a few KB for BERT-large).  Shape inference and the checker only need
the skeleton; the hash covers the skeleton and each weight's bytes; an ONNX Runtime session reads the skeleton from
a file whose references point at the weights written beside it.  Models under the limit keep the one-call paths
(and their hashes do not change).

Shape inference, the version converter and graph imports go through a *hollow* view at every size: the skeleton's
references without any weight bytes behind them.  They never needed the weights, and serializing the whole model
for them held several copies of its weights at once, which set the memory peak of every compile.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import Message
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from trtmix.io import atomic_write_bytes

# Above this many bytes of tensor data a model takes the skeleton paths (protobuf's hard limit is 2**31).
LARGE_BYTES = 1_800_000_000
THRESHOLD = 1024
STORE = "tensors"
HOLLOW = "trtmix-hollow"  # the location a hollow view's references name: no file, never read


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Serialized bytes of the initializers: what decides whether ``model`` still fits one protobuf message.

    Each tensor sizes itself (one tensor is under 2 GiB), without copying its data out as ``raw_data`` would.
    """
    return sum(tensor.ByteSize() for tensor in model.graph.initializer)


def is_large(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is too large to serialize as one message."""
    return tensor_bytes(model) >= LARGE_BYTES


def raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """The tensor's data as little-endian bytes, whichever field holds it."""
    return tensor.raw_data or numpy_helper.to_array(tensor).tobytes()


# Where a weight's bytes went: (location relative to the graph file, offset in it).
Writer = Callable[[bytes], tuple[str, int]]


def skeleton(model: onnx.ModelProto, writer: Writer | None = None) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers are external references; ``model`` itself is not changed.

    ``writer`` puts each weight's bytes somewhere and says where (``trtmix.ir.store.store_writer``); without one the
    references name ``tensors/<sha256>.bin`` files that need not exist, which is all shape inference and hashing need.
    """
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")  # the weights are what must not be copied
    for tensor in model.graph.initializer:
        raw = raw_bytes(tensor) if tensor.data_location != onnx.TensorProto.EXTERNAL else b""
        if len(raw) < THRESHOLD:
            light.graph.initializer.append(tensor)
            continue
        location, offset = (writer or _named_by_hash)(raw)
        light.graph.initializer.append(_reference(tensor, location, offset, len(raw)))
    return light


def _named_by_hash(raw: bytes) -> tuple[str, int]:
    return f"{STORE}/{hashlib.sha256(raw).hexdigest()}.bin", 0


def appending_writer(sink: BinaryIO, location: str) -> Writer:
    """A writer that appends each weight to ``sink`` (64-byte aligned) and refers to it there as ``location``.

    One file, no hashing: for a model written whole (``save_onnx``, ``written``), where nothing is shared.
    """

    def write(raw: bytes) -> tuple[str, int]:
        sink.write(b"\0" * (-sink.tell() % 64))
        offset = sink.tell()
        sink.write(raw)
        return location, offset

    return write


def _copy_fields(source: Message, target: Message, skip: str) -> None:
    """Copy every set field of ``source`` but ``skip`` into ``target``."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _reference(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> onnx.TensorProto:
    """A data-less copy of ``tensor`` that refers to ``location`` (from ``offset``) for its bytes."""
    reference = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                 data_location=onnx.TensorProto.EXTERNAL, doc_string=tensor.doc_string)  # fmt: skip
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = reference.external_data.add()
        entry.key, entry.value = key, value
    return reference


def model_sha256(model: onnx.ModelProto) -> str:
    """Hash of the model: its serialization, or for a large model its skeleton's (which names each weight's hash)."""
    light = skeleton(model) if is_large(model) else model
    return hashlib.sha256(light.SerializeToString(deterministic=True)).hexdigest()


def hollow(model: onnx.ModelProto, fresh: bool = False) -> onnx.ModelProto:
    """A weightless view of ``model``: each initializer of ``THRESHOLD`` bytes or more is a data-less reference.

    What shape inference and the version converter read (dims, dtypes, small constants such as Reshape's shapes),
    without the weights: serializing the whole model for them cost four copies of its weights at once, for any size
    of model.  No weight's bytes are read or copied; ``fresh`` drops the value_info to infer it anew.
    """
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    if fresh:
        del light.graph.value_info[:]
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.ByteSize() < THRESHOLD:
            light.graph.initializer.append(tensor)
        else:
            light.graph.initializer.append(_reference(tensor, HOLLOW, 0, 0))
    return light


def shape_view(model: onnx.ModelProto, strict: bool = False, fresh: bool = False) -> onnx.ModelProto:
    """``model``'s hollow view (no weights) with onnx's shape inference in its value_info; ``model`` is not changed."""
    return onnx.shape_inference.infer_shapes(hollow(model, fresh), strict_mode=strict)


def import_graph(model: onnx.ModelProto, strict: bool = False, fresh: bool = False) -> gs.Graph:
    """``model`` as an onnx-graphsurgeon graph with inferred types, its weights read from ``model`` only when used.

    The graph is imported from the hollow view; each weight's constant then reads ``model``'s own tensor lazily, and
    onnx-graphsurgeon exports an untouched lazy constant from that tensor directly.  ``model`` is not changed.
    """
    graph = gs.import_onnx(shape_view(model, strict, fresh))
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and _is_hollow(tensor):
            tensor.values = LazyValues(weights[tensor.name])
            tensor.data_location = None
    return graph


def _is_hollow(constant: gs.Constant) -> bool:
    lazy = constant._values  # noqa: SLF001 - read without loading, which would fail on a data-less tensor
    return isinstance(lazy, LazyValues) and is_placeholder(lazy.tensor)


def is_placeholder(tensor: onnx.TensorProto) -> bool:
    """True for a hollow view's data-less stand-in of a weight (its data is the original model's tensor)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return False
    return any(entry.key == "location" and entry.value == HOLLOW for entry in tensor.external_data)


def array_of(constant: gs.Constant) -> np.ndarray:
    """A constant's values, without keeping them on the constant (a lazy weight stays lazy, so not held twice)."""
    lazy = constant._values  # noqa: SLF001 - onnx-graphsurgeon's ``values`` caches what it loads
    return lazy.load() if isinstance(lazy, LazyValues) else constant.values


def convert_version(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The ONNX version converter, run on the hollow view; the weights are copied in after, by name.

    The converter rewrites nodes and small constants; the large weights keep their names.  Serializing the whole
    model for the converter cost three extra copies of its weights, and is impossible over 2 GiB.
    """
    converted = onnx.version_converter.convert_version(hollow(model), opset)
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    for tensor in converted.graph.initializer:
        if is_placeholder(tensor) and tensor.name in weights:
            tensor.CopyFrom(weights[tensor.name])
    return converted


def check_model(model: onnx.ModelProto, full_check: bool = False) -> None:
    """Onnx's checker, for a model of any size (a large one is checked as its skeleton)."""
    if is_large(model):
        with written(model) as path:
            onnx.checker.check_model(str(path), full_check=full_check)
        return
    onnx.checker.check_model(model, full_check=full_check)


@contextmanager
def written(model: onnx.ModelProto) -> Iterator[Path]:
    """``model`` as a file in a temporary folder (its weights beside it), removed on exit.

    The way to hand a large in-memory model to anything that reads files (ONNX Runtime, the checker).
    """
    folder = Path(tempfile.mkdtemp(prefix="trtmix-large-"))
    try:
        path = folder / "model.onnx"
        with (folder / "model.onnx.data").open("wb") as sink:  # a temporary copy: nothing to share, so no hashing
            graph = skeleton(model, appending_writer(sink, "model.onnx.data"))
        atomic_write_bytes(path, graph.SerializeToString())
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)
