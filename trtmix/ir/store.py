"""A content-addressed tensor store: the graphs of one job share their weights on disk.

Every probe of a job compiles the same float model with a different plan: a unit's fp16 weight, or its int8 weight,
is the same bytes in every graph that holds it.  Written whole, each probe of BERT-base wrote ~220 MB twice (the
compiled graph and the OpenVINO artifact).  Here each initializer of at least ``large.THRESHOLD`` bytes goes to
``tensors/<sha256>.bin`` beside the graph, once per job, and the graph file holds only an ONNX external-data
reference to it; ONNX Runtime, OpenVINO and TensorRT's parser resolve such references relative to the graph file,
and OpenVINO and ONNX Runtime map them from disk.  A probe then writes what its plan changed and a small graph.
Store files are named by their content's hash, so a damaged one is detected and never served: a graph about to be
written re-hashes each store file it reuses (``store_writer``), and an artifact about to be reused re-hashes each one
it reads (``damaged``).  A file is hashed once while its inode, size, mtime and ctime stay the same (``is_intact``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx

from trtmix.io import atomic_write_bytes, file_sha256
from trtmix.ir.large import STORE, Writer, skeleton

# Store files found intact, by path → the stat signature they had when hashed: rehashed when the signature changes.
_INTACT: dict[Path, tuple[int, int, int, int]] = {}


def _signature(file: Path) -> tuple[int, int, int, int]:
    stat = file.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def is_intact(file: Path, length: int) -> bool:
    """Whether the store file exists with ``length`` bytes whose hash is its name.

    Hashing BERT-large's store takes seconds, so a file is hashed once and trusted while its stat signature holds;
    writing into it (zeroing it in place included) changes its mtime, replacing it changes its inode.
    """
    if not file.is_file() or file.stat().st_size != length:
        return False
    if _INTACT.get(file) == _signature(file):
        return True
    if file_sha256(file) != file.stem:
        return False
    _INTACT[file] = _signature(file)
    return True


def store_writer(store: Path, graph_folder: Path) -> Writer:
    """A writer into the content-addressed ``store``: each distinct weight once, as ``<sha256>.bin``.

    A file already there is reused only when intact: a new plan never refers to a damaged copy of its weights.
    """
    store.mkdir(parents=True, exist_ok=True)

    def write(raw: bytes) -> tuple[str, int]:
        target = store / f"{hashlib.sha256(raw).hexdigest()}.bin"
        if not is_intact(target, len(raw)):
            atomic_write_bytes(target, raw)
            _INTACT[target] = _signature(target)
        return os.path.relpath(target, graph_folder), 0

    return write


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


def damaged(path: Path) -> list[Path]:
    """The store files the graph at ``path`` refers to that are missing, short, or not what their name says."""
    return [file for file, length in references(path).items() if not is_intact(file, length)]
