"""FP32 vs all-INT8 latency on ONNX Runtime CPU, ratios measured in one run.

    python benchmarks/fp32_vs_int8.py [--runs 20] [--threads N] [--models minilm resnet18] [--weight-bits 7|8]
        [--no-bias-correction]

MiniLM-L6 (real weights, batch 8 × 128 tokens): calibrated on 4 batches of the calibration split, fidelity (cosine to
FP32 embeddings) on 4 held-out batches.  ResNet-18 shape (random weights, batch 8 × 224²): latency only, calibrated on
random inputs.  Both flavours are compiled; only ``ort-cpu`` is meant to be fast on a CPU, ``tensorrt`` simulates
TensorRT's numerics.  The graphs are ``api.build``'s all-INT8 plans with its defaults: max ranges, no smoothing, bias
correction on, ``ort-cpu`` weights 8-bit on a CPU with VNNI or AMX and 7-bit without (``--weight-bits`` overrides).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from trtmix import api
from trtmix.evaluate import cosine
from trtmix.export import export_onnx
from trtmix.runtime.cpu import cpu_features
from trtmix.runtime.onnxruntime import OnnxRuntimeBackend, kernel_counts


def _minilm(folder: Path) -> tuple[Path, Callable[[str], Iterator[dict[str, np.ndarray]]], str]:
    from trtmix.models.minilm import load_data, minilm

    model, samples = minilm()
    path = folder / "minilm.onnx"
    export_onnx(model, samples, path, input_names=["input_ids", "attention_mask"])
    return path, lambda split: load_data(split, batches=4), "cosine to FP32 on 32 held-out sentences"


def _resnet18(folder: Path) -> tuple[Path, Callable[[str], Iterator[dict[str, np.ndarray]]], str]:
    from trtmix.models.resnet import resnet18

    model, samples = resnet18()
    path = folder / "resnet18.onnx"
    export_onnx(model, samples, path)

    def batches(split: str) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
        for _ in range(4):
            yield {"input": rng.standard_normal((8, 3, 224, 224)).astype(np.float32)}

    return path, batches, "random weights: latency only (cosine shown for completeness)"


MODELS = {"minilm": _minilm, "resnet18": _resnet18}


def _row(backend: OnnxRuntimeBackend, artifact: Path, feeds: list[dict[str, np.ndarray]], reference, runs: int) -> dict:
    with backend.open(artifact) as runner:
        outputs = np.concatenate([runner.infer(feed)[0] for feed in feeds])
        stats = runner.time(feeds[0], runs=runs, warmup=3)
    int8 = {k: v for k, v in kernel_counts(artifact).items() if "Integer" in k or k.startswith(("QLinear", "QGemm"))}
    similarity = cosine(outputs, reference) if reference is not None else np.ones(1)
    return {
        "ms": stats.median_ms,
        "p90": stats.p90_ms,
        "cos": float(similarity.mean()),
        "outputs": outputs,
        "int8": int8,
    }


def bench(name: str, runs: int, threads: int | None, folder: Path, weight_bits: int | None, bias: bool) -> None:
    start = time.perf_counter()
    path, batches, note = MODELS[name](folder)
    units = api.list_units(path)
    calibration = list(batches("calibration"))
    from trtmix.calibration.calibrate import calibrate_max, tensors_to_calibrate
    from trtmix.ir.graph import load_onnx

    model = load_onnx(path)
    ranges = calibrate_max(model, calibration, tensors_to_calibrate(model, units), progress=False)
    backend = OnnxRuntimeBackend(threads=threads)
    holdout = list(batches("holdout"))
    rows = {"FP32": _row(backend, backend.build(path, folder / f"{name}.fp32.ort.onnx"), holdout, None, runs)}
    reference = rows["FP32"]["outputs"]
    rows["FP32"]["cos"] = 1.0
    bits = {}
    for flavour in ("ort-cpu", "tensorrt"):
        bits_option = weight_bits if flavour == "ort-cpu" else None
        compiled = api.build(path, "int8", folder / f"{name}.{flavour}.onnx", flavour=flavour, ranges=ranges,
                             weight_bits=bits_option, bias_correction=bias)  # fmt: skip
        bits[flavour] = compiled.weight_bits
        artifact = backend.build(compiled.onnx_path, folder / f"{name}.{flavour}.ort.onnx")
        rows[f"all-INT8 {flavour}"] = _row(backend, artifact, holdout, reference, runs)
    base = rows["FP32"]["ms"]
    print(f"\n{name}: {len(units)} units, {backend.threads} threads, {runs} timed runs; {note}")
    print(f"int8 weights: ort-cpu {bits['ort-cpu']}-bit, tensorrt {bits['tensorrt']}-bit; "
          f"max ranges, no smoothing, bias correction {'on' if bias else 'off'}")  # fmt: skip
    print(f"{'plan':<22} {'median ms':>10} {'p90 ms':>8} {'FP32/plan':>10} {'cosine':>8}  int8 kernels")
    for label, row in rows.items():
        kernels = ", ".join(f"{v} {k}" for k, v in sorted(row["int8"].items())) or "-"
        print(
            f"{label:<22} {row['ms']:>10.1f} {row['p90']:>8.1f} {base / row['ms']:>9.2f}x {row['cos']:>8.4f}  {kernels}"
        )
    print(f"({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model (default 20)")
    parser.add_argument("--threads", type=int, help="ORT intra-op threads (default: all usable cores)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS), help="models to run")
    parser.add_argument("--weight-bits", type=int, choices=(7, 8),
                        help="ort-cpu int8 weight width (default: 8 with VNNI or AMX, else 7)")  # fmt: skip
    parser.add_argument("--no-bias-correction", action="store_true", help="as trtmix build --no-bias-correction")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    print(f"{cpu_features().describe()}; onnxruntime {ort.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="trtmix-bench-") as folder:
        for name in args.models:
            bench(name, args.runs, args.threads, Path(folder), args.weight_bits, not args.no_bias_correction)


if __name__ == "__main__":
    main()
