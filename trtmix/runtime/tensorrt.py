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
  ``EngineBytesFromNetwork``; the engine is written atomically.  TF32 is off whenever the graph has a conv or
  matmul computing in float32 (a unit planned FP32 must run FP32, and the inspector would still say Float).
* Device identity: an engine and a timing cache are valid only on the GPU model and TensorRT version that made
  them.  The GPU's name, compute capability, CUDA and TensorRT versions are in ``options()`` (so in every artifact
  key), name the timing cache file, and are recorded beside each engine; an engine recorded for another device is
  refused with both named before TensorRT deserializes it.
* Plugins: the libraries in ``BuildSettings.plugins`` are loaded (a library that does not load is named) and
  ``init_libnvinfer_plugins`` registers TensorRT's own before every build and deserialization, as Polygraphy's
  ``EngineFromBytes`` does: each Ray task is a fresh process.
* Latency: deserialize, one execution context, device buffers allocated once, tensor addresses set once, warm-up,
  then CUDA events around ``execute_async_v3`` on a dedicated stream (optionally replayed from a captured CUDA
  graph); inputs are copied before the timed region and nothing crosses PCIe inside it.
* CUDA binding: ``torch.cuda`` (streams, events, graphs, device tensors).  trtmix already depends on torch, and
  pycuda would add a compiled dependency that needs the CUDA toolkit at install time.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtmix.errors import BackendError, BackendUnavailableError
from trtmix.io import atomic_write_bytes, atomic_write_text
from trtmix.runtime.base import LatencyStats
from trtmix.runtime.engine_report import EngineLayer, engine_layers
from trtmix.runtime.trtexec import fp32_compute

if TYPE_CHECKING:
    import onnx
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
        tf32: allow TF32 in graphs with no conv or matmul computing in float32 (there it changes nothing); a graph
            with one (a unit planned FP32, the FP32 baseline) is always built without TF32, so FP32 means FP32.
            Polygraphy's ``CreateConfig`` clears TF32 unless asked, TensorRT and trtexec allow it by default.
        plugins: plugin libraries to load before building or deserializing (Polygraphy's ``LoadPlugins``).
    """

    timing_cache: Path | None = None
    workspace_mb: int | None = None
    optimization_level: int | None = None
    profiles: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    cuda_graph: bool = True
    tf32: bool = True
    plugins: tuple[str, ...] = ()


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
        register_plugins(settings.plugins)
        profiles = None
        if settings.profiles:
            profile = Profile()
            for name, (low, optimum, high) in settings.profiles.items():
                profile.add(name, min=low, opt=optimum, max=high)
            profiles = [profile]
        identity = device_identity()
        cache = device_cache(settings.timing_cache, identity) if settings.timing_cache else None
        workspace = {trt.MemoryPoolType.WORKSPACE: settings.workspace_mb << 20} if settings.workspace_mb else None
        config = CreateConfig(
            profiles=profiles,
            load_timing_cache=str(cache) if cache is not None and cache.is_file() else None,
            profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
            memory_pool_limits=workspace,
            builder_optimization_level=settings.optimization_level,
            tf32=self._tf32(onnx_path),
        )
        network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
        try:
            engine = EngineBytesFromNetwork(network, config, save_timing_cache=str(cache) if cache else None)()
        except Exception as err:  # noqa: BLE001 - TensorRT and Polygraphy raise many types
            raise BackendError(f"TensorRT could not build {onnx_path}: {err}") from err
        atomic_write_bytes(artifact_path, bytes(engine))
        atomic_write_text(identity_path(artifact_path), json.dumps(identity, sort_keys=True))
        return artifact_path

    def _tf32(self, onnx_path: Path) -> bool:
        """Whether this graph may use TF32: only when allowed and no conv or matmul in it computes in float32."""
        if not self.settings.tf32:
            return False
        fp32 = fp32_compute(onnx_path)
        if fp32:
            LOG.info("TF32 off for %s: %d conv/matmul nodes compute in FP32 (%s)", onnx_path.name, len(fp32), fp32[0])
        return not fp32

    def fits(self, artifact: Path) -> bool:
        """Whether an engine on disk was built for this process's GPU and TensorRT (the builder rebuilds it if not).

        The artifact key names the device of the process that computed it; an engine a Ray worker built on another
        GPU model of a mixed cluster, or one copied in, is caught here by its record, before anything reads it.
        """
        return not foreign_identity(artifact, device_identity())

    def options(self) -> dict[str, object]:
        """What changes an engine or its timing: the build settings (not the timing cache's path) and the device.

        Engines and timing caches are per GPU model and TensorRT version, so the key of every artifact names them:
        a moved folder or a mixed cluster never deserializes an engine built for another GPU.
        """
        settings = asdict(self.settings)
        settings.pop("timing_cache")
        return {**settings, "device": device_identity()}

    def cover_feeds(self, model: onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, Any]:
        """Profiles for the dynamic inputs of ``model`` that ``--trt-shapes`` left out, from the recipe's ``feeds``.

        Without a profile, Polygraphy gives every dynamic dimension 1, so any feed of batch 2 fails.  The feeds set
        min (smallest), opt (the first feed: the one probes are timed on) and max (largest); this is logged with the
        ``--trt-shapes`` line that pins them.  Returns every profile, for the trtexec lines.
        """
        from trtmix.data.recipes import model_input_specs

        inputs = {name: tuple(d if isinstance(d, int) else -1 for d in shape)
                  for name, (_, shape) in model_input_specs(model).items()}  # fmt: skip
        added = feed_profiles(inputs, list(feeds), self.settings.profiles)
        if added:
            LOG.warning("no --trt-shapes for dynamic inputs %s: optimisation profiles taken from the recipe's feeds "
                        "(pin them with %s)", ", ".join(added), trt_shapes_flag(added))  # fmt: skip
            self.settings = replace(self.settings, profiles={**self.settings.profiles, **added})
        return dict(self.settings.profiles)

    def open(self, artifact: Path) -> TensorRTRunner:
        """A runner on the engine file ``artifact``."""
        return TensorRTRunner(artifact, self.settings.cuda_graph, self.settings.plugins)

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

        with _EngineSession(artifact, feeds, self.settings.plugins) as session:
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

        engine = _deserialize(artifact, self.settings.plugins)
        inspector = engine.create_engine_inspector()
        if feeds is not None:
            context = engine.create_execution_context()
            for name, value in feeds.items():
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    if not context.set_input_shape(name, tuple(value.shape)):
                        raise outside_profile(engine, name, tuple(value.shape))
            inspector.execution_context = context
        information: dict[str, Any] = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        return information


class TensorRTRunner:
    """One engine file: infer, time (CUDA events), close.  Each call sets up its own context for the feeds' shapes."""

    def __init__(self, artifact: Path, cuda_graph: bool = True, plugins: tuple[str, ...] = ()) -> None:
        self.artifact, self.cuda_graph, self.plugins = artifact, cuda_graph, plugins

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs of one execution, copied back to the host."""
        with _EngineSession(self.artifact, feeds, self.plugins) as session:
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

        with _EngineSession(self.artifact, feeds, self.plugins) as session:
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


def device_identity() -> dict[str, str]:
    """What an engine and a timing cache are tied to: the GPU model, its compute capability, CUDA and TensorRT."""
    import tensorrt as trt
    import torch

    gpu, capability = "no CUDA device", "none"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        gpu, capability = str(torch.cuda.get_device_name()), f"{major}.{minor}"
    return {"gpu": gpu, "compute_capability": capability, "cuda": str(torch.version.cuda),
            "tensorrt": str(getattr(trt, "__version__", "unknown"))}  # fmt: skip


ENGINE_IDENTITY = ("gpu", "compute_capability", "tensorrt")  # what TensorRT refuses an engine over
# TensorRT's words for an engine from another device or version (NVIDIA/TensorRT issues #564, #2176)
MISMATCH_WORDS = ("please rebuild", "incompatible", "not compatible with this version")


def device_cache(cache: Path, identity: dict[str, str]) -> Path:
    """The timing cache file of this device: ``timing.cache`` becomes ``timing.<device hash>.cache``.

    Tactic timings are measured on one GPU model with one TensorRT: a cache shared by a mixed cluster would hand one
    GPU's picks to another.
    """
    tag = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return cache.with_name(f"{cache.stem}.{tag}{cache.suffix}")


def identity_path(artifact: Path) -> Path:
    """Where the device an engine was built on is recorded, beside it."""
    return artifact.with_name(f"{artifact.name}.device.json")


def register_plugins(libraries: tuple[str, ...]) -> None:
    """Load the plugin ``libraries`` and register TensorRT's own plugins, before any build or deserialization.

    Polygraphy's ``EngineFromBytes`` calls ``init_libnvinfer_plugins`` first too; without it, an engine with plugin
    layers does not deserialize in a fresh process (every Ray task is one).  A library that does not load is named.
    """
    import tensorrt as trt

    for library in libraries:
        try:
            ctypes.CDLL(library)
        except OSError as err:
            raise BackendError(
                f"The TensorRT plugin library {library} did not load: {err}",
                fix="check the path, and that the library was built for this host's CUDA and TensorRT "
                "(`ldd` lists what it cannot find)",
            ) from err
    if not trt.init_libnvinfer_plugins(_ErrorLog.shared(), ""):
        LOG.warning("TensorRT's own plugins (libnvinfer_plugin) could not be registered: engines using them will not "
                    "deserialize")  # fmt: skip


@functools.cache
def _runtime() -> trt.Runtime:
    """One TensorRT runtime for the process, with the shared logger: both must outlive every engine."""
    import tensorrt as trt

    return trt.Runtime(_ErrorLog.shared())


class _ErrorLog:
    """A TensorRT logger that keeps the error messages (to explain a failed deserialization) and logs warnings.

    One per process: TensorRT keeps the logger it was given (runtime, plugin registry) for as long as it lives.
    """

    _shared: Any = None

    @classmethod
    def shared(cls) -> Any:
        """The process's logger."""
        if cls._shared is None:
            cls._shared = cls.create()
        return cls._shared

    @staticmethod
    def create() -> Any:
        """A fresh ``trt.ILogger`` whose ``errors`` lists every error message it received."""
        import tensorrt as trt

        class Log(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    LOG.warning("TensorRT: %s", msg)

        return Log()


class EngineMismatchError(BackendError):
    """An engine file built on another GPU model or TensorRT version than this process has."""


def foreign_identity(artifact: Path, current: dict[str, str]) -> list[str]:
    """The identity keys (GPU, compute capability, TensorRT) on which the engine's record differs from ``current``."""
    recorded_path = identity_path(artifact)
    if not recorded_path.is_file():
        return []
    recorded = json.loads(recorded_path.read_text())
    return [key for key in ENGINE_IDENTITY if recorded.get(key) != current.get(key)]


def check_engine_device(artifact: Path, current: dict[str, str]) -> None:
    """Refuse an engine recorded as built for another GPU model or TensorRT version, naming both."""
    differ = foreign_identity(artifact, current)
    if differ:
        recorded = json.loads(identity_path(artifact).read_text())
        built, here = (", ".join(f"{key} {ids.get(key)}" for key in differ) for ids in (recorded, current))
        raise EngineMismatchError(
            f"{artifact.name} was built for {built}; this process has {here}. A TensorRT engine runs only on the GPU "
            "model and TensorRT version it was built with.",
            fix="rebuild it here (trtmix's artifact keys name the GPU and TensorRT, so a job rebuilds by itself; "
            "delete a hand-copied engine and build it again)",
        )


def _deserialize(artifact: Path, plugins: tuple[str, ...] = ()) -> trt.ICudaEngine:
    """The engine in ``artifact``, or a clear error: another device or TensorRT version, or TensorRT's own words."""
    check_engine_device(artifact, device_identity())
    register_plugins(plugins)
    log = _ErrorLog.shared()
    log.errors.clear()
    engine: trt.ICudaEngine | None = _runtime().deserialize_cuda_engine(artifact.read_bytes())
    if engine is None:
        said = " ".join(log.errors) or "no message"
        if "could not find plugin" in said.lower():  # "getPluginCreator could not find plugin: X version: 1"
            raise BackendError(f"TensorRT could not deserialize {artifact.name}: a plugin it uses is not registered "
                               f"({said}).", fix="pass the plugin's library in BuildSettings.plugins")  # fmt: skip
        if any(words in said.lower() for words in MISMATCH_WORDS):
            raise EngineMismatchError(
                f"TensorRT refused {artifact.name}: it was built on another GPU or TensorRT version ({said}).",
                fix="rebuild it on this host (delete it; a trtmix job rebuilds what it needs)",
            )
        raise BackendError(f"TensorRT could not deserialize {artifact}: {said}",
                           fix="if the engine uses plugins, pass their libraries (BuildSettings.plugins)")  # fmt: skip
    return engine


def feed_profiles(inputs: dict[str, Shape], feeds: list[dict[str, np.ndarray]],
                  given: dict[str, tuple[Shape, Shape, Shape]]) -> dict[str, tuple[Shape, Shape, Shape]]:  # fmt: skip
    """(min, opt, max) of each dynamic input (a -1 in ``inputs``) without a ``given`` profile, from ``feeds``.

    min and max are taken per dimension over all feeds; opt is the first feed's shape (the one timed).
    """
    profiles = {}
    for name, shape in inputs.items():
        shapes = [tuple(int(d) for d in feed[name].shape) for feed in feeds if name in feed]
        if name in given or -1 not in shape or not shapes:
            continue
        low = tuple(min(dims) for dims in zip(*shapes, strict=True))
        high = tuple(max(dims) for dims in zip(*shapes, strict=True))
        profiles[name] = (low, shapes[0], high)
    return profiles


def trt_shapes_flag(profiles: dict[str, tuple[Shape, Shape, Shape]]) -> str:
    """The ``--trt-shapes`` flag that sets ``profiles``."""
    return "--trt-shapes " + " ".join(
        f"{name}:" + ":".join("x".join(map(str, dims)) for dims in triple) for name, triple in profiles.items()
    )


def outside_profile(engine: trt.ICudaEngine, name: str, shape: Shape) -> BackendError:
    """The error for a feed of ``name`` outside the engine's optimisation profile, with the flag that covers it.

    The suggested profile keeps the engine's opt shape and widens its min and max to take ``shape``.
    """
    try:
        low, optimum, high = (_shape(dims) for dims in engine.get_tensor_profile_shape(name, 0))
    except Exception:  # noqa: BLE001 - a static input has no profile; the feed's shape is then the whole profile
        low = optimum = high = shape
    if len(low) != len(shape):
        low = optimum = high = shape
    wider = (tuple(map(min, low, shape)), optimum, tuple(map(max, high, shape)))
    return BackendError(
        f"TensorRT refused shape {shape} for input {name!r}: outside the engine's optimisation profile "
        f"(min {low}, max {high}; a dynamic input without --trt-shapes or recipe feeds gets 1 for every dynamic "
        "dimension).",
        fix=f"rebuild with {trt_shapes_flag({name: wider})}",
    )


def _shape(dims: trt.Dims) -> Shape:
    """A TensorRT ``Dims`` as a tuple (``Dims`` indexes, but does not iterate, in the stubs)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def tensor_dtypes(trt_dtype: Any, name: str) -> tuple[np.dtype[Any], Any]:
    """The numpy and torch dtypes of an engine tensor; bfloat16 via ``ml_dtypes`` (``trt.nptype`` has none).

    TensorRT 10.13 and 11.1's ``nptype`` map only float32/16, int8/32/64, bool and uint8; any other type (fp8, int4,
    fp4) is a clear error naming the tensor.
    """
    import tensorrt as trt
    import torch

    if trt_dtype == trt.bfloat16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16), torch.bfloat16
    try:
        dtype = np.dtype(trt.nptype(trt_dtype))  # type: ignore[no-untyped-call]
    except TypeError as err:
        raise BackendError(f"Engine tensor {name!r} has type {trt_dtype}, which trtmix cannot feed or read.",
                           expected="float32, float16, bfloat16, int8, int32, int64, bool or uint8 graph inputs "
                           "and outputs", fix="keep that type inside the graph (Cast at its boundary)") from err
    return dtype, torch.from_numpy(np.empty(0, dtype)).dtype


def to_device(value: np.ndarray) -> torch.Tensor:
    """A host array on the GPU; bfloat16 travels as its 16 bits (torch cannot read ml_dtypes' bfloat16)."""
    import torch

    contiguous = np.ascontiguousarray(value)
    if contiguous.dtype.name == "bfloat16":
        return torch.from_numpy(contiguous.view(np.int16)).cuda().view(torch.bfloat16)
    return torch.from_numpy(contiguous).cuda()


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A device tensor on the host; bfloat16 comes back as ``ml_dtypes.bfloat16``."""
    import torch

    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return np.asarray(tensor.view(torch.int16).cpu().numpy()).view(ml_dtypes.bfloat16)
    return np.asarray(tensor.cpu().numpy())


class _EngineSession:
    """One deserialized engine with its context, stream and device buffers, set up once for many launches."""

    def __init__(self, artifact: Path, feeds: dict[str, np.ndarray], plugins: tuple[str, ...] = ()) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "The TensorRT backend needs a CUDA device; none is visible.", fix=INSTALL_HINT
            )
        self.engine = _deserialize(artifact, plugins)
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
                _, torch_dtype = tensor_dtypes(self.engine.get_tensor_dtype(name), name)
                shape = _shape(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"TensorRT cannot size output {name!r} ({shape}) for these input shapes.")
                self.buffers[name] = torch.empty(shape, dtype=torch_dtype, device="cuda")
                self.output_names.append(name)
        for name, tensor in self.buffers.items():
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise BackendError(f"TensorRT refused the device address of tensor {name!r}.")
        torch.cuda.synchronize()

    def _input(self, name: str, feeds: dict[str, np.ndarray]) -> torch.Tensor:
        """The feed for input ``name`` on the device, after checking its dtype and shape against the engine."""
        if name not in feeds:
            raise BackendError(f"The engine needs input {name!r}, which the feeds lack.", expected=str(sorted(feeds)))
        feed = feeds[name]
        expected, _ = tensor_dtypes(self.engine.get_tensor_dtype(name), name)
        if feed.dtype != expected:
            raise BackendError(f"Input {name!r} is {feed.dtype}; the engine takes {expected}.",
                               fix="feed the dtype the ONNX graph declares")  # fmt: skip
        if not self.context.set_input_shape(name, tuple(feed.shape)):
            raise outside_profile(self.engine, name, tuple(int(d) for d in feed.shape))
        return to_device(feed)

    def launch(self) -> bool:
        """Enqueue one execution on the session's stream (no wait); False when TensorRT refused it."""
        return bool(self.context.execute_async_v3(self.stream.cuda_stream))

    def outputs(self) -> list[np.ndarray]:
        """The output buffers copied to the host, in engine order."""
        return [to_host(self.buffers[name]) for name in self.output_names]

    def __enter__(self) -> _EngineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.buffers.clear()
