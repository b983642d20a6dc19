"""The ONNX Runtime backend: the embedded engine, and the oracle every test compares against.

``build`` runs ORT's full graph optimisation once and saves the optimised model, so what is timed is what the
report's kernel list shows (QLinearConv, MatMulIntegerToFloat, ...).  On graphs with Q/DQ, ORT's MatMulAddFusion is
disabled: it rewrites 3-D MatMul+bias into Reshape→Gemm→Reshape before the QDQ fusions run, and then a third of
MiniLM's INT8 MatMuls stayed float (measured: all-INT8 MiniLM 190 ms with it, 117 ms without; FP32 185 ms).
On graphs whose Q/DQ scales are float16 (the ``tensorrt`` flavour), ORT's WeightBiasQuantization is disabled too: it
rewrites conv biases wrongly there (measured: EfficientNet-Lite0 with its first two units INT8 went from 100% to 0%
top-1 agreement; with the rewrite disabled, or no optimisation at all, it stays at 100%).
Every session trtmix opens comes from ``ort_session``; a runner keeps one open for many inferences.  Timing uses a
fixed intra-op thread count and inputs allocated once; ``time.perf_counter`` brackets each synchronous ``run``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from trtmix.errors import BackendError
from trtmix.ir.graph import has_qdq, implicated_nodes
from trtmix.ir.large import THRESHOLD, hollow, is_large, is_placeholder, written
from trtmix.ir.store import save_shared
from trtmix.runtime.base import LatencyStats, RunsThroughRunners, cpu_name, policy_for, timed_stats
from trtmix.runtime.engine_report import EngineLayer
from trtmix.runtime.timing import TimingPolicy

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


# Initializer types ONNX Runtime takes from numpy arrays as they are.
NUMPY_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                         onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                         onnx.TensorProto.BOOL})  # fmt: skip


def _weightless(
    model: onnx.ModelProto, options: Any, weights: list[object], extra_outputs: Sequence[onnx.ValueInfoProto] = ()
) -> bytes:
    """``model``'s hollow view for ORT, its weights handed over as arrays that ORT reads in place.

    Serializing the whole model held it twice more (the bytes, and ORT's parse of them), and cannot pass 2 GiB;
    the arrays are one copy, which ORT keeps instead of its own.  ``weights`` receives them: they must outlive the
    session.
    """
    import onnxruntime as ort

    light = hollow(model)
    light.graph.output.extend(extra_outputs)
    originals = {tensor.name: tensor for tensor in model.graph.initializer}
    names, values = [], []
    for tensor in light.graph.initializer:
        if not is_placeholder(tensor):
            continue
        if tensor.data_type not in NUMPY_TYPES:
            tensor.CopyFrom(originals[tensor.name])  # a type numpy cannot hold for ORT travels inline
            continue
        array = np.ascontiguousarray(numpy_helper.to_array(originals[tensor.name]))
        names.append(tensor.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(array))
        weights.append(array)
    if names:
        options.add_external_initializers(names, values)
    weights.extend(values)
    return light.SerializeToString()


def default_threads() -> int:
    """Intra-op threads: all cores this process may use (2 on the project's machines)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ort_session(
    model: Path | bytes | onnx.ModelProto,
    threads: int | None = None,
    optimize: bool = True,
    optimized_path: Path | None = None,
    profile_prefix: Path | None = None,
    extra_outputs: Sequence[onnx.ValueInfoProto] = (),
    optimized_weights: str | None = None,
):  # type: ignore[no-untyped-def]
    """The one way trtmix opens an ONNX Runtime session: CPU provider, fixed threads, the rewrites it must not run.

    Export checks, calibration, measured orderings, the float reference and the backend all come here, so every
    session runs with the same options.  ``optimized_path`` saves the optimised graph (what ``build`` ships);
    ``profile_prefix`` turns on ORT's per-node profiler, writing its JSON under that prefix.  ``extra_outputs``
    (an in-memory model only) are more graph outputs, for calibration to read intermediate tensors without a copy of
    the model.  ``optimized_weights`` names a file beside ``optimized_path`` for the optimised model's weights.
    """
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto) and optimized_path is not None and is_large(model):
        with written(model) as path:  # ORT saves an optimised model over 2 GiB only from a file
            return ort_session(path, threads, optimize, optimized_path, profile_prefix)
    graph = model if isinstance(model, onnx.ModelProto) else _load_graph(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if optimized_weights is not None:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", optimized_weights)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                         str(THRESHOLD))  # fmt: skip
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    weights: list[object] = []
    source: str | bytes = str(model) if isinstance(model, Path) else model  # type: ignore[assignment]
    if isinstance(model, onnx.ModelProto):  # the saved optimised model must hold its weights: whole, then
        source = (model.SerializeToString() if optimized_path is not None
                  else _weightless(model, options, weights, extra_outputs))  # fmt: skip
    disabled = disabled_optimizers(graph) if optimize else []
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=disabled)  # fmt: skip
        session.trtmix_weights = weights  # the arrays ORT reads in place live as long as the session
        return session
    except Exception as err:  # noqa: BLE001 - ORT raises its own untyped errors
        raise BackendError(f"ONNX Runtime cannot load the model: {_first_line(err)}") from err


class OnnxRuntimeRunner:
    """One session on one model, opened once for many inferences (Polygraphy's runner idea): infer, time, close."""

    def __init__(self, model: Path | bytes | onnx.ModelProto, threads: int | None = None, optimize: bool = False):
        self.threads = threads or default_threads()
        self._session = ort_session(model, self.threads, optimize=optimize)

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The model's outputs on ``feeds``, in graph order."""
        try:
            return [np.asarray(output) for output in self._session.run(None, feeds)]
        except Exception as err:  # noqa: BLE001
            raise BackendError(f"ONNX Runtime failed to run the model: {_first_line(err)}") from err

    def time(
        self, feeds: dict[str, np.ndarray], runs: int, warmup: int, policy: TimingPolicy | None = None
    ) -> LatencyStats:
        """Median latency of synchronous runs, inputs allocated once (``runs`` after ``warmup``, or ``policy``)."""
        import onnxruntime as ort

        bound = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        return timed_stats(
            lambda: self._session.run(None, bound),
            policy_for(runs, warmup, policy),
            threads=self.threads,
            provider="CPUExecutionProvider",
            device=cpu_name(),
            versions={"onnxruntime": ort.__version__, "onnx": onnx.__version__},
        )

    def close(self) -> None:
        """Release the session."""
        self._session = None

    def __enter__(self) -> OnnxRuntimeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OnnxRuntimeBackend(RunsThroughRunners):
    """ONNX Runtime on the CPU execution provider."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, threads: int | None = None) -> None:
        import onnxruntime

        self.threads = threads or default_threads()
        self.version = onnxruntime.__version__

    def with_threads(self, threads: int) -> OnnxRuntimeBackend:
        """The same backend on ``threads`` threads (a one-core Ray task scores with one)."""
        return OnnxRuntimeBackend(threads)

    def options(self) -> dict[str, object]:
        """What changes a built artifact or its timing: part of every artifact key."""
        return {"threads": self.threads}

    def build(self, onnx_path: Path, artifact_path: Path) -> Path:
        """Optimise with ORT's full graph optimisation and save the optimised model, its weights in the job's store.

        ORT writes the optimised weights to a scratch file beside the artifact; they then go to the tensor store of
        the artifact's folder (``trtmix.ir.store``), so the probes of a job share the weights their plans agree on
        instead of each artifact holding a full copy.  The artifact is the small graph that refers to them.
        """
        temp = artifact_path.with_name(f".{artifact_path.name}.tmp.onnx")
        weights = temp.with_name(f"{temp.name}.data")
        try:
            ort_session(onnx_path, self.threads, optimize=True, optimized_path=temp, optimized_weights=weights.name)
            save_shared(onnx.load(str(temp)), artifact_path)
        except BackendError as err:
            nodes = implicated_nodes(onnx_path, str(err))
            raise BackendError(f"ONNX Runtime failed to build {onnx_path}: {err}{nodes}") from err
        finally:
            for leftover in (temp, weights):
                leftover.unlink(missing_ok=True)
        return artifact_path

    def open(self, artifact: Path) -> OnnxRuntimeRunner:
        """A runner on the built artifact (already optimised, so no further optimisation is applied)."""
        return OnnxRuntimeRunner(artifact, self.threads, optimize=False)

    def layer_profile(self, artifact: Path, feeds: dict[str, np.ndarray], runs: int = 10) -> list[EngineLayer]:
        """Every node ORT ran, with its median kernel time over ``runs`` (from ORT's profiler, one warm-up)."""
        with tempfile.TemporaryDirectory(prefix="trtmix-ort-profile-") as folder:
            session = ort_session(artifact, self.threads, optimize=False, profile_prefix=Path(folder) / "profile")
            try:
                for _ in range(max(runs, 1) + 1):
                    session.run(None, feeds)
                events = json.loads(Path(session.end_profiling()).read_text())
            except Exception as err:  # noqa: BLE001 - ORT raises its own untyped errors
                raise BackendError(f"ONNX Runtime could not profile {artifact.name}: {_first_line(err)}") from err
        samples: dict[str, list[float]] = defaultdict(list)
        kinds: dict[str, str] = {}
        warmup_seen: set[str] = set()
        for event in events:
            name = str(event.get("name", ""))
            if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
                continue
            node = name[: -len("_kernel_time")]
            if node not in warmup_seen:  # the first run of every node is the warm-up
                warmup_seen.add(node)
                continue
            samples[node].append(float(event.get("dur", 0)) / 1e3)
            kinds[node] = str((event.get("args") or {}).get("op_name", ""))
        return [EngineLayer(node, kinds[node], (node,), "", ms=float(np.median(times)))
                for node, times in samples.items()]  # fmt: skip


def _load_graph(model: Path | bytes) -> onnx.ModelProto:
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(str(model), load_external_data=False)


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def kernel_counts(artifact: Path) -> Counter[str]:
    """How many nodes of each op type the optimised model runs (QLinearConv, MatMulIntegerToFloat, ...)."""
    return Counter(node.op_type for node in onnx.load(str(artifact)).graph.node)
