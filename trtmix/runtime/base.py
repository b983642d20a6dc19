"""What every engine backend offers: build an artifact from ONNX, run it, time it.

The algorithm core only sees this protocol, so the search never knows whether ONNX Runtime or TensorRT is behind it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from trtmix.runtime.timing import TimingPolicy


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one artifact, measured: milliseconds per inference of the given inputs.

    ``warmup`` runs were discarded before the ``runs`` timed ones.  ``versions`` names the runtime and library
    versions, ``device`` what ran it, ``settings`` the engine settings that shaped the number (precision hints).
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    runs: int
    warmup: int
    threads: int | None
    provider: str
    device: str
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    ci_low_ms: float | None = None  # the median's 95% confidence interval (order statistics)
    ci_high_ms: float | None = None
    load: dict[str, float] = field(default_factory=dict)  # load per core and CPU steal share while timing

    @classmethod
    def from_samples(cls, samples_ms: list[float], **context: Any) -> LatencyStats:
        """Summarise timed runs (at least one)."""
        from trtmix.runtime.timing import median_interval

        ordered = sorted(samples_ms)
        low, high = median_interval(ordered)
        context.setdefault("ci_low_ms", low)
        context.setdefault("ci_high_ms", high)
        return cls(
            median_ms=statistics.median(ordered),
            p90_ms=float(np.percentile(ordered, 90)),
            mean_ms=statistics.fmean(ordered),
            stdev_ms=statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
            min_ms=ordered[0],
            runs=len(ordered),
            **context,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class Runner(Protocol):
    """One built artifact loaded once: infer many times, time it, close it (a context manager)."""

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs of one run on ``feeds``, in graph order."""
        ...

    def time(
        self, feeds: dict[str, np.ndarray], runs: int, warmup: int, policy: TimingPolicy | None = None
    ) -> LatencyStats:
        """Latency of ``runs`` runs after ``warmup`` discarded ones (or as ``policy`` says)."""
        ...

    def close(self) -> None:
        """Release what the runner holds."""
        ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...


class Backend(Protocol):
    """An engine: ``build`` turns an ONNX file into an artifact, ``open`` gives a runner on it.

    ``run`` and ``time`` open a runner for one call.  ``options`` holds what changes an artifact or its timing,
    and is part of every artifact's key.  ``device`` says what it builds and times on, ``"cpu"`` or ``"gpu"``: on Ray,
    a GPU backend's tasks hold a share of one GPU, and its timing a whole one (``trtmix.parallel.cluster``).
    """

    name: str
    version: str
    device: str

    def options(self) -> dict[str, object]:
        """Build and run settings that change an artifact or its latency (threads, TensorRT options, ...)."""
        ...

    def open(self, artifact: Path) -> Runner:
        """A runner on ``artifact``."""
        ...

    def build(self, onnx_path: Path, artifact_path: Path) -> Path:
        """Build (or optimise) ``onnx_path`` into ``artifact_path``; returns the artifact path."""
        ...

    def run(self, artifact: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the artifact once on ``feeds`` and return its outputs in graph order."""
        ...

    def time(self, artifact: Path, feeds: dict[str, np.ndarray], runs: int, warmup: int) -> LatencyStats:
        """Median-of-``runs`` latency after ``warmup`` discarded runs, inputs allocated once."""
        ...


class RunsThroughRunners:
    """``run`` and ``time`` for a backend whose ``open`` gives a runner: each opens one for a single call."""

    def open(self, artifact: Path) -> Runner:  # pragma: no cover - the backend's own
        raise NotImplementedError

    def run(self, artifact: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs of one run (for many, use ``open``)."""
        with self.open(artifact) as runner:
            return runner.infer(feeds)

    def time(
        self, artifact: Path, feeds: dict[str, np.ndarray], runs: int = 20, warmup: int = 3,
        policy: TimingPolicy | None = None,
    ) -> LatencyStats:  # fmt: skip
        """Median latency of synchronous runs (``runs`` after ``warmup``, or as ``policy`` says)."""
        with self.open(artifact) as runner:
            return runner.time(feeds, runs, warmup, policy)


def timed_stats(call: Callable[[], object], policy: TimingPolicy, **context: Any) -> LatencyStats:
    """Time synchronous ``call``s under ``policy`` (``trtmix.runtime.timing``), with the machine's load noted."""
    from trtmix.runtime.timing import adaptive_samples, load_note, machine_load

    before = machine_load()
    samples = adaptive_samples(call, policy)
    return LatencyStats.from_samples(samples, warmup=policy.warmup, load=load_note(before, machine_load()), **context)


def policy_for(runs: int, warmup: int, policy: TimingPolicy | None) -> TimingPolicy:
    """``policy``, or exactly ``runs`` timed runs after ``warmup`` when none is given."""
    from trtmix.runtime.timing import TimingPolicy

    return policy or TimingPolicy(runs=runs, warmup=warmup, target=None)


def cpu_name() -> str:
    """``CPU: <model>; VNNI .., BF16 .., AMX ..``: the device line of CPU latency stats."""
    from trtmix.runtime.cpu import cpu_features

    return cpu_features().describe()
