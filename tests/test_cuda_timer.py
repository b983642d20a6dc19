"""The engine-independent CUDA-event timer, on kernels of known length (marker ``gpu``: skipped without CUDA).

``torch.cuda._sleep(cycles)`` spins one GPU thread for a number of clock cycles: a kernel whose length scales with
its argument.  The timer must measure it (not the host's enqueue time), agree with and without CUDA-graph replay,
agree with plain ``torch.cuda.Event`` timing, and see a kernel twice as long as twice as long.
"""

import statistics

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TARGET_MS = 5.0


def _cycles_for(ms: float, stream) -> int:
    """Sleep cycles that take about ``ms`` on this GPU, measured once."""
    probe = 10_000_000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        torch.cuda._sleep(probe)  # warm-up
        start.record(stream)
        torch.cuda._sleep(probe)
        end.record(stream)
    end.synchronize()
    return int(probe * ms / start.elapsed_time(end))


def _plain_event_median(cycles: int, stream, runs: int = 30) -> float:
    samples = []
    with torch.cuda.stream(stream):
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            torch.cuda._sleep(cycles)
            end.record(stream)
            end.synchronize()
            samples.append(start.elapsed_time(end))
    return statistics.median(samples)


@pytest.fixture(scope="module")
def side_stream():
    return torch.cuda.Stream()


def test_graph_and_plain_launches_agree_with_cuda_events(side_stream):
    from trtmix.runtime.cuda_timer import time_on_stream

    cycles = _cycles_for(TARGET_MS, side_stream)
    launch = lambda: torch.cuda._sleep(cycles)  # noqa: E731
    plain = time_on_stream(launch, side_stream, runs=30, warmup=5, cuda_graph=False)
    graph = time_on_stream(launch, side_stream, runs=30, warmup=5, cuda_graph=True)
    assert graph.cuda_graph and not plain.cuda_graph
    reference = _plain_event_median(cycles, side_stream)
    plain_ms, graph_ms = statistics.median(plain.samples_ms), statistics.median(graph.samples_ms)
    assert plain_ms == pytest.approx(reference, rel=0.05)
    assert graph_ms == pytest.approx(reference, rel=0.05)  # a replay on another stream would measure ~0 ms
    assert graph_ms == pytest.approx(plain_ms, rel=0.05)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_twice_the_kernel_measures_twice_as_long(side_stream, cuda_graph):
    from trtmix.runtime.cuda_timer import time_on_stream

    cycles = _cycles_for(TARGET_MS, side_stream)
    one = time_on_stream(lambda: torch.cuda._sleep(cycles), side_stream, 30, 5, cuda_graph)
    two = time_on_stream(lambda: torch.cuda._sleep(2 * cycles), side_stream, 30, 5, cuda_graph)
    ratio = statistics.median(two.samples_ms) / statistics.median(one.samples_ms)
    assert 1.9 <= ratio <= 2.1, ratio


def test_a_failed_enqueue_inside_capture_means_no_graph(side_stream):
    from trtmix.runtime.cuda_timer import capture_graph

    calls = []

    def launch():
        calls.append(1)
        torch.cuda._sleep(1000)
        return len(calls) == 1  # the launch before capture works; the one inside the capture reports failure

    assert capture_graph(launch, side_stream) is None
