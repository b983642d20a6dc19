"""The ONNX Runtime backend: the embedded engine, and the oracle every test compares against.

``build`` runs ORT's full graph optimisation once and saves the optimised model, so what is timed is what the
report's kernel list shows (QLinearConv, MatMulIntegerToFloat, ...).  On graphs with Q/DQ, ORT's MatMulAddFusion is
disabled: it rewrites 3-D MatMul+bias into Reshape→Gemm→Reshape before the QDQ fusions run, and then a third of
MiniLM's INT8 MatMuls stayed float (measured: all-INT8 MiniLM 190 ms with it, 117 ms without; FP32 185 ms).
On graphs whose Q/DQ scales are float16 (the ``tensorrt`` flavour), ORT's WeightBiasQuantization is disabled too: it
rewrites conv biases wrongly there (measured: EfficientNet-Lite0 with its first two units INT8 went from 100% to 0%
top-1 agreement; with the rewrite disabled, or no optimisation at all, it stays at 100%).
Timing uses a fixed intra-op thread count and inputs allocated once; ``time.perf_counter`` brackets each
synchronous ``run``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtmix.backends.base import LatencyStats
from trtmix.errors import BackendError
from trtmix.graph import has_qdq
from trtmix.io import atomic_write_bytes

LOG = logging.getLogger(__name__)
QDQ_DISABLED_OPTIMIZERS = ["MatMulAddFusion"]
FP16_QDQ_DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


def disabled_optimizers(model: onnx.ModelProto) -> list[str]:
    """The ORT graph rewrites that must not run on ``model`` (see the module docstring)."""
    if not has_qdq(model.graph.node):
        return []
    initializers = {init.name: init.data_type for init in model.graph.initializer}
    fp16_scales = any(
        initializers.get(node.input[1]) == onnx.TensorProto.FLOAT16
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and len(node.input) > 1
    )
    return QDQ_DISABLED_OPTIMIZERS + (FP16_QDQ_DISABLED_OPTIMIZERS if fp16_scales else [])


def default_threads() -> int:
    """Intra-op threads: all cores this process may use (2 on the project's machines)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, threads: int | None = None) -> None:
        import onnxruntime

        self.threads = threads or default_threads()
        self.version = onnxruntime.__version__
        self._loaded: tuple[tuple[str, int, int], Any] | None = None  # the artifact run() used last, and its session

    def _options(self, optimize: bool):  # type: ignore[no-untyped-def]
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        return options

    def session(self, model: Path | bytes, optimize: bool = True):  # type: ignore[no-untyped-def]
        """An inference session on the CPU provider with this backend's threads (and its disabled rewrites)."""
        import onnxruntime as ort

        source = str(model) if isinstance(model, Path) else model
        disabled = disabled_optimizers(_load_graph(model)) if optimize else []
        try:
            return ort.InferenceSession(
                source, self._options(optimize), providers=["CPUExecutionProvider"], disabled_optimizers=disabled
            )
        except Exception as err:  # noqa: BLE001 - ORT raises its own untyped errors
            raise BackendError(f"ONNX Runtime cannot load the model: {err}") from err

    def build(self, onnx_path: Path, artifact_path: Path) -> Path:
        """Optimise with ORT's full graph optimisation and save the optimised model (atomically)."""
        options = self._options(optimize=True)
        temp = artifact_path.with_name(f".{artifact_path.name}.tmp.onnx")
        options.optimized_model_filepath = str(temp)
        import onnxruntime as ort

        disabled = disabled_optimizers(_load_graph(onnx_path))
        try:
            ort.InferenceSession(
                str(onnx_path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
            )
            atomic_write_bytes(artifact_path, temp.read_bytes())
        except Exception as err:  # noqa: BLE001
            raise BackendError(f"ONNX Runtime failed to build {onnx_path}: {err}") from err
        finally:
            temp.unlink(missing_ok=True)
        return artifact_path

    def run(self, artifact: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs of one run (the artifact is already optimised, so no further optimisation is applied).

        The session is kept for the next call on the same file (same path, size and mtime): evaluating a split
        runs one artifact on many batches, and loading a quantized transformer costs more than one run.
        """
        stat = artifact.stat()
        key = (str(artifact), stat.st_size, stat.st_mtime_ns)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # release the previous session before loading the next one
            self._loaded = (key, self.session(artifact, optimize=False))
        return [np.asarray(o) for o in self._loaded[1].run(None, feeds)]

    def time(self, artifact: Path, feeds: dict[str, np.ndarray], runs: int = 20, warmup: int = 3) -> LatencyStats:
        """Median latency of ``runs`` synchronous runs after ``warmup`` discarded ones."""
        import onnxruntime as ort

        if runs < 1:
            raise BackendError(f"--runs must be at least 1 (got {runs}).")
        session = self.session(artifact, optimize=False)
        bound = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        for _ in range(warmup):
            session.run(None, bound)
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, bound)
            samples.append((time.perf_counter() - start) * 1e3)
        return LatencyStats.from_samples(
            samples,
            warmup=warmup,
            threads=self.threads,
            provider="CPUExecutionProvider",
            device=_cpu_name(),
            versions={"onnxruntime": ort.__version__, "onnx": onnx.__version__},
        )


def _load_graph(model: Path | bytes) -> onnx.ModelProto:
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(str(model), load_external_data=False)


def kernel_counts(artifact: Path) -> Counter[str]:
    """How many nodes of each op type the optimised model runs (QLinearConv, MatMulIntegerToFloat, ...)."""
    return Counter(node.op_type for node in onnx.load(str(artifact)).graph.node)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return "CPU"
