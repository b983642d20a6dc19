"""The trtexec command line that builds the same engine trtmix builds, for users who build on a TensorRT host.

Per TensorRT major version, from trtexec's own options (``samples/common/sampleOptions.cpp``):

* TensorRT 10 needs ``--stronglyTyped`` (else the graph's float16 types are only hints) and times without CUDA
  graphs and with host transfers unless ``--useCudaGraph`` / ``--noDataTransfers`` are given;
* TensorRT 11 is strongly typed always and times with CUDA graphs and without transfers by default; those three
  flags are deprecated no-ops there that only warn, so the TensorRT 11 line leaves them out, and turns CUDA graphs
  off with ``--noCudaGraph`` (new in 11) when trtmix times without them.

Both carry what trtmix's own build sets: ``--profilingVerbosity=detailed`` (so the inspector reports per-layer
precisions), the timing cache, the optimisation profiles of ``--trt-shapes``, the workspace limit, the builder
optimisation level, and ``--noTF32`` when TF32 is off: with ``--no-tf32``, and whenever the graph has a conv or
matmul computing in float32 (``fp32_compute``), since TensorRT's TF32 default would run a unit planned FP32 in TF32
on Ampere and later while the engine inspector still reports it as Float.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

TF32_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})  # what TF32 tensor cores compute

Shapes = dict[str, tuple[str, str, str]]


def trtexec_command(
    onnx_path: str,
    engine_path: str,
    timing_cache: str | None = None,
    shapes: Shapes | None = None,
    cuda_graph: bool = True,
    *,
    major: int = 10,
    workspace_mb: int | None = None,
    optimization_level: int | None = None,
    tf32: bool = True,
) -> str:
    """``trtexec --onnx=... --saveEngine=...`` for TensorRT ``major``: precision comes from the graph.

    Args:
        onnx_path: the ``tensorrt``-flavour ONNX.
        engine_path: where trtexec saves the engine.
        timing_cache: a timing cache file shared across builds.
        shapes: input name → (min, opt, max) shapes like ``1x3x224x224`` for dynamic inputs.
        cuda_graph: time with CUDA graphs (TensorRT 10 needs the flag; 11 always does).
        major: the TensorRT major version the line is for (10 or 11).
        workspace_mb: the workspace memory pool limit in MiB.
        optimization_level: the builder optimisation level 0-5.
        tf32: allow TF32 (the default of TensorRT, trtexec and trtmix).
    """
    legacy = major < 11
    parts = ["trtexec", f"--onnx={onnx_path}"] + (["--stronglyTyped"] if legacy else [])
    parts += [f"--saveEngine={engine_path}", "--profilingVerbosity=detailed"]
    if timing_cache:
        parts.append(f"--timingCacheFile={timing_cache}")
    for flag, position in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        if shapes:
            parts.append(f"{flag}=" + ",".join(f"{name}:{dims[position]}" for name, dims in shapes.items()))
    if workspace_mb:
        parts.append(f"--memPoolSize=workspace:{workspace_mb}M")
    if optimization_level is not None:
        parts.append(f"--builderOptimizationLevel={optimization_level}")
    if not tf32:
        parts.append("--noTF32")
    if legacy:
        parts += (["--useCudaGraph"] if cuda_graph else []) + ["--noDataTransfers"]
    elif not cuda_graph:
        parts.append("--noCudaGraph")
    return " ".join(shlex.quote(part) for part in parts)


def fp32_compute(onnx_path: Path) -> list[str]:
    """The conv and matmul nodes of a graph that compute in float32 (planned FP32 units, or an FP32 graph).

    TensorRT runs them in TF32 unless TF32 is off.  A node fed by a DequantizeLinear computes in INT8 (TensorRT fuses
    the Q/DQ), so it does not count.  Types come from onnx's shape inference on the graph without its weights.
    """
    import onnx

    from trtmix.ir.large import shape_view

    model = onnx.load(str(onnx_path), load_external_data=False)
    typed = shape_view(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.input]}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [node.name for node in model.graph.node
            if node.op_type in TF32_OPS and _computes_fp32(node, types, dequantized)]  # fmt: skip


FLOAT32 = 1  # onnx.TensorProto.FLOAT (onnx is imported only where a graph is read)


def _computes_fp32(node: Any, types: dict[str, int], dequantized: set[str]) -> bool:
    """A conv or matmul computes in float32 unless every data input (the first two) comes from a DequantizeLinear.

    An INT8 conv or matmul needs both its inputs quantized; one float32 input not behind a DQ (a MatMul whose other
    side is an activation in FP32) keeps the node in float32, and so in TF32 unless TF32 is off.
    """
    data = [name for name in node.input[:2] if name]
    return any(types.get(name) == FLOAT32 for name in data) and not all(name in dequantized for name in data)


def trtexec_lines(onnx_path: str, engine_path: str, timing_cache: str, settings: dict[str, object],
                  fp32_layers: bool = False) -> str:  # fmt: skip
    """The TensorRT 10 and 11 lines for a job's TensorRT settings (``--trt-shapes``, workspace, level), commented.

    ``fp32_layers``: the graph computes some conv or matmul in float32 (``fp32_compute``), so TF32 is off.
    """
    profiles = settings.get("profiles") or {}
    shapes = {name: tuple("x".join(map(str, dims)) for dims in triple)
              for name, triple in profiles.items()} if isinstance(profiles, dict) else {}  # type: ignore[misc]  # fmt: skip
    options = {"workspace_mb": settings.get("workspace_mb"), "optimization_level": settings.get("optimization_level"),
               "tf32": settings.get("tf32", True) and not fp32_layers,
               "cuda_graph": settings.get("cuda_graph", True)}  # fmt: skip
    lines = []
    for major in (10, 11):
        command = trtexec_command(onnx_path, engine_path, timing_cache, shapes or None, major=major, **options)  # type: ignore[arg-type]
        lines.append(f"# TensorRT {major}\n{command}")
    return "\n".join(lines) + "\n"
