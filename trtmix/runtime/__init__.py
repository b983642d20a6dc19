"""Engine backends behind one protocol.  Importing this package never imports TensorRT."""

from __future__ import annotations

from pathlib import Path

from trtmix import registry
from trtmix.errors import BackendUnavailableError
from trtmix.runtime.base import Backend, LatencyStats

BACKENDS = tuple(name for name in registry.BACKENDS if name != "auto")


def resolve_backend(name: str, flavour: str) -> str:
    """``auto``: a real TensorRT (with a GPU) for the tensorrt flavour, else OpenVINO; ONNX Runtime for ort-cpu."""
    if name != "auto":
        return name
    if flavour == "tensorrt":
        from trtmix.runtime.tensorrt import tensorrt_available

        return "tensorrt" if tensorrt_available() else "openvino"
    return "onnxruntime"


def get_backend(
    name: str,
    threads: int | None = None,
    timing_cache: Path | None = None,
    tensorrt: dict[str, object] | None = None,
    flavour: str = "tensorrt",
    cache_dir: Path | None = None,
) -> Backend:
    """The backend called ``name`` (``auto`` resolved for ``flavour``); a missing TensorRT is a clear error.

    ``timing_cache`` is TensorRT's timing cache file, ``cache_dir`` OpenVINO's model cache folder.
    """
    name = resolve_backend(name, flavour)
    if name == "onnxruntime":
        from trtmix.runtime.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(threads=threads)
    if name == "openvino":
        from trtmix.runtime.openvino import OpenVinoBackend

        return OpenVinoBackend(threads=threads, cache_dir=cache_dir)
    if name == "tensorrt":
        from trtmix.runtime.tensorrt import BuildSettings, TensorRTBackend

        return TensorRTBackend(BuildSettings(timing_cache=timing_cache, **(tensorrt or {})))  # type: ignore[arg-type]
    raise BackendUnavailableError(
        f"Unknown backend {name!r}.", expected=f"one of {', '.join(registry.BACKENDS)}", fix="use --backend auto"
    )


__all__ = ["BACKENDS", "Backend", "LatencyStats", "get_backend", "resolve_backend"]
