"""CUDA-event latency of any GPU work on one stream, independent of TensorRT (the TensorRT runner uses it).

What trtexec's ``sampleInference.cpp`` does, with ``torch.cuda`` as the CUDA binding:

* ``launch`` only *enqueues* work on ``stream`` and says whether that worked (TensorRT's ``execute_async_v3``
  returns a bool); it never synchronises, so host overhead stays outside the timed region;
* warm-up launches, then for each timed run an event before and after the work on the same stream, and only then
  a wait on the end event;
* optionally the work is captured once into a CUDA graph and replayed: the capture is checked (an exception, or
  ``launch`` returning False inside it, means no graph: trtexec then times plain launches too), and the replay runs
  inside ``torch.cuda.stream(stream)``, because PyTorch replays on the *current* stream and the events are recorded
  on ``stream``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOG = logging.getLogger(__name__)
Launch = Callable[[], bool | None]


@dataclass(frozen=True)
class CudaTiming:
    """Milliseconds per run from CUDA events, and whether a captured CUDA graph was replayed."""

    samples_ms: list[float]
    cuda_graph: bool


def time_on_stream(launch: Launch, stream: Any, runs: int, warmup: int, cuda_graph: bool = True) -> CudaTiming:
    """Time ``launch`` (which enqueues work on ``stream``) with CUDA events; see the module docstring."""
    import torch

    if runs < 1:
        from trtmix.errors import BackendError

        raise BackendError(f"--runs must be at least 1 (got {runs}).")
    replay = capture_graph(launch, stream) if cuda_graph else None
    work = replay or launch
    samples = []
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            _enqueued(work())
        stream.synchronize()
        for _ in range(runs):
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record(stream)
            _enqueued(work())
            end.record(stream)
            end.synchronize()
            samples.append(float(start.elapsed_time(end)))
    return CudaTiming(samples, replay is not None)


def capture_graph(launch: Launch, stream: Any) -> Launch | None:
    """A function replaying ``launch`` captured into a CUDA graph on ``stream``, or None when capture fails."""
    import torch

    with torch.cuda.stream(stream):
        _enqueued(launch())  # one launch before capture: TensorRT flushes deferred shape updates there
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
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
