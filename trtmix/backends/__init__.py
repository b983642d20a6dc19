"""Engine backends behind one protocol.  Importing this package never imports TensorRT."""

from __future__ import annotations

from trtmix.backends.base import Backend, LatencyStats
from trtmix.errors import BackendUnavailableError

BACKENDS = ("onnxruntime",)


def get_backend(name: str, threads: int | None = None) -> Backend:
    """The backend called ``name``."""
    if name == "onnxruntime":
        from trtmix.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(threads=threads)
    raise BackendUnavailableError(
        f"Unknown backend {name!r}.",
        expected=f"one of {', '.join(BACKENDS)}",
        fix="use --backend onnxruntime",
    )


__all__ = ["BACKENDS", "Backend", "LatencyStats", "get_backend"]
