"""What every engine backend offers: build an artifact from ONNX, run it, time it.

The algorithm core only sees this protocol, so the search never knows whether ONNX Runtime or TensorRT is behind it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


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

    @classmethod
    def from_samples(cls, samples_ms: list[float], **context: Any) -> LatencyStats:
        """Summarise timed runs (at least one)."""
        ordered = sorted(samples_ms)
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

    def time(self, feeds: dict[str, np.ndarray], runs: int, warmup: int) -> LatencyStats:
        """Latency of ``runs`` runs after ``warmup`` discarded ones."""
        ...

    def close(self) -> None:
        """Release what the runner holds."""
        ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...


class Backend(Protocol):
    """An engine: ``build`` turns an ONNX file into an artifact, ``open`` gives a runner on it.

    ``run`` and ``time`` open a runner for one call.  ``options`` holds what changes an artifact or its timing,
    and is part of every artifact's key.
    """

    name: str
    version: str

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


def time_calls(call: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``runs`` synchronous calls, after ``warmup`` discarded ones (host clock)."""
    if runs < 1:
        from trtmix.errors import BackendError

        raise BackendError(f"--runs must be at least 1 (got {runs}).")
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def cpu_name() -> str:
    """``CPU: <model>; VNNI .., BF16 .., AMX ..``: the device line of CPU latency stats."""
    from trtmix.runtime.cpu import cpu_features

    return cpu_features().describe()
