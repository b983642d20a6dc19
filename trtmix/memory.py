"""Give freed memory back to the system after a step that built and dropped whole-model copies.

Two things keep a dropped copy's pages in the process, so that the peak RSS of a job grew with every probe:
onnx-graphsurgeon graphs are reference cycles (node <-> tensor), which only the cyclic collector frees, and
usually many steps later; and glibc's malloc keeps freed heap pages (numpy arrays under its dynamic mmap threshold,
protobuf arenas) for reuse instead of returning them.  ``release`` runs the collector and ``malloc_trim``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache

WORTH_BYTES = 64 * 2**20  # weights below this: no collection (see ``release``)


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The C library's ``malloc_trim`` (glibc), or None on a C library without it (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release(model_bytes: int) -> None:
    """Free unreachable cycles and return the allocator's free pages, after a step on a model of ``model_bytes``.

    Skipped for a model under ``WORTH_BYTES``: a full collection costs about 0.1 s in a process that holds torch,
    more than the few pages of a small model's copies are worth (the test suite compiles hundreds of them).
    """
    if model_bytes < WORTH_BYTES:
        return
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
