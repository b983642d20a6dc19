"""CUDA-event latency of any GPU work on one stream, independent of TensorRT (the TensorRT runner uses it).

What trtexec's inference loop does (``samples/common/sampleInference.cpp``, TensorRT 10.0 to 11.1), with
``torch.cuda`` as the CUDA binding:

* ``launch`` only *enqueues* work on ``stream`` and says whether that worked (TensorRT's ``execute_async_v3``
  returns a bool); it never synchronises;
* each run records a start event, enqueues, records an end event, and keeps ``DEPTH`` runs in flight: the host
  waits only for the end event of the oldest run after enqueueing a newer one (trtexec's ``IterationBase``, depth
  ``1 + overlap``).  So a start event is recorded while earlier runs still occupy the stream, and the host time of
  the next enqueue (``execute_async_v3``, ``graph.replay()``) overlaps GPU work instead of landing inside the
  measured interval, as it would after a per-run synchronise.  trtexec's depth of 2 is C++; here the host also
  reads an elapsed time per run in Python, so ``DEPTH`` is 3, and the events are a ring made once, not two new
  events (and two lazy ``cudaEventCreate``) per run;
* warm-up and the timed runs are one loop (trtexec's ``inferenceLoop``): the first timed run starts behind warm-up
  runs still in flight, never on a drained stream.  Warm-up lasts at least ``warmup`` runs *and* ``warmup_ms`` of
  wall time (trtexec warms up for 200 ms by time);
* optionally the work is captured once into a CUDA graph and replayed: the capture is thread-local (trtexec
  captures with ``cudaStreamCaptureModeThreadLocal``; torch's default ``"global"`` lets a CUDA call on another
  thread, such as a Ray build beside the timer, void the capture), and it is checked (an exception, or ``launch``
  returning False inside it, means no graph: trtexec then times plain launches too).  The replay runs inside
  ``torch.cuda.stream(stream)``, because PyTorch replays on the *current* stream and the events are recorded on
  ``stream``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

LOG = logging.getLogger(__name__)
Launch = Callable[[], bool | None]
DEPTH = 3  # runs in flight: trtexec keeps 2 (overlap on) in C++; Python's host time per run needs one more
WARMUP_MS = 200.0  # trtexec's default --warmUp
CAPTURE_MODE = "thread_local"  # trtexec's cudaStreamCaptureModeThreadLocal


@dataclass(frozen=True)
class CudaTiming:
    """Milliseconds per run from CUDA events, and whether a captured CUDA graph was replayed."""

    samples_ms: list[float]
    cuda_graph: bool


def time_on_stream(
    launch: Launch, stream: Any, runs: int, warmup: int, cuda_graph: bool = True, warmup_ms: float | None = None
) -> CudaTiming:
    """Time ``launch`` (which enqueues work on ``stream``) with CUDA events; see the module docstring.

    ``warmup_ms``: the least wall time of warm-up (default ``WARMUP_MS``, read at each call).
    """
    import torch

    if runs < 1:
        from trtmix.errors import BackendError

        raise BackendError(f"--runs must be at least 1 (got {runs}).")
    replay = capture_graph(launch, stream) if cuda_graph else None
    work = replay or launch
    with torch.cuda.stream(stream):
        samples = _pipelined(work, stream, runs, warmup, WARMUP_MS if warmup_ms is None else warmup_ms)
    return CudaTiming(samples, replay is not None)


def _pipelined(work: Launch, stream: Any, runs: int, warmup: int = 0, warmup_ms: float = 0.0) -> list[float]:
    """Milliseconds of ``runs`` timed runs after the warm-up, each between its own events, ``DEPTH`` in flight.

    Warm-up runs (at least ``warmup`` of them and ``warmup_ms`` of wall time) go through the same loop untimed, so
    the pipeline never drains before the first timed run.  The host waits for the oldest run's end event only after
    enqueueing a newer one; each event pair is reused once its run has been read.
    """
    import torch

    ring = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))  # type: ignore[no-untyped-call]
            for _ in range(DEPTH)]  # fmt: skip
    samples: list[float] = []
    in_flight: deque[tuple[int, bool]] = deque()  # (ring slot, timed)
    started, warmed, timed, slot = perf_counter(), 0, 0, 0
    while timed < runs:
        warming = warmed < warmup or (perf_counter() - started) * 1000.0 < warmup_ms
        start, end = ring[slot]
        start.record(stream)
        _enqueued(work())
        end.record(stream)
        in_flight.append((slot, not warming))
        warmed, timed, slot = warmed + warming, timed + (not warming), (slot + 1) % DEPTH
        if len(in_flight) >= DEPTH:
            _read(ring, in_flight.popleft(), samples)
    while in_flight:
        _read(ring, in_flight.popleft(), samples)
    return samples


def _read(ring: list[tuple[Any, Any]], entry: tuple[int, bool], samples: list[float]) -> None:
    """Wait for a run's end event; keep its milliseconds when it was a timed run (warm-up runs are dropped)."""
    slot, timed = entry
    start, end = ring[slot]
    end.synchronize()
    if timed:
        samples.append(float(start.elapsed_time(end)))


def capture_graph(launch: Launch, stream: Any) -> Launch | None:
    """A function replaying ``launch`` captured into a CUDA graph on ``stream``, or None when capture fails."""
    import torch

    with torch.cuda.stream(stream):
        _enqueued(launch())  # one launch before capture: TensorRT flushes deferred shape updates there
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream, capture_error_mode=CAPTURE_MODE):
            captured = launch()
    except RuntimeError as err:
        LOG.warning("CUDA graph capture failed (%s); timing plain launches", err)
        return None
    if captured is False:
        LOG.warning("the enqueue inside the CUDA graph capture failed; timing plain launches")
        return None

    def replay() -> bool:
        graph.replay()  # on the current stream: time_on_stream makes it ``stream``
        return True

    return replay


def _enqueued(result: bool | None) -> None:
    if result is False:
        from trtmix.errors import BackendError

        raise BackendError("Enqueueing the work on the CUDA stream failed (TensorRT execute_async_v3 returned False).")
