"""Latency samples a user can rely on: timed until the median is known to ±target, with the machine's load noted.

A single fixed-count median decides by luck where plans differ by less than the run-to-run noise: on a shared
2-core machine the same EfficientNet graph measured 40.3 and 49.6 ms in one job.  So each artifact is timed in
chunks until the 95% confidence interval of its median (order statistics: the ranks ``n/2 ± 1.96·√n/2`` of the
sorted samples, distribution-free) is within ``±target`` of the median, or a cap on runs or seconds is hit.  The
load average and the CPU steal time before and after say whether the machine was busy while it ran.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trtmix.errors import BackendError

Z95 = 1.96


@dataclass(frozen=True)
class TimingPolicy:
    """How long to time one artifact.

    At least ``runs`` after ``warmup``, then chunks of ``runs`` until the median's 95% interval is within
    ±``target`` (a fraction) or ``max_runs`` / ``max_seconds`` is reached.  ``target`` None times exactly ``runs``.
    """

    runs: int = 20
    warmup: int = 3
    target: float | None = 0.03
    max_runs: int = 200
    max_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise BackendError(f"--runs must be at least 1 (got {self.runs}).")
        if self.warmup < 0:
            raise BackendError(f"--warmup must be 0 or more (got {self.warmup}).")
        if self.target is not None and not 0 < self.target < 1:
            raise BackendError(f"--timing-target must be between 0% and 100% (got {self.target:.2%}).")


def median_interval(samples: list[float]) -> tuple[float, float]:
    """The distribution-free 95% confidence interval of the median (the sorted samples at two order statistics)."""
    ordered = sorted(samples)
    count = len(ordered)
    if count < 6:
        return ordered[0], ordered[-1]
    spread = Z95 * math.sqrt(count) / 2
    low = max(0, math.floor(count / 2 - spread))
    high = min(count - 1, math.ceil(count / 2 + spread) - 1)
    return ordered[low], ordered[high]


def relative_half_width(samples: list[float]) -> float:
    """Half the median's 95% interval, relative to the median."""
    low, high = median_interval(samples)
    ordered = sorted(samples)
    median = ordered[len(ordered) // 2]
    return (high - low) / (2 * median) if median > 0 else math.inf


def adaptive_samples(call: Callable[[], object], policy: TimingPolicy) -> list[float]:
    """Milliseconds of each timed call under ``policy`` (host clock around each synchronous call)."""
    for _ in range(policy.warmup):
        call()
    samples: list[float] = []
    started = time.perf_counter()
    while True:
        for _ in range(policy.runs):
            start = time.perf_counter()
            call()
            samples.append((time.perf_counter() - start) * 1e3)
        done = policy.target is None or relative_half_width(samples) <= policy.target
        capped = len(samples) >= policy.max_runs or time.perf_counter() - started >= policy.max_seconds
        if done or capped:
            return samples


def machine_load() -> dict[str, float]:
    """The 1-minute load average per core, and the CPU steal time so far (jiffies, where /proc/stat says)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = {"load_per_core": round(os.getloadavg()[0] / cores, 3)} if hasattr(os, "getloadavg") else {}
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        if fields[0] == "cpu" and len(fields) > 8:
            load["steal_jiffies"] = float(fields[8])
            load["total_jiffies"] = float(sum(float(v) for v in fields[1:]))
    except (OSError, ValueError, IndexError):
        pass
    return load


def load_note(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Load while timing: the load average per core after, and the share of CPU time stolen in between."""
    note = {"load_per_core": after.get("load_per_core", 0.0)}
    total = after.get("total_jiffies", 0.0) - before.get("total_jiffies", 0.0)
    if total > 0:
        note["steal_share"] = round((after.get("steal_jiffies", 0.0) - before.get("steal_jiffies", 0.0)) / total, 4)
    return note


def busy(note: dict[str, float]) -> bool:
    """True when the machine was visibly busy: more runnable work than cores, or over 5% of CPU time stolen."""
    return note.get("load_per_core", 0.0) > 1.0 or note.get("steal_share", 0.0) > 0.05
