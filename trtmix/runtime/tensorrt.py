"""The TensorRT backend: strongly typed engine builds, CUDA-event latency, and the engine's real layer precisions.

The only module of trtmix that imports ``tensorrt``, inside functions, after checking it is the real library: the
``tensorrt-stubs`` package and PyPI's download placeholder both make ``import tensorrt`` succeed as an empty
namespace, so presence is tested with ``hasattr(tensorrt, "Builder")``.  Written from NVIDIA's documentation of the
TensorRT 10/11 Python API and Polygraphy; it cannot run on trtmix's own machines (no TensorRT there) and is checked
there by ``mypy --strict`` against ``tensorrt-stubs`` and by tests of everything around it.

* Build: Polygraphy's ``NetworkFromOnnxPath(strongly_typed=True)`` (precision comes from the graph's Q/DQ and
  dtypes; TensorRT 11 is strongly typed only, 10.x is asked to be), ``CreateConfig`` with a persistent timing
  cache, optimisation profiles for dynamic inputs, a workspace limit, the builder optimisation level and
  ``ProfilingVerbosity.DETAILED`` (so the engine inspector can report per-layer precisions), then
  ``EngineBytesFromNetwork``; the engine is written atomically.
* Latency: deserialize, one execution context, device buffers allocated once, tensor addresses set once, warm-up,
  then CUDA events around ``execute_async_v3`` on a dedicated stream (optionally replayed from a captured CUDA
  graph); inputs are copied before the timed region and nothing crosses PCIe inside it.
* CUDA binding: ``torch.cuda`` (streams, events, graphs, device tensors).  trtmix already depends on torch, and
  pycuda would add a compiled dependency that needs the CUDA toolkit at install time.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtmix.errors import BackendError, BackendUnavailableError
from trtmix.io import atomic_write_bytes
from trtmix.runtime.base import LatencyStats
from trtmix.runtime.engine_report import EngineLayer, engine_layers

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

    from trtmix.runtime.timing import TimingPolicy

LOG = logging.getLogger(__name__)
INSTALL_HINT = (
    "install it with `pip install 'trtmix[tensorrt]'` on a host with an NVIDIA GPU and driver; "
    "`--backend onnxruntime` works without it"
)
Shape = tuple[int, ...]


def require_tensorrt() -> None:
    """Check that the real ``tensorrt`` library is importable, or raise a clear error saying how to get it."""
    try:
        module = importlib.import_module("tensorrt")
    except ImportError as err:
        raise BackendUnavailableError("TensorRT is not installed.", fix=INSTALL_HINT) from err
    if not hasattr(module, "Builder"):
        raise BackendUnavailableError(
            "TensorRT is not usable here: `import tensorrt` finds only type stubs or a download placeholder.",
            fix=INSTALL_HINT,
        )


def tensorrt_available() -> bool:
    """True when a real TensorRT and a CUDA device are both present."""
    try:
        require_tensorrt()
    except BackendUnavailableError:
        return False
    import torch

    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class BuildSettings:
    """Engine build options.

    Attributes:
        timing_cache: file shared by all builds of a search (loaded if present, saved after each build).
        workspace_mb: workspace memory pool limit; None leaves TensorRT's default.
        optimization_level: builder optimisation level 0-5; None leaves the default (3).
        profiles: input name → (min, opt, max) shapes for dynamic inputs.
        cuda_graph: time by replaying a captured CUDA graph (falls back to plain launches if capture fails).
        tf32: allow TF32 for fp32 layers, as TensorRT and trtexec do by default (Polygraphy's ``CreateConfig``
            clears it unless asked, so the engine would differ from the one the printed trtexec line builds).
    """

    timing_cache: Path | None = None
    workspace_mb: int | None = None
    optimization_level: int | None = None
    profiles: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    cuda_graph: bool = True
    tf32: bool = True


class TensorRTBackend:
    """Builds and times TensorRT engines; see the module docstring."""

    name = "tensorrt"
    device = "gpu"

    def __init__(self, settings: BuildSettings | None = None) -> None:
        require_tensorrt()
        import tensorrt as trt

        self.version = str(getattr(trt, "__version__", "unknown"))
        check_version(self.version)
        self.settings = settings or BuildSettings()

    def build(self, onnx_path: Path, artifact_path: Path) -> Path:
        """Build a strongly typed engine from ``onnx_path`` and write it to ``artifact_path`` (atomically)."""
        import tensorrt as trt
        from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

        settings = self.settings
        profiles = None
        if settings.profiles:
            profile = Profile()
            for name, (low, optimum, high) in settings.profiles.items():
                profile.add(name, min=low, opt=optimum, max=high)
            profiles = [profile]
        cache = settings.timing_cache
        workspace = {trt.MemoryPoolType.WORKSPACE: settings.workspace_mb << 20} if settings.workspace_mb else None
        config = CreateConfig(
            profiles=profiles,
            load_timing_cache=str(cache) if cache is not None and cache.is_file() else None,
            profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
            memory_pool_limits=workspace,
            builder_optimization_level=settings.optimization_level,
            tf32=settings.tf32,
        )
        network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
        try:
            engine = EngineBytesFromNetwork(network, config, save_timing_cache=str(cache) if cache else None)()
        except Exception as err:  # noqa: BLE001 - TensorRT and Polygraphy raise many types
            raise BackendError(f"TensorRT could not build {onnx_path}: {err}") from err
        atomic_write_bytes(artifact_path, bytes(engine))
        return artifact_path

    def options(self) -> dict[str, object]:
        """The build settings that change an engine or its timing (the timing cache file does not): artifact keys."""
        settings = asdict(self.settings)
        settings.pop("timing_cache")
        return settings

    def open(self, artifact: Path) -> TensorRTRunner:
        """A runner on the engine file ``artifact``."""
        return TensorRTRunner(artifact, self.settings.cuda_graph)

    def run(self, artifact: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs of one execution, copied back to the host."""
        with self.open(artifact) as runner:
            return runner.infer(feeds)

    def time(
        self, artifact: Path, feeds: dict[str, np.ndarray], runs: int = 100, warmup: int = 10,
        policy: TimingPolicy | None = None,
    ) -> LatencyStats:  # fmt: skip
        """CUDA-event latency of ``runs`` executions after ``warmup`` (see the module docstring)."""
        with self.open(artifact) as runner:
            return runner.time(feeds, runs, warmup, policy)

    def engine_layers(self, artifact: Path, feeds: dict[str, np.ndarray] | None = None) -> list[EngineLayer]:
        """The engine's layers with the ONNX nodes fused into each and its input precision (inspector JSON)."""
        return engine_layers(self.engine_information(artifact, feeds))

    def layer_profile(self, artifact: Path, feeds: dict[str, np.ndarray], runs: int = 10) -> list[EngineLayer]:
        """Each layer's median time over ``runs`` executions (after one warm-up), from TensorRT's ``IProfiler``.

        ``enqueue_emits_profile`` is off, so each launch only records its CUDA events and ``report_to_profiler``
        turns them into layer times after the stream is synchronised (trtexec's ``--dumpProfile`` does the same).
        The ONNX nodes and precision of each layer come from the engine inspector (the engine is built with
        ``ProfilingVerbosity.DETAILED``, so the profiler's layer names are the inspector's).
        """
        import tensorrt as trt

        inspected = {layer.name: layer for layer in self.engine_layers(artifact, feeds)}
        samples: dict[str, list[float]] = {}

        class _LayerTimes(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                samples.setdefault(layer_name, []).append(ms)

        with _EngineSession(artifact, feeds) as session:
            session.context.enqueue_emits_profile = False
            session.context.profiler = _LayerTimes()
            for _ in range(max(runs, 1) + 1):
                _check_enqueued(session.launch())
                session.stream.synchronize()
                if not session.context.report_to_profiler():
                    raise BackendError("TensorRT did not report layer times (report_to_profiler failed).")
        return [_profiled_layer(name, times, inspected.get(name)) for name, times in samples.items()]

    def engine_information(self, artifact: Path, feeds: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The engine inspector's JSON (``Layers`` with names, types and tensor formats) as a dict.

        With ``feeds``, the inspector reads an execution context whose input shapes are the feeds': without one,
        a dynamic-shape engine reports no shape-dependent formats (``IEngineInspector::setExecutionContext``;
        Polygraphy's inspector sets it too).
        """
        import tensorrt as trt

        engine = _deserialize(artifact)
        inspector = engine.create_engine_inspector()
        if feeds is not None:
            context = engine.create_execution_context()
            for name, value in feeds.items():
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    context.set_input_shape(name, tuple(value.shape))
            inspector.execution_context = context
        information: dict[str, Any] = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        return information


class TensorRTRunner:
    """One engine file: infer, time (CUDA events), close.  Each call sets up its own context for the feeds' shapes."""

    def __init__(self, artifact: Path, cuda_graph: bool = True) -> None:
        self.artifact, self.cuda_graph = artifact, cuda_graph

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs of one execution, copied back to the host."""
        with _EngineSession(self.artifact, feeds) as session:
            _check_enqueued(session.launch())
            session.stream.synchronize()
            return session.outputs()

    def time(
        self, feeds: dict[str, np.ndarray], runs: int = 100, warmup: int = 10, policy: TimingPolicy | None = None
    ) -> LatencyStats:
        """CUDA-event latency of ``runs`` executions after ``warmup`` (``trtmix.runtime.cuda_timer``).

        GPU event timing does not drift like a shared CPU: a ``policy`` sets the run counts, with no adaptive loop.
        """
        import tensorrt as trt
        import torch

        from trtmix.runtime.cuda_timer import time_on_stream

        if policy is not None:
            runs, warmup = max(runs, policy.runs), policy.warmup

        with _EngineSession(self.artifact, feeds) as session:
            timing = time_on_stream(session.launch, session.stream, runs, warmup, self.cuda_graph)
        return LatencyStats.from_samples(
            timing.samples_ms,
            warmup=warmup,
            threads=None,
            provider="TensorRT" + (" + CUDA graph" if timing.cuda_graph else ""),
            device=f"GPU: {torch.cuda.get_device_name()}",
            versions={"tensorrt": str(getattr(trt, "__version__", "?")), "torch": torch.__version__},
            settings={"cuda_graph": str(timing.cuda_graph)},
        )

    def close(self) -> None:
        """Nothing is held between calls."""

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_version(version: str) -> None:
    """Refuse TensorRT before 10 (8.5-9.x pass a feature test and then fail inside Polygraphy)."""
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) < 10:
        raise BackendUnavailableError(
            f"TensorRT {version} is too old or unrecognised.", expected="TensorRT 10 or newer", fix=INSTALL_HINT
        )


def _check_enqueued(enqueued: bool) -> None:
    if not enqueued:
        raise BackendError("TensorRT execute_async_v3 failed.")


def _profiled_layer(name: str, times: list[float], inspected: EngineLayer | None) -> EngineLayer:
    """A profiled layer: the inspector's record of it (nodes, type, precision), its median time after warm-up."""
    kept = times[1:] or times
    if inspected is None:  # a layer the inspector left out (a reformat): its name still lists the nodes it serves
        return EngineLayer(name, "", tuple(n.strip() for n in name.split(" + ")), "", ms=float(np.median(kept)))
    return EngineLayer(inspected.name, inspected.kind, inspected.onnx_nodes, inspected.precision,
                       ms=float(np.median(kept)))  # fmt: skip


def _deserialize(artifact: Path) -> trt.ICudaEngine:
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine: trt.ICudaEngine | None = runtime.deserialize_cuda_engine(artifact.read_bytes())
    if engine is None:
        raise BackendError(f"TensorRT could not deserialize {artifact}.")
    return engine


class _EngineSession:
    """One deserialized engine with its context, stream and device buffers, set up once for many launches."""

    def __init__(self, artifact: Path, feeds: dict[str, np.ndarray]) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "The TensorRT backend needs a CUDA device; none is visible.", fix=INSTALL_HINT
            )
        self.engine = _deserialize(artifact)
        self.context: trt.IExecutionContext = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        self.buffers: dict[str, torch.Tensor] = {}
        self.output_names: list[str] = []
        self._bind(feeds)

    def _bind(self, feeds: dict[str, np.ndarray]) -> None:
        import tensorrt as trt
        import torch

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.buffers[name] = self._input(name, feeds)
        for name in names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))  # type: ignore[no-untyped-call]
                dims = self.context.get_tensor_shape(name)
                shape = tuple(int(dims[i]) for i in range(len(dims)))
                if any(d < 0 for d in shape):
                    raise BackendError(f"TensorRT cannot size output {name!r} ({shape}) for these input shapes.")
                torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
                self.buffers[name] = torch.empty(shape, dtype=torch_dtype, device="cuda")
                self.output_names.append(name)
        for name, tensor in self.buffers.items():
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise BackendError(f"TensorRT refused the device address of tensor {name!r}.")
        torch.cuda.synchronize()

    def _input(self, name: str, feeds: dict[str, np.ndarray]) -> torch.Tensor:
        """The feed for input ``name`` on the device, after checking its dtype and shape against the engine."""
        import tensorrt as trt
        import torch

        if name not in feeds:
            raise BackendError(f"The engine needs input {name!r}, which the feeds lack.", expected=str(sorted(feeds)))
        feed = feeds[name]
        expected = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))  # type: ignore[no-untyped-call]
        if feed.dtype != expected:
            raise BackendError(f"Input {name!r} is {feed.dtype}; the engine takes {expected}.",
                               fix="feed the dtype the ONNX graph declares")  # fmt: skip
        if not self.context.set_input_shape(name, tuple(feed.shape)):
            raise BackendError(
                f"TensorRT refused shape {tuple(feed.shape)} for input {name!r}: outside the engine's optimisation "
                "profile (a dynamic input without --trt-shapes gets a profile of 1 for every dynamic dimension).",
                fix=f"pass --trt-shapes {name}:MIN:OPT:MAX covering {'x'.join(map(str, feed.shape))}",
            )
        return torch.from_numpy(np.ascontiguousarray(feed)).cuda()

    def launch(self) -> bool:
        """Enqueue one execution on the session's stream (no wait); False when TensorRT refused it."""
        return bool(self.context.execute_async_v3(self.stream.cuda_stream))

    def outputs(self) -> list[np.ndarray]:
        """The output buffers copied to the host, in engine order."""
        return [self.buffers[name].cpu().numpy() for name in self.output_names]

    def __enter__(self) -> _EngineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.buffers.clear()
