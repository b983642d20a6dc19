"""Models over protobuf's 2 GiB limit: every whole-model serialization in trtmix goes through here.

Protobuf refuses to serialize (or even size) a message over 2 GiB, and onnx's checker, its shape inference, a hash
of the model and an ONNX Runtime session built from memory all serialize the whole model first.  A large model is
handled as its *skeleton* instead: the same graph with every initializer of at least ``THRESHOLD`` bytes
replaced by an external-data reference (a few KB for BERT-large).  Shape inference and the checker only need
the skeleton; the hash covers the skeleton and each weight's bytes; an ONNX Runtime session reads the skeleton from
a file whose references point at the weights written beside it.  Models under the limit keep the one-call paths
(and their hashes do not change).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf.message import Message
from onnx import numpy_helper

from trtmix.io import atomic_write_bytes

# Above this many bytes of tensor data a model takes the skeleton paths (protobuf's hard limit is 2**31).
LARGE_BYTES = 1_800_000_000
THRESHOLD = 1024
STORE = "tensors"


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

    ``writer`` puts each weight's bytes somewhere and says where (see ``store_writer``); without one the references
    name ``tensors/<sha256>.bin`` files that need not exist, which is all shape inference and hashing need.
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


def store_writer(store: Path, graph_folder: Path) -> Writer:
    """A writer into the content-addressed ``store``: each distinct weight once, as ``<sha256>.bin``."""
    store.mkdir(parents=True, exist_ok=True)

    def write(raw: bytes) -> tuple[str, int]:
        target = store / f"{hashlib.sha256(raw).hexdigest()}.bin"
        if not target.is_file() or target.stat().st_size != len(raw):
            atomic_write_bytes(target, raw)
        return os.path.relpath(target, graph_folder), 0

    return write


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


def infer_shapes(model: onnx.ModelProto, strict: bool = False) -> onnx.ModelProto:
    """Onnx's shape inference, for a model of any size.

    A large model is inferred on its skeleton and the result's ``value_info`` is set on ``model`` itself, which is
    returned (a copy would double its memory); a small one returns onnx's new model, as onnx does.
    """
    if not is_large(model):
        return onnx.shape_inference.infer_shapes(model, strict_mode=strict)
    inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=strict)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return model


def convert_version(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The ONNX version converter, for a model of any size (a large one is converted as its skeleton).

    The converter rewrites nodes and small constants; the large weights keep their names and come back after.
    """
    if not is_large(model):
        return onnx.version_converter.convert_version(model, opset)
    converted = onnx.version_converter.convert_version(skeleton(model), opset)
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    for tensor in converted.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name in weights:
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
