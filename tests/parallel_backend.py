"""Ray tests' helpers: a real OpenVINO backend whose latency is scripted (and a variant that says it is a GPU
backend and stamps where its work ran), a scoring job whose worker dies, and a sleeping job.

Ray workers import it by name (the tests put the repository on their PYTHONPATH), so it lives in its own module.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from trtmix.runtime.base import LatencyStats
from trtmix.runtime.openvino import OpenVinoBackend
from trtmix.runtime.timing import TimingPolicy
from trtmix.sensitivity.measured import PlanScorer, ScoringJob


class ScriptedLatency(OpenVinoBackend):
    """Builds and runs with OpenVINO; ``time`` says 1 ms less 0.1 ms per QuantizeLinear in the graph.

    ``die_in`` names a folder: the first build of each plan in a worker process kills that process (a lost worker);
    with ``always_die`` every build does.
    """

    def __init__(self, threads: int | None = None, die_in: Path | None = None, always_die: bool = False) -> None:
        super().__init__(threads=threads)
        self.die_in, self.always_die = die_in, always_die
        self.driver_pid = os.getpid()  # a build in any other process is a worker's

    def build(self, onnx_path: Path, artifact_path: Path) -> Path:
        """OpenVINO's build, after dying once per plan in a Ray worker when asked to."""
        if self.die_in is not None and os.getpid() != self.driver_pid:
            marker = self.die_in / onnx_path.name.split(".")[0]
            if self.always_die or not marker.exists():
                marker.touch()
                os._exit(1)
        return super().build(onnx_path, artifact_path)

    def at_precision(self, precision: str) -> ScriptedLatency:
        """The same scripted timer: the FP32 graph is timed by script too, like every probe."""
        return self

    def time(self, artifact: Path, feeds: dict[str, np.ndarray], runs: int = 20, warmup: int = 3,
             policy: TimingPolicy | None = None) -> LatencyStats:  # fmt: skip
        """The scripted latency of ``artifact``."""
        quantizers = sum(node.op_type == "QuantizeLinear" for node in onnx.load(str(artifact)).graph.node)
        latency = 1.0 - 0.1 * quantizers
        return LatencyStats.from_samples([latency] * 5, warmup=0, threads=self.threads, provider="scripted",
                                         device="scripted")  # fmt: skip


class OnDeclaredGpus(ScriptedLatency):
    """``ScriptedLatency`` as a GPU backend would be placed (``device = "gpu"``), on the GPUs a test declares to Ray.

    Every build and timing leaves a stamp in ``stamps``: its kind, process, visible GPUs (``CUDA_VISIBLE_DEVICES``, as
    Ray sets it) and start and end.  Timing waits ``timing_seconds`` and a build ``build_seconds``, as a real timing
    or a TensorRT build (which times kernel tactics) would hold its GPU.
    """

    device = "gpu"

    def __init__(self, stamps: Path, timing_seconds: float = 0.3, build_seconds: float = 0.3) -> None:
        super().__init__()
        self.stamps, self.timing_seconds, self.build_seconds = stamps, timing_seconds, build_seconds

    def build(self, onnx_path: Path, artifact_path: Path) -> Path:
        """OpenVINO's build, after holding the device for ``build_seconds``; stamped."""
        start = time.monotonic()
        time.sleep(self.build_seconds)
        built = super().build(onnx_path, artifact_path)
        self._stamp("build", start)
        return built

    def time(self, artifact: Path, feeds: dict[str, np.ndarray], runs: int = 20, warmup: int = 3,
             policy: TimingPolicy | None = None) -> LatencyStats:  # fmt: skip
        """The scripted latency, after holding the device for ``timing_seconds``; stamped."""
        start = time.monotonic()
        time.sleep(self.timing_seconds)
        stats = super().time(artifact, feeds, runs, warmup, policy)
        self._stamp("time", start)
        return stats

    def _stamp(self, kind: str, start: float) -> None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        stamp = {"kind": kind, "pid": os.getpid(), "gpus": visible.split(",") if visible else [], "start": start,
                 "end": time.monotonic()}  # fmt: skip
        (self.stamps / f"{uuid.uuid4().hex}.json").write_text(json.dumps(stamp))


@dataclass
class DyingScoringJob(ScoringJob):
    """A ``ScoringJob`` whose scorer kills its Ray worker: the first one built in any worker, or every one.

    Each death leaves a marker file in ``die_in``, so a test counts them.
    """

    die_in: Path | None = None
    always_die: bool = False
    driver_pid: int = field(default_factory=os.getpid)

    def scorer(self, threads: int | None = None) -> PlanScorer:
        """The real scorer, after killing this worker process when asked to (never on the driver)."""
        if self.die_in is not None and os.getpid() != self.driver_pid:
            marker = self.die_in / f"share-{len(list(self.die_in.iterdir()))}"
            if self.always_die or not list(self.die_in.iterdir()):
                marker.touch()
                os._exit(1)
        return super().scorer(threads)


def stamped(seconds: float) -> tuple[str | None, float, float, str | None]:
    """A job that sleeps: where it ran, when it started and ended (the machine's monotonic clock), its visible GPUs."""
    from trtmix.parallel.cluster import current_node

    start = time.monotonic()
    time.sleep(seconds)
    return current_node(), start, time.monotonic(), os.environ.get("CUDA_VISIBLE_DEVICES")
