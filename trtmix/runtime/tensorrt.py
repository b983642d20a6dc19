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
from collections.abc import Callable
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
    """

    timing_cache: Path | None = None
    workspace_mb: int | None = None
    optimization_level: int | None = None
    profiles: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    cuda_graph: bool = True


class TensorRTBackend:
    """Builds and times TensorRT engines; see the module docstring."""

    name = "tensorrt"

    def __init__(self, settings: BuildSettings | None = None) -> None:
        require_tensorrt()
        import tensorrt as trt

        if not hasattr(trt, "ProfilingVerbosity") or not hasattr(trt.IExecutionContext, "execute_async_v3"):
            raise BackendUnavailableError(
                "This TensorRT is too old.", expected="TensorRT 10 or newer", fix=INSTALL_HINT
            )
        self.settings = settings or BuildSettings()
        self.version = str(getattr(trt, "__version__", "unknown"))

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

    def time(self, artifact: Path, feeds: dict[str, np.ndarray], runs: int = 100, warmup: int = 10) -> LatencyStats:
        """CUDA-event latency of ``runs`` executions after ``warmup`` (see the module docstring)."""
        with self.open(artifact) as runner:
            return runner.time(feeds, runs, warmup)

    def engine_layers(self, artifact: Path, feeds: dict[str, np.ndarray] | None = None) -> list[EngineLayer]:
        """The engine's layers with the ONNX nodes fused into each and its input precision (inspector JSON)."""
        return engine_layers(self.engine_information(artifact))

    def engine_information(self, artifact: Path) -> dict[str, Any]:
        """The engine inspector's JSON (``Layers`` with names, types and tensor formats) as a dict."""
        import tensorrt as trt

        inspector = _deserialize(artifact).create_engine_inspector()
        information: dict[str, Any] = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        return information


class TensorRTRunner:
    """One engine file: infer, time (CUDA events), close.  Each call sets up its own context for the feeds' shapes."""

    def __init__(self, artifact: Path, cuda_graph: bool = True) -> None:
        self.artifact, self.cuda_graph = artifact, cuda_graph

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs of one execution, copied back to the host."""
        with _EngineSession(self.artifact, feeds) as session:
            session.launch()
            return session.outputs()

    def time(self, feeds: dict[str, np.ndarray], runs: int = 100, warmup: int = 10) -> LatencyStats:
        """CUDA-event latency of ``runs`` executions after ``warmup`` (see the module docstring)."""
        import tensorrt as trt
        import torch

        if runs < 1:
            raise BackendError(f"--runs must be at least 1 (got {runs}).")
        with _EngineSession(self.artifact, feeds) as session:
            replay = session.capture_graph() if self.cuda_graph else None
            execute = replay or session.launch
            for _ in range(warmup):
                execute()
            samples = []
            for _ in range(runs):
                start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                start.record(session.stream)
                execute()
                end.record(session.stream)
                end.synchronize()
                samples.append(float(start.elapsed_time(end)))
        return LatencyStats.from_samples(
            samples,
            warmup=warmup,
            threads=None,
            provider="TensorRT" + (" + CUDA graph" if replay else ""),
            device=f"GPU: {torch.cuda.get_device_name()}",
            versions={"tensorrt": str(getattr(trt, "__version__", "?")), "torch": torch.__version__},
        )

    def close(self) -> None:
        """Nothing is held between calls."""

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
                if name not in feeds:
                    raise BackendError(
                        f"The engine needs input {name!r}, which the feeds lack.", expected=str(sorted(feeds))
                    )
                self.context.set_input_shape(name, tuple(feeds[name].shape))
                self.buffers[name] = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
        for name in names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))  # type: ignore[no-untyped-call]
                dims = self.context.get_tensor_shape(name)
                shape = tuple(int(dims[i]) for i in range(len(dims)))
                torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
                self.buffers[name] = torch.empty(shape, dtype=torch_dtype, device="cuda")
                self.output_names.append(name)
        for name, tensor in self.buffers.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        torch.cuda.synchronize()

    def launch(self) -> None:
        """Enqueue one execution on the session's stream and wait for it."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError("TensorRT execute_async_v3 failed.")
        self.stream.synchronize()

    def capture_graph(self) -> Callable[[], None] | None:
        """A function replaying a captured CUDA graph of one execution, or None if capture is not possible."""
        import torch

        self.launch()  # TensorRT documents one launch before capture, to flush deferred shape updates
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
        except RuntimeError as err:
            LOG.warning("CUDA graph capture failed (%s); timing plain launches", err)
            return None

        def replay() -> None:
            graph.replay()
            self.stream.synchronize()

        return replay

    def outputs(self) -> list[np.ndarray]:
        """The output buffers copied to the host, in engine order."""
        return [self.buffers[name].cpu().numpy() for name in self.output_names]

    def __enter__(self) -> _EngineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.buffers.clear()
