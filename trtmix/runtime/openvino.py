"""The OpenVINO backend: builds, times and verifies the very ``tensorrt``-flavour graph a TensorRT host builds.

OpenVINO's CPU plugin is an explicit-quantization engine like TensorRT: it reads the Q/DQ + float16 ONNX as it is,
fuses each Q/DQ pair into int8 kernels, and its runtime model says per layer which ONNX nodes it came from
(``originalLayersNames``) and what precision really ran (``runtimePrecision``: ``u8``/``i8`` are int8 kernels).
The only module of trtmix that imports ``openvino``.

* Build: read and compile the ONNX (so a graph OpenVINO cannot take fails at build, naming what OpenVINO names),
  then keep the ONNX itself as the artifact; compiling again costs under a second, and an optional model cache
  folder (``CACHE_DIR``) makes it cheaper still.  That cache holds one compiled blob per graph (a ResNet-50 job
  grew it to 1.7 GB; BERT-base's filled a disk), so it is kept under ``cache_bytes``, oldest blobs first out: the
  blob a probe reuses is the one it wrote moments before, and an evicted one only costs a compile.
* Latency: ``PERFORMANCE_HINT=LATENCY``, fixed threads, synchronous inferences with inputs bound once, and the
  CPU's native 16-bit type as the inference precision where it has one (bf16 with AVX512-BF16 or AMX), f32
  otherwise.  The hints are recorded in every ``LatencyStats``.
* Accuracy: the float16 graph's semantics are closer to f32 than to bf16 (8 mantissa bits against float16's 11),
  so outputs come from a separate compile with ``INFERENCE_PRECISION_HINT=f32``.  On a CPU without VNNI or AMX,
  OpenVINO's u8×s8 kernels can saturate where TensorRT and VNNI CPUs do not (OpenVINO's docs, "Saturation
  (overflow) Issue Workaround"), so there accuracy comes from ONNX Runtime on the same graph instead.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from trtmix.errors import BackendError
from trtmix.ir.graph import copy_onnx, implicated_nodes
from trtmix.runtime.base import LatencyStats, RunsThroughRunners, cpu_name, policy_for, timed_stats
from trtmix.runtime.cpu import cpu_features
from trtmix.runtime.engine_report import EngineLayer
from trtmix.runtime.timing import TimingPolicy

LOG = logging.getLogger(__name__)
DEFAULT_CACHE_BYTES = 2**30
INT8_PRECISIONS = frozenset({"u8", "i8", "u4", "i4"})
PRECISION_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
SKIPPED_LAYER_TYPES = frozenset({"Input", "Output", "Const", "Parameter", "Result"})


def prune_cache(folder: Path, budget_bytes: int) -> list[Path]:
    """Delete the oldest compiled blobs in ``folder`` until the rest fit in ``budget_bytes``; the newest stays.

    A compiled model that was read from a deleted blob keeps running (it is mapped, and Linux keeps the inode).
    """
    blobs = sorted((entry for entry in folder.glob("*.blob") if entry.is_file()),
                   key=lambda entry: entry.stat().st_mtime_ns, reverse=True)  # fmt: skip
    kept, removed = 0, []
    for index, blob in enumerate(blobs):
        size = blob.stat().st_size
        if index and kept + size > budget_bytes:
            blob.unlink(missing_ok=True)
            removed.append(blob)
        else:
            kept += size
    return removed


def timing_precision() -> str:
    """The inference precision hint for latency: ``bf16`` where the CPU computes it natively, else ``f32``."""
    return "bf16" if cpu_features().native_16bit else "f32"


class OpenVinoBackend(RunsThroughRunners):
    """OpenVINO's CPU plugin; see the module docstring."""

    name = "openvino"
    device = "cpu"

    def __init__(self, threads: int | None = None, precision: str | None = None, cache_dir: Path | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):  # fmt: skip
        import openvino

        from trtmix.runtime.onnxruntime import default_threads

        self.threads = threads or default_threads()
        self.precision = precision or timing_precision()
        self.cache_dir, self.cache_bytes = cache_dir, cache_bytes
        self.version = openvino.__version__.split("-")[0]
        self.exact_int8 = cpu_features().int8_exact

    def at_precision(self, precision: str) -> OpenVinoBackend:
        """The same backend timing at ``precision``: the FP32 reference is timed at ``f32``, or it is not FP32."""
        return OpenVinoBackend(self.threads, precision, self.cache_dir, self.cache_bytes)

    def with_threads(self, threads: int) -> OpenVinoBackend:
        """The same backend on ``threads`` threads (a one-core Ray task scores with one)."""
        return OpenVinoBackend(threads, self.precision, self.cache_dir, self.cache_bytes)

    def options(self) -> dict[str, object]:
        """What changes a timing: threads and the inference precision (part of every artifact key)."""
        return {"threads": self.threads, "precision": self.precision}

    def config(self, precision: str, profile: bool = False) -> dict[str, Any]:
        """The compile configuration for ``precision``.

        ``profile`` turns on ``PERF_COUNT`` and leaves the model cache out: a model imported from the cache keeps
        only each layer's own name in ``originalLayersNames`` (measured, OpenVINO 2026.4), which would hide the
        ONNX nodes fused into it from the verification.
        """
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads,
                                  "INFERENCE_PRECISION_HINT": precision}  # fmt: skip
        if profile:
            config["PERF_COUNT"] = True
        if self.cache_dir is not None and not profile:
            config["CACHE_DIR"] = str(self.cache_dir)
        return config

    def compile(self, path: Path, precision: str, profile: bool = False) -> Any:
        """``path`` compiled for the CPU, or a BackendError carrying OpenVINO's own message."""
        import openvino

        try:
            compiled = openvino.Core().compile_model(str(path), "CPU", self.config(precision, profile))
        except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own types
            message = _message(err)
            nodes = implicated_nodes(path, message)
            raise BackendError(f"OpenVINO cannot compile {path.name}: {message}{nodes}") from err
        if self.cache_dir is not None and not profile:
            prune_cache(self.cache_dir, self.cache_bytes)
        return compiled

    def build(self, onnx_path: Path, artifact_path: Path) -> Path:
        """Check that OpenVINO compiles ``onnx_path``, then keep the ONNX as the artifact (atomically)."""
        self.compile(onnx_path, self.precision)
        return copy_onnx(onnx_path, artifact_path)

    def open(self, artifact: Path) -> OpenVinoRunner:
        """A runner on ``artifact``."""
        return OpenVinoRunner(self, artifact)

    def engine_layers(
        self, artifact: Path, feeds: dict[str, np.ndarray] | None = None, runs: int = 3
    ) -> list[EngineLayer]:
        """The layers OpenVINO runs at the timing precision, with their precision, kernel and (given feeds) time.

        Each layer's time is its median over ``runs`` profiled inferences (after one warm-up).
        """
        compiled = self.compile(artifact, self.precision, profile=True)
        times: dict[str, float] = {}
        if feeds is not None:
            request = compiled.create_infer_request()
            request.infer(feeds)
            samples: dict[str, list[float]] = {}
            for _ in range(max(runs, 1)):
                request.infer(feeds)
                for info in request.get_profiling_info():
                    samples.setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1e3)
            times = {name: float(np.median(values)) for name, values in samples.items()}
        return [_layer(op, times) for op in compiled.get_runtime_model().get_ordered_ops() if _computes(op)]

    def layer_profile(self, artifact: Path, feeds: dict[str, np.ndarray], runs: int = 10) -> list[EngineLayer]:
        """Every layer with its median time over ``runs`` (``trtmix.runtime.attribution`` splits it among units)."""
        return self.engine_layers(artifact, feeds, runs)


class OpenVinoRunner:
    """One artifact: ``infer`` at f32 (or on ONNX Runtime without VNNI), ``time`` at the timing precision."""

    def __init__(self, backend: OpenVinoBackend, artifact: Path) -> None:
        self.backend, self.artifact = backend, artifact
        self._accuracy: Any = None
        self._timing: Any = None

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in graph order, with the float16 graph's semantics (see the module docstring)."""
        if not self.backend.exact_int8:
            if self._accuracy is None:
                from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

                self._accuracy = OnnxRuntimeRunner(self.artifact, self.backend.threads, optimize=True)
            return list(self._accuracy.infer(feeds))
        if self._accuracy is None:
            self._accuracy = self.backend.compile(self.artifact, "f32").create_infer_request()
        return _outputs(self._accuracy, feeds)

    def time(
        self, feeds: dict[str, np.ndarray], runs: int, warmup: int, policy: TimingPolicy | None = None
    ) -> LatencyStats:
        """Latency of synchronous inferences at the timing precision (``runs`` after ``warmup``, or ``policy``)."""
        if self._timing is None:
            self._timing = self.backend.compile(self.artifact, self.backend.precision).create_infer_request()
        request = self._timing
        bound = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        accuracy = "openvino f32" if self.backend.exact_int8 else "onnxruntime (no VNNI: OpenVINO int8 may saturate)"
        return timed_stats(
            lambda: request.infer(bound, share_inputs=True), policy_for(runs, warmup, policy),
            threads=self.backend.threads, provider="OpenVINO CPU", device=cpu_name(),
            versions={"openvino": self.backend.version},
            settings={"performance_hint": "LATENCY", "inference_precision": self.backend.precision,
                      "accuracy_engine": accuracy},
        )  # fmt: skip

    def close(self) -> None:
        """Release the compiled models."""
        self._accuracy = self._timing = None

    def __enter__(self) -> OpenVinoRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _outputs(request: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        result = request.infer(feeds)
    except Exception as err:  # noqa: BLE001
        raise BackendError(f"OpenVINO failed to run the model: {_message(err)}") from err
    return [np.array(result[output]) for output in request.model_outputs]


def _computes(op: Any) -> bool:
    return str(op.get_rt_info()["layerType"].astype(str)) not in SKIPPED_LAYER_TYPES


def _layer(op: Any, times: dict[str, float]) -> EngineLayer:
    """An ``EngineLayer`` from a runtime-model op: its ONNX nodes, precision, kernel and time."""
    info = op.get_rt_info()
    runtime = str(info["runtimePrecision"].astype(str))
    precision = "int8" if runtime in INT8_PRECISIONS else PRECISION_NAMES.get(runtime, runtime)
    nodes = tuple(n for n in str(info["originalLayersNames"].astype(str)).split(",") if n)
    name = op.get_friendly_name()
    return EngineLayer(name, str(info["layerType"].astype(str)), nodes, precision,
                       primitive=str(info["primitiveType"].astype(str)), ms=times.get(name))  # fmt: skip


def _message(err: Exception) -> str:
    """OpenVINO's message without its C++ source locations (what it says about the graph, nodes included, is kept)."""
    lines = [line.strip(" -") for line in str(err).splitlines()]
    kept = [line for line in lines if line and not re.match(r"(Exception from|Check '.*' failed at) src/", line)]
    return " ".join(kept[:6]) or type(err).__name__
