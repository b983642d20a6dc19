"""A fake ``tensorrt`` and ``polygraphy.backend.trt`` that record what trtmix's TensorRT backend asks of them.

Only the calls ``trtmix.runtime.tensorrt`` makes, with the signatures of TensorRT 10.13's bindings (``tensorrt-stubs``)
and Polygraphy 0.53.6: a test installs both in ``sys.modules`` and reads ``calls`` to check what was asked, in order.
The engine has one input ``input`` (dynamic batch, profile 1..4 with opt 2) and one output ``output``.
"""

from __future__ import annotations

import json
import types
from typing import Any

import numpy as np

PROFILE = ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
FP16_INPUT = {"Name": "input", "Format/Datatype": "Row major linear FP16 format"}
INSPECTOR = {"Layers": [{"Name": "/stem/Conv", "LayerType": "CaskConvolution", "Inputs": [FP16_INPUT]}]}


class _Severity:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = "internal_error", "error", "warning", "info", "verbose"


class FakeTensorRT(types.ModuleType):
    """``tensorrt`` 10.13 as far as trtmix uses it; ``refuse`` makes deserialization fail with that log message."""

    def __init__(self, version: str = "10.13.0.35", dtypes: dict[str, str] | None = None) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple[Any, ...]] = []
        self.refuse: str | None = None
        self.dtypes = dtypes or {"input": "float32", "output": "float32"}
        self.float32, self.float16, self.bfloat16, self.fp8 = "float32", "float16", "bfloat16", "fp8"
        self.Builder = object
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed")
        self.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
        self.LayerInformationFormat = types.SimpleNamespace(JSON="json")
        fake = self

        class ILogger:
            Severity = _Severity

            def __init__(self) -> None:
                pass

        class Runtime:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, data: bytes) -> Any:
                fake.calls.append(("deserialize",))
                if fake.refuse:
                    self.logger.log(_Severity.ERROR, fake.refuse)
                    return None
                return _Engine(fake)

        self.ILogger, self.Runtime = ILogger, Runtime

    def nptype(self, trt_type: str) -> type:
        """TensorRT 10.13's ``nptype``: no bfloat16, no fp8."""
        mapping = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "int32": np.int32}
        if trt_type in mapping:
            return mapping[trt_type]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    def init_libnvinfer_plugins(self, logger: Any, namespace: str) -> bool:
        self.calls.append(("init_libnvinfer_plugins", namespace))
        return True


class _Engine:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt, self.num_io_tensors = trt, 2

    def get_tensor_name(self, index: int) -> str:
        return ("input", "output")[index]

    def get_tensor_mode(self, name: str) -> str:
        return name

    def get_tensor_dtype(self, name: str) -> str:
        return self.trt.dtypes[name]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return list(PROFILE)

    def create_execution_context(self) -> _Context:
        return _Context(self.trt)

    def create_engine_inspector(self) -> _Inspector:
        return _Inspector(self.trt)


class _Context:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.shape: tuple[int, ...] = PROFILE[1]

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.trt.calls.append(("set_input_shape", name, shape))
        self.shape = shape
        return all(low <= d <= high for low, d, high in zip(PROFILE[0], shape, PROFILE[2], strict=True))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shape  # the output has the input's shape

    def set_tensor_address(self, name: str, address: int) -> bool:
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.trt.calls.append(("execute_async_v3", stream))
        return True


class _Inspector:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt, self.execution_context = trt, None

    def get_engine_information(self, form: str) -> str:
        self.trt.calls.append(("inspect", self.execution_context is not None))
        return json.dumps(INSPECTOR)


class FakePolygraphy(types.ModuleType):
    """``polygraphy.backend.trt``: records the ``CreateConfig`` and network arguments; builds ``b"engine"``."""

    def __init__(self, trt: FakeTensorRT) -> None:
        super().__init__("polygraphy.backend.trt")
        calls = trt.calls

        class Profile(dict):  # type: ignore[type-arg]
            def add(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - Polygraphy's names
                self[name] = (min, opt, max)

        def create_config(**kwargs: Any) -> dict[str, Any]:
            calls.append(("CreateConfig", kwargs))
            return kwargs

        def network_from_onnx_path(path: str, strongly_typed: bool = False) -> str:
            calls.append(("NetworkFromOnnxPath", path, strongly_typed))
            return path

        def engine_bytes(network: str, config: Any, save_timing_cache: str | None = None) -> Any:
            calls.append(("EngineBytesFromNetwork", save_timing_cache))
            return lambda: b"engine"

        self.Profile, self.CreateConfig = Profile, create_config
        self.NetworkFromOnnxPath, self.EngineBytesFromNetwork = network_from_onnx_path, engine_bytes
