"""trtmix: mixed-precision (INT8 + FP16) deployment compiler for NVIDIA GPUs, with ONNX Runtime as the CPU engine.

Importing trtmix never imports TensorRT, torch or onnxruntime; the API functions import what they need.
"""

from __future__ import annotations

__version__ = "0.1.0"

from trtmix.quant.plan import Precision, PrecisionPlan  # noqa: E402

_API_NAMES = frozenset(
    {"list_units", "resolve_plan", "collect_ranges", "build", "profile", "compile", "BuildResult", "CompileConfig",
     "CompileResult"}
)


def __getattr__(name: str) -> object:
    """Re-export the API lazily, so ``import trtmix`` stays light."""
    if name in _API_NAMES:
        from trtmix import api

        return getattr(api, name)
    raise AttributeError(f"module 'trtmix' has no attribute {name!r}")


__all__ = [
    "BuildResult",
    "CompileConfig",
    "CompileResult",
    "Precision",
    "PrecisionPlan",
    "__version__",
    "build",
    "collect_ranges",
    "compile",
    "list_units",
    "profile",
    "resolve_plan",
]
