"""A content-addressed tensor store: the graphs of one job share their weights on disk.

Every probe of a job compiles the same float model with a different plan: a unit's fp16 weight, or its int8 weight,
is the same bytes in every graph that holds it.  Written whole, each probe of BERT-base wrote ~220 MB twice (the
compiled graph and the OpenVINO artifact).  Here each initializer of at least ``THRESHOLD`` bytes goes to
``tensors/<sha256>.bin`` beside the graph, once per job, and the graph file holds only an ONNX external-data
reference to it; ONNX Runtime, OpenVINO and TensorRT's parser resolve such references relative to the graph file,
and OpenVINO and ONNX Runtime map them from disk.  A probe then writes what its plan changed and a small graph.
Store files are named by their content's hash, so a damaged one is detected (``damaged``) and never served.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
from onnx import numpy_helper

from trtmix.io import atomic_write_bytes, file_sha256

STORE = "tensors"
THRESHOLD = 1024


def save_shared(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` with its large initializers in the store beside it, atomically.

    ``model`` is changed in place (its large initializers become references): pass a graph nobody uses afterwards.
    """
    store = path.parent / STORE
    store.mkdir(parents=True, exist_ok=True)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        raw = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
        if len(raw) < THRESHOLD:
            continue
        digest = hashlib.sha256(raw).hexdigest()
        target = store / f"{digest}.bin"
        if not target.is_file() or target.stat().st_size != len(raw):
            atomic_write_bytes(target, raw)
        _refer(tensor, os.path.relpath(target, path.parent), len(raw))
    atomic_write_bytes(path, model.SerializeToString())
    return path


def _refer(tensor: onnx.TensorProto, location: str, length: int) -> None:
    """Make ``tensor`` an external-data reference to ``location`` (its data fields cleared)."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def references(path: Path) -> dict[Path, int]:
    """Store file → the bytes the graph at ``path`` expects in it."""
    proto = onnx.load(str(path), load_external_data=False)
    found = {}
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            found[path.parent / entries["location"]] = int(entries.get("length", 0))
    return found


def damaged(path: Path, verified: set[Path]) -> list[Path]:
    """The store files the graph at ``path`` refers to that are missing, short, or not what their name says.

    A file is hashed once per ``verified`` set (the caller keeps one per job), then trusted.
    """
    bad = []
    for file, length in references(path).items():
        if file in verified:
            continue
        if not file.is_file() or file.stat().st_size != length or file_sha256(file) != file.stem:
            bad.append(file)
        else:
            verified.add(file)
    return bad
