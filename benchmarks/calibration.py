"""Calibration methods compared: wall time, peak memory and the fidelity of the all-INT8 plan they produce.

    python benchmarks/calibration.py [--samples 256] [--models minilm efficientnet]

Each (model, method) calibration runs in a fresh worker process with the cache off, so its wall time and peak RSS
are its own (``VmHWM`` of /proc/self/status: unlike ``ru_maxrss`` it does not inherit the parent's high-water mark);
``rss before`` is the worker's RSS with the model loaded, before the first batch.
Fidelity: the all-INT8 plan in both flavours on held-out data never used for calibration: cosine to the FP32
embeddings (MiniLM-L6, 64 sentences) or top-1 agreement and KL to FP32 (EfficientNet-Lite0, 128 crops).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("max", "percentile", "entropy", "mse")
CALIB = Path(__file__).resolve().parents[1] / "calib"
RECIPES = {"minilm": str(CALIB / "minilm.py"), "efficientnet": str(CALIB / "efficientnet_lite0.py")}


def worker(model_path: str, recipe: str, method: str, batches: int, output: str) -> None:
    """Calibrate once and write timing, memory and ranges (run in its own process)."""
    from trtmix.calibration.calibrate import CalibrationConfig, calibrate
    from trtmix.data.recipes import load_batches
    from trtmix.ir.graph import load_onnx
    from trtmix.ir.units import find_units

    model = load_onnx(model_path)
    units = find_units(model)
    rss_before = _status_mb("VmRSS")
    start = time.perf_counter()
    ranges = calibrate(
        model,
        units,
        load_batches(recipe, "calibration", batches=str(batches)),
        CalibrationConfig(method=method, batches=batches),
        progress=False,
    )
    seconds = time.perf_counter() - start
    ranges.save(output)
    stats = {"seconds": seconds, "rss_before_mb": rss_before, "peak_mb": _status_mb("VmHWM")}
    Path(output + ".stats").write_text(json.dumps(stats))


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def export(name: str, folder: Path) -> Path:
    from trtmix.export import export_onnx

    if name == "minilm":
        from trtmix.models.minilm import minilm

        model, samples = minilm()
        names = ["input_ids", "attention_mask"]
    else:
        from trtmix.models.efficientnet import efficientnet_lite0

        model, samples = efficientnet_lite0()
        names = ["input"]
    path = folder / f"{name}.onnx"
    export_onnx(model, samples, path, input_names=names)
    return path


def fidelity(name: str, model_path: Path, ranges_path: Path, folder: Path) -> dict[str, float]:
    from trtmix import api
    from trtmix.calibration.ranges import Ranges
    from trtmix.data.recipes import load_batches
    from trtmix.evaluate import cosine, mean_kl, top1_agreement
    from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

    holdout = list(load_batches(RECIPES[name], "holdout", batches="8" if name == "minilm" else "16"))

    def outputs(path: Path) -> np.ndarray:
        with OnnxRuntimeRunner(path, optimize=True) as runner:
            return np.concatenate([runner.infer(feed)[0] for feed in holdout])

    reference = outputs(model_path)
    result = {}
    for flavour in ("tensorrt", "ort-cpu"):
        compiled = api.build(model_path, "int8", folder / f"{name}.{flavour}.onnx", flavour, Ranges.load(ranges_path))
        quantized = outputs(compiled.onnx_path)
        if name == "minilm":
            result[f"{flavour} cosine"] = float(cosine(quantized, reference).mean())
        else:
            result[f"{flavour} top-1"] = top1_agreement(quantized, reference)
            result[f"{flavour} KL"] = mean_kl(quantized, reference)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Calibration methods: time, memory, all-INT8 fidelity")
    parser.add_argument("--samples", type=int, default=256, help="calibration samples (batches of 8; default 256)")
    parser.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=["minilm", "efficientnet"])
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model_path, recipe, method, batches, output = args.worker
        worker(model_path, recipe, method, int(batches), output)
        return
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from trtmix.runtime.cpu import cpu_features

    print(cpu_features().describe(), flush=True)
    batches = args.samples // 8
    with tempfile.TemporaryDirectory(prefix="trtmix-calib-bench-") as tmp:
        folder = Path(tmp)
        for name in args.models:
            model_path = export(name, folder)
            print(f"\n{name}: {args.samples} calibration samples ({batches} batches of 8), held-out fidelity")
            header = None
            for method in METHODS:
                out = folder / f"{name}.{method}.json"
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        str(model_path),
                        RECIPES[name],
                        method,
                        str(batches),
                        str(out),
                    ],
                    check=True,
                )
                stats = json.loads(Path(str(out) + ".stats").read_text())
                scores = fidelity(name, model_path, out, folder)
                if header is None:
                    header = f"{'method':<11} {'seconds':>8} {'rss before MB':>14} {'peak MB':>8}  " + "  ".join(
                        f"{k:>15}" for k in scores
                    )
                    print(header)
                print(
                    f"{method:<11} {stats['seconds']:>8.1f} {stats['rss_before_mb']:>14.0f} {stats['peak_mb']:>8.0f}  "
                    + "  ".join(f"{v:>15.4f}" for v in scores.values())
                )


if __name__ == "__main__":
    main()
