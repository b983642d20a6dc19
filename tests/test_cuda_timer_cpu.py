"""The CUDA-event timer's order of calls, on a fake ``torch.cuda`` that logs them (runs on any CPU).

What a GPU would see: runs kept two in flight (the wait for a run's end event comes only after the next run is
enqueued, as in trtexec), replays on the timing stream, a thread-local capture, and a warm-up by time as well as
by count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_cuda import FakeStream, FakeTorch
from trtmix.runtime import cuda_timer


@pytest.fixture()
def torch(monkeypatch: pytest.MonkeyPatch) -> FakeTorch:
    """The fake, as ``torch``; no minimum warm-up time unless a test asks for one."""
    fake = FakeTorch()
    monkeypatch.setattr(cuda_timer, "WARMUP_MS", 0.0, raising=False)
    monkeypatch.setitem(sys.modules, "torch", fake)
    return fake


def _timed_part(log: list[tuple], runs: int) -> list[tuple]:
    """The log of the last ``runs`` timed runs: from the start event of the first of them."""
    records = [index for index, entry in enumerate(log) if entry[0] == "record"]
    return log[records[-2 * runs]:]


def _in_flight(log: list[tuple]) -> list[tuple[str, int]]:
    """Walk the log after any capture: (event, runs enqueued and not yet waited for) at each record and wait."""
    start = max((index for index, entry in enumerate(log) if entry[0] == "captured"), default=-1) + 1
    running, seen = 0, []
    for entry in log[start:]:
        if entry[0] in ("enqueue", "replay"):
            running += 1
        elif entry[0] == "wait":
            seen.append(("wait", running))
            running -= 1
        elif entry[0] == "record":
            seen.append(("record", running))
    return seen


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_the_next_run_is_enqueued_before_the_host_waits_for_the_previous_one(torch, cuda_graph) -> None:
    stream = FakeStream(torch)
    timing = cuda_timer.time_on_stream(lambda: torch.enqueue(), stream, runs=5, warmup=2, cuda_graph=cuda_graph)
    assert timing.cuda_graph is cuda_graph and len(timing.samples_ms) == 5
    timed = _timed_part(torch.log, 5)
    assert ("stream-sync", "timing-stream") not in timed, "no synchronise between timed runs"
    waits = [running for event, running in _in_flight(torch.log) if event == "wait"]
    drained = cuda_timer.DEPTH - 1  # the runs still in flight when the loop ends, collected after it
    assert all(running >= cuda_timer.DEPTH for running in waits[:-drained]), "a newer run is queued at every wait"
    assert waits[-drained:] == list(range(drained, 0, -1)), "the last runs are collected after the loop"
    work = [entry for entry in timed if entry[0] in ("enqueue", "replay")]
    assert len(work) == 5 and all(entry[-1] is stream for entry in work), "every run on the timing stream"


def test_the_first_timed_run_starts_behind_warm_up_runs_in_flight(torch) -> None:
    """Warm-up and timing are one loop: the stream never drains before the first timed run (trtexec's inferenceLoop)."""
    stream = FakeStream(torch)
    cuda_timer.time_on_stream(lambda: torch.enqueue(), stream, runs=4, warmup=6, cuda_graph=False)
    records = [running for event, running in _in_flight(torch.log) if event == "record"]
    first_timed_start = records[-2 * 4]
    assert first_timed_start >= cuda_timer.DEPTH - 1, "warm-up runs are still queued when timing starts"


def test_events_are_a_ring_made_once_not_two_per_run(torch) -> None:
    stream = FakeStream(torch)
    cuda_timer.time_on_stream(lambda: torch.enqueue(), stream, runs=50, warmup=5, cuda_graph=False)
    events = {entry[1] for entry in torch.log if entry[0] == "record"}
    assert len(events) == 2 * cuda_timer.DEPTH, "each event pair is reused once its run is read"


def test_a_captured_graph_is_replayed_on_the_timing_stream_and_captured_thread_local(torch) -> None:
    stream = FakeStream(torch)
    cuda_timer.time_on_stream(lambda: torch.enqueue(), stream, runs=3, warmup=2)
    assert ("capture", "thread_local") in torch.log
    replays = [entry for entry in torch.log if entry[0] == "replay"]
    assert len(replays) == 5 and all(entry[1] is stream for entry in replays)
    captured = torch.log.index(("captured",))
    assert all(entry[0] != "enqueue" for entry in torch.log[captured:]), "only replays after the capture"


def test_warm_up_lasts_the_minimum_time_as_well_as_the_count(torch, monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(cuda_timer, "perf_counter", lambda: clock[0])

    def launch() -> None:
        clock[0] += 0.010  # each run takes 10 ms
        torch.enqueue()

    cuda_timer.time_on_stream(launch, FakeStream(torch), runs=3, warmup=2, cuda_graph=False, warmup_ms=200.0)
    launches = sum(entry[0] == "enqueue" for entry in torch.log)
    assert launches >= 20 + 3, "200 ms of 10 ms runs before the 3 timed ones"
    torch.log.clear()
    clock[0] = 0.0
    cuda_timer.time_on_stream(launch, FakeStream(torch), runs=3, warmup=50, cuda_graph=False, warmup_ms=200.0)
    assert sum(entry[0] == "enqueue" for entry in torch.log) >= 50 + 3, "and at least the count"


def test_a_failed_enqueue_is_a_clear_error(torch) -> None:
    from trtmix.errors import BackendError

    with pytest.raises(BackendError, match="execute_async_v3 returned False"):
        cuda_timer.time_on_stream(lambda: False, FakeStream(torch), runs=3, warmup=0, cuda_graph=False)


def test_importing_the_timer_pulls_no_onnx_or_engine() -> None:
    """gpu-check.sh runs the timer on a machine with torch and nothing else of trtmix's dependencies."""
    code = ("import sys\nfor name in ('onnx', 'onnxruntime', 'openvino', 'tensorrt', 'polygraphy', 'ray'):\n"
            "    sys.modules[name] = None\nimport trtmix.runtime.cuda_timer\nprint('ok')")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_gpu_check_runs_with_torch_alone(tmp_path) -> None:
    """scripts/gpu_check.py on a machine without numpy, onnx, onnxruntime, openvino or TensorRT: it says no GPU."""
    root = Path(__file__).resolve().parents[1]
    code = ("import runpy, sys\nimport torch\nfor name in ('numpy', 'onnx', 'onnxruntime', 'openvino', 'tensorrt',"
            " 'polygraphy'):\n"
            "    sys.modules[name] = None\nrunpy.run_path('scripts/gpu_check.py', run_name='__main__')")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root), "OUT": str(tmp_path)})  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1 and "no CUDA device" in result.stdout
