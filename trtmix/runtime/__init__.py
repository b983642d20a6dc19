"""Engine backends behind one protocol.  Importing this package never imports TensorRT."""

from __future__ import annotations

from pathlib import Path

from trtmix.errors import BackendUnavailableError
from trtmix.runtime.base import Backend, LatencyStats

BACKENDS = ("onnxruntime", "tensorrt")


def get_backend(
    name: str, threads: int | None = None, timing_cache: Path | None = None, tensorrt: dict[str, object] | None = None
) -> Backend:
    """The backend called ``name``; ``tensorrt`` raises BackendUnavailableError (with how to install) when missing."""
    if name == "onnxruntime":
        from trtmix.runtime.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(threads=threads)
    if name == "tensorrt":
        from trtmix.runtime.tensorrt import BuildSettings, TensorRTBackend

        return TensorRTBackend(BuildSettings(timing_cache=timing_cache, **(tensorrt or {})))  # type: ignore[arg-type]
    raise BackendUnavailableError(
        f"Unknown backend {name!r}.",
        expected=f"one of {', '.join(BACKENDS)}",
        fix="use --backend onnxruntime",
    )


__all__ = ["BACKENDS", "Backend", "LatencyStats", "get_backend"]
