"""CUDA-event latency of any GPU work on one stream, independent of TensorRT (the TensorRT runner uses it).

What trtexec's inference loop does (``samples/common/sampleInference.cpp``, TensorRT 10.0 to 11.1), with
``torch.cuda`` as the CUDA binding:

* ``launch`` only *enqueues* work on ``stream`` and says whether that worked (TensorRT's ``execute_async_v3``
  returns a bool); it never synchronises;
* each run records a start event, enqueues, records an end event, and keeps ``DEPTH`` (2) runs in flight: the host
  waits only for the end event of the run before the one it just enqueued (trtexec's ``IterationBase``, depth
  ``1 + overlap``).  So a start event is recorded while the previous run still occupies the stream, and the host
  time of the next enqueue (``execute_async_v3``, ``graph.replay()``) overlaps GPU work instead of landing inside
  the measured interval, as it would after a per-run synchronise;
* warm-up runs the same loop for at least ``warmup`` runs *and* ``warmup_ms`` of wall time (trtexec warms up for
  200 ms by time);
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
DEPTH = 2  # runs in flight: trtexec's default (overlap on)
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
        _warm_up(work, stream, warmup, WARMUP_MS if warmup_ms is None else warmup_ms)
        samples = _pipelined(work, stream, runs)
    return CudaTiming(samples, replay is not None)


def _warm_up(work: Launch, stream: Any, count: int, minimum_ms: float) -> None:
    """Run the timed loop, untimed, until ``count`` runs and ``minimum_ms`` of wall time have both passed."""
    start = perf_counter()
    done = 0
    while done < count or (perf_counter() - start) * 1000.0 < minimum_ms:
        batch = max(count - done, DEPTH)
        _pipelined(work, stream, batch)
        done += batch


def _pipelined(work: Launch, stream: Any, runs: int) -> list[float]:
    """Milliseconds of ``runs`` runs, each between its own events, with ``DEPTH`` runs in flight.

    The host waits for the end event of the oldest run in flight only after enqueueing the next one, so the stream
    is never idle while the host enqueues (the reason trtexec never synchronises per iteration).
    """
    import torch

    samples: list[float] = []
    in_flight: deque[tuple[Any, Any]] = deque()
    for _ in range(runs):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record(stream)
        _enqueued(work())
        end.record(stream)
        in_flight.append((start, end))
        if len(in_flight) >= DEPTH:
            samples.append(_elapsed(*in_flight.popleft()))
    while in_flight:
        samples.append(_elapsed(*in_flight.popleft()))
    return samples


def _elapsed(start: Any, end: Any) -> float:
    """Wait for ``end`` and return the milliseconds between the two events."""
    end.synchronize()
    return float(start.elapsed_time(end))


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
