"""A fake ``torch`` whose ``torch.cuda`` records, in order, every event record, wait, enqueue, capture and replay.

The CUDA-event timer and the TensorRT runner import ``torch`` inside their functions, so a test puts this module in
``sys.modules["torch"]`` and reads ``log`` afterwards: the order of calls is what a GPU would see.
"""

from __future__ import annotations

import contextlib
import itertools
import types
from collections.abc import Iterator
from typing import Any


class FakeTorch(types.ModuleType):
    """``torch`` with just what ``trtmix.runtime.cuda_timer`` and ``trtmix.runtime.tensorrt`` call."""

    def __init__(self, device: str = "NVIDIA H200", capability: tuple[int, int] = (9, 0), cuda: str = "12.8") -> None:
        super().__init__("torch")
        self.log: list[tuple[Any, ...]] = []
        self.current: Any = "default"
        self.__version__ = "2.13.0+fake"
        self.version = types.SimpleNamespace(cuda=cuda)
        self.cuda = _Cuda(self, device, capability)
        self.bfloat16, self.float32, self.float16 = "torch.bfloat16", "torch.float32", "torch.float16"

    def enqueue(self, what: str = "work") -> None:
        """What a launch calls: an enqueue on the current stream."""
        self.log.append(("enqueue", what, self.current))


class _Cuda(types.SimpleNamespace):
    def __init__(self, torch: FakeTorch, device: str, capability: tuple[int, int]) -> None:
        ids = itertools.count()

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.id = next(ids)

            def record(self, stream: Any = None) -> None:
                torch.log.append(("record", self.id, stream))

            def synchronize(self) -> None:
                torch.log.append(("wait", self.id))

            def elapsed_time(self, end: Any) -> float:
                return 1.0

        class CUDAGraph:
            def replay(self) -> None:
                torch.log.append(("replay", torch.current))

        @contextlib.contextmanager
        def stream(value: Any) -> Iterator[None]:
            previous, torch.current = torch.current, value
            try:
                yield
            finally:
                torch.current = previous

        @contextlib.contextmanager
        def graph(cuda_graph: Any, pool: Any = None, stream: Any = None,
                  capture_error_mode: str = "global") -> Iterator[None]:  # fmt: skip
            torch.log.append(("capture", capture_error_mode))
            previous, torch.current = torch.current, stream
            try:
                yield
            finally:
                torch.current = previous
                torch.log.append(("captured",))

        super().__init__(Event=Event, CUDAGraph=CUDAGraph, stream=stream, graph=graph,
                         is_available=lambda: True, get_device_name=lambda *a: device,
                         get_device_capability=lambda *a: capability, synchronize=lambda: None)  # fmt: skip


class FakeStream:
    """A stream whose ``synchronize`` is logged (the timer must not call it between timed runs)."""

    def __init__(self, torch: FakeTorch, name: str = "timing-stream") -> None:
        self.torch, self.name, self.cuda_stream = torch, name, 1234

    def synchronize(self) -> None:
        self.torch.log.append(("stream-sync", self.name))

    def __repr__(self) -> str:
        return self.name
