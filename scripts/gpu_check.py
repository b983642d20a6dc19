"""What ``scripts/gpu-check.sh`` runs on a GPU machine that has CUDA and torch and nothing else of trtmix's.

1. The CUDA-event timer (``trtmix.runtime.cuda_timer.time_on_stream``) on kernels of known length (20 µs, 100 µs,
   5 ms of ``torch.cuda._sleep``) and on a launch that does 300 µs of host work before a 1 ms kernel, with and
   without CUDA-graph replay, against a pipelined reference: one pair of events around many back-to-back launches,
   divided by their number (pure GPU time, with the host always ahead).  A timer that let host time into its
   samples reads high on the host-work row; one that replayed on the wrong stream reads ~0 with graphs.
2. Where a real TensorRT imports (with Polygraphy and onnx): a tiny strongly typed engine from a tensorrt-flavour
   graph (symmetric int8 Q/DQ into an fp16 Conv, then an fp32 Conv) built by trtmix's backend, timed, and its
   inspector JSON saved, so the hand-written inspector fixtures can be checked against a real one.

Run from the repository root with ``PYTHONPATH=.``; writes into ``$OUT`` (default ``gpu-check-out``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch


def _load_timer() -> Any:
    """``trtmix/runtime/cuda_timer.py`` loaded by its path, needing only torch.

    The ``trtmix.runtime`` package imports numpy, which a torch-only machine need not have.
    """
    path = Path(__file__).resolve().parents[1] / "trtmix" / "runtime" / "cuda_timer.py"
    spec = importlib.util.spec_from_file_location("trtmix_cuda_timer", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  # its dataclass looks itself up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


time_on_stream = _load_timer().time_on_stream

OUT = Path(os.environ.get("OUT") or "gpu-check-out")
RUNS, WARMUP = 200, 10
TOLERANCE = 0.10  # a timer median within 10 % of the reference passes


def cycles_per_ms(stream: Any) -> float:
    """``torch.cuda._sleep`` cycles per millisecond on this GPU, from a 10 ms probe."""
    probe = 10_000_000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        torch.cuda._sleep(probe)
        start.record(stream)
        torch.cuda._sleep(probe)
        end.record(stream)
    end.synchronize()
    return probe / start.elapsed_time(end)


def host_work(seconds: float) -> None:
    """Busy host time, as a framework's enqueue path would spend."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def pipelined_reference(launch: Any, stream: Any, count: int = 200) -> float:
    """Milliseconds per launch from one pair of events around ``count`` back-to-back launches (after warm-up)."""
    with torch.cuda.stream(stream):
        for _ in range(10):
            launch()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(count):
            launch()
        end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / count


def timer_rows(stream: Any) -> list[dict[str, Any]]:
    """One row per case: the reference, and ``time_on_stream``'s median with and without CUDA graphs."""
    rate = cycles_per_ms(stream)
    cases = [("20 us kernel", 0.020, 0.0), ("100 us kernel", 0.100, 0.0), ("5 ms kernel", 5.0, 0.0),
             ("300 us host + 1 ms kernel", 1.0, 0.0003)]  # fmt: skip
    rows = []
    for label, kernel_ms, host_s in cases:
        cycles = max(int(rate * kernel_ms), 1)

        def launch(cycles: int = cycles, host_s: float = host_s) -> None:
            if host_s:
                host_work(host_s)
            torch.cuda._sleep(cycles)

        reference = pipelined_reference(launch, stream)
        plain = statistics.median(time_on_stream(launch, stream, RUNS, WARMUP, cuda_graph=False).samples_ms)
        timed = time_on_stream(launch, stream, RUNS, WARMUP, cuda_graph=True)
        graph = statistics.median(timed.samples_ms)
        rows.append({"case": label, "reference_ms": reference, "plain_ms": plain, "graph_ms": graph,
                     "graph_replayed": timed.cuda_graph,
                     "ok": all(abs(v / reference - 1) <= TOLERANCE for v in (plain, graph))})  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """The timer table."""
    print(f"\n{'case':<28} {'reference ms':>13} {'plain ms':>10} {'graph ms':>10} {'plain/ref':>10} "
          f"{'graph/ref':>10}  within {TOLERANCE:.0%}")  # fmt: skip
    for row in rows:
        ref = row["reference_ms"]
        print(f"{row['case']:<28} {ref:>13.4f} {row['plain_ms']:>10.4f} {row['graph_ms']:>10.4f} "
              f"{row['plain_ms'] / ref:>10.3f} {row['graph_ms'] / ref:>10.3f}  {'yes' if row['ok'] else 'NO'}"
              + ("" if row["graph_replayed"] else "  (graph capture failed)"))  # fmt: skip


def missing(*modules: str) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (checked without importing them)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def tensorrt_check() -> str:
    """Build, inspect and time a tiny engine with trtmix's backend; a line saying what happened."""
    absent = missing("tensorrt", "polygraphy", "onnx", "onnx_graphsurgeon")
    if absent:
        return f"TensorRT check skipped: {', '.join(absent)} not importable"
    import tensorrt

    if not hasattr(tensorrt, "Builder"):
        return "TensorRT check skipped: `import tensorrt` finds only stubs or a placeholder"
    import numpy as np
    import onnx

    from trtmix.runtime.tensorrt import BuildSettings, TensorRTBackend

    graph = tensorrt_flavour_graph(OUT / "tiny.tensorrt.onnx")
    backend = TensorRTBackend(BuildSettings(timing_cache=OUT / "timing.cache"))
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    backend.cover_feeds(onnx.load(str(graph)), [feeds])  # the dynamic batch's profile, from the feed
    engine = backend.build(graph, OUT / "tiny.engine")
    information = backend.engine_information(engine, feeds)
    (OUT / "engine_info.json").write_text(json.dumps(information, indent=1))
    stats = backend.time(engine, feeds, runs=100, warmup=10)
    layers = backend.engine_layers(engine, feeds)
    described = "; ".join(f"{layer.name} [{layer.kind}] {layer.precision}" for layer in layers)
    return (f"TensorRT {tensorrt.__version__}: built {engine.name}, median {stats.median_ms:.4f} ms "
            f"({stats.provider}); inspector JSON in {OUT / 'engine_info.json'}; layers: {described}")  # fmt: skip


def tensorrt_flavour_graph(path: Path) -> Path:
    """A graph as the tensorrt flavour writes one, with a dynamic batch.

    fp32 I/O, int8 Q/DQ (symmetric, zero point 0, per-channel weights on axis 0) into an fp16 Conv + Relu, and a
    Conv planned FP32 after it (so TF32 must be off, and the inspector should say Float for it).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    scales = (np.abs(weight).reshape(8, -1).max(axis=1) / 127).astype(np.float16)
    inits = [
        numpy_helper.from_array(np.clip(np.round(weight / scales[:, None, None, None].astype(np.float32)), -127, 127)
                                .astype(np.int8), "w_q"),
        numpy_helper.from_array(scales, "w_scale"), numpy_helper.from_array(np.zeros(8, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(0.05, np.float16), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16, name="/cast_in"),
        helper.make_node("QuantizeLinear", ["x16", "x_scale", "x_zero"], ["xq"], name="/conv1/input/Q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xdq"], name="/conv1/input/DQ"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["wdq"], axis=0, name="/conv1/weight/DQ"),
        helper.make_node("Conv", ["xdq", "wdq"], ["c1"], pads=[1, 1, 1, 1], name="/conv1/Conv"),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu1/Relu"),
        helper.make_node("Cast", ["r1"], ["r32"], to=TensorProto.FLOAT, name="/conv2/cast"),
        helper.make_node("Conv", ["r32", "w2"], ["output"], pads=[1, 1, 1, 1], name="/conv2/Conv"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, 16, 16])]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def main() -> int:
    """Print the device, the timer table and the TensorRT line; exit 1 when a timer row is off."""
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch: nothing to check")
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.get_device_name()}, "
          f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))}")  # fmt: skip
    optional = ("onnx", "onnx_graphsurgeon", "onnxruntime", "openvino", "tensorrt", "polygraphy")
    present = [name for name in optional if not missing(name)]
    print("present: " + (", ".join(present) or "none of " + ", ".join(optional)))
    stream = torch.cuda.Stream()
    rows = timer_rows(stream)
    print_table(rows)
    (OUT / "timer.json").write_text(json.dumps(rows, indent=1))
    try:
        print("\n" + tensorrt_check())
    except Exception as err:  # noqa: BLE001 - report, and keep the timer table's verdict
        print(f"\nTensorRT check FAILED: {type(err).__name__}: {err}")
        return 1
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
