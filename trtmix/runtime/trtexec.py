"""The trtexec command line equivalent to what trtmix builds, for users who build engines on a TensorRT host."""

from __future__ import annotations

import shlex


def trtexec_command(
    onnx_path: str,
    engine_path: str,
    timing_cache: str | None = None,
    shapes: dict[str, tuple[str, str, str]] | None = None,
    cuda_graph: bool = True,
) -> str:
    """``trtexec --onnx=... --stronglyTyped --saveEngine=...``: precision comes from the graph's Q/DQ and dtypes.

    Args:
        onnx_path: the ``tensorrt``-flavour ONNX.
        engine_path: where trtexec saves the engine.
        timing_cache: a timing cache file shared across builds.
        shapes: input name → (min, opt, max) shapes like ``1x3x224x224`` for dynamic inputs.
        cuda_graph: time with CUDA graphs (trtexec's own default in TensorRT 11).
    """
    parts = ["trtexec", f"--onnx={onnx_path}", "--stronglyTyped", f"--saveEngine={engine_path}"]
    if timing_cache:
        parts.append(f"--timingCacheFile={timing_cache}")
    for flag, position in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        if shapes:
            parts.append(f"{flag}=" + ",".join(f"{name}:{dims[position]}" for name, dims in shapes.items()))
    if cuda_graph:
        parts.append("--useCudaGraph")
    parts.append("--noDataTransfers")
    return " ".join(shlex.quote(part) for part in parts)
