"""A real OpenVINO backend whose latency is scripted, a scoring job whose worker dies, and a sleeping job: Ray tests.

Ray workers import it by name (the tests put the repository on their PYTHONPATH), so it lives in its own module.
"""

from __future__ import annotations

import os
import time
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

    def time(self, artifact: Path, feeds: dict[str, np.ndarray], runs: int = 20, warmup: int = 3,
             policy: TimingPolicy | None = None) -> LatencyStats:  # fmt: skip
        """The scripted latency of ``artifact``."""
        quantizers = sum(node.op_type == "QuantizeLinear" for node in onnx.load(str(artifact)).graph.node)
        latency = 1.0 - 0.1 * quantizers
        return LatencyStats.from_samples([latency] * 5, warmup=0, threads=self.threads, provider="scripted",
                                         device="scripted")  # fmt: skip


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


def stamped(seconds: float) -> tuple[str | None, float, float]:
    """A job that sleeps: where it ran, and when it started and ended (the machine's monotonic clock)."""
    from trtmix.parallel.cluster import current_node

    start = time.monotonic()
    time.sleep(seconds)
    return current_node(), start, time.monotonic()
