"""A content-addressed tensor store: the graphs of one job share their weights on disk.

Every probe of a job compiles the same float model with a different plan: a unit's fp16 weight, or its int8 weight,
is the same bytes in every graph that holds it.  Written whole, each probe of BERT-base wrote ~220 MB twice (the
compiled graph and the OpenVINO artifact).  Here each initializer of at least ``large.THRESHOLD`` bytes goes to
``tensors/<sha256>.bin`` beside the graph, once per job, and the graph file holds only an ONNX external-data
reference to it; ONNX Runtime, OpenVINO and TensorRT's parser resolve such references relative to the graph file,
and OpenVINO and ONNX Runtime map them from disk.  A probe then writes what its plan changed and a small graph.
Store files are named by their content's hash, so a damaged one is detected (``damaged``) and never served.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from trtmix.io import atomic_write_bytes, file_sha256
from trtmix.ir.large import STORE, skeleton, store_writer


def save_shared(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` with its large initializers in the store beside it, atomically."""
    graph = skeleton(model, store_writer(path.parent / STORE, path.parent))
    atomic_write_bytes(path, graph.SerializeToString())
    return path


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
