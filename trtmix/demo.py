"""``trtmix demo``: the embedded default job on MiniLM-L6, start to finish, with nothing but packages on disk.

Steps (each reuses its artifact if a previous run left it, so a killed demo resumes): export → units → calibrate →
compile the all-INT8 plan in both flavours → build with ONNX Runtime → time FP32 and INT8 → fidelity on held-out
sentences.  The ``ort-cpu`` flavour is the fast CPU engine; the ``tensorrt`` flavour simulates TensorRT's int8
numerics (it is not faster on a CPU, so only its fidelity is reported).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from trtmix import api
from trtmix.backends.onnxruntime import OnnxRuntimeBackend, kernel_counts
from trtmix.calibrate import CalibrationConfig
from trtmix.evaluate import cosine
from trtmix.io import atomic_write_text
from trtmix.ranges import Ranges

LOG = logging.getLogger(__name__)
INPUT_NAMES = ["input_ids", "attention_mask"]


def _export_once(path: Path) -> None:
    if path.is_file():
        LOG.info("reusing %s", path)
        return
    from trtmix.export import export_onnx
    from trtmix.models.minilm import minilm

    LOG.info("exporting MiniLM-L6 (batch 8, sequence 128) ...")
    model, samples = minilm()
    report = export_onnx(model, samples, path, input_names=INPUT_NAMES)
    LOG.info("exported with %s: max |onnx - torch| = %.2g", report.exporter, report.max_abs_diff)


def _ranges_once(model_path: Path, ranges_path: Path, batches: int) -> Ranges:
    if ranges_path.is_file():
        LOG.info("reusing %s", ranges_path)
        return Ranges.load(ranges_path)
    config = CalibrationConfig(batches=batches)
    ranges = api.collect_ranges(model_path, "trtmix.models.minilm:load_data", "calibration", config)
    ranges.save(ranges_path)
    return ranges


def _outputs(backend: OnnxRuntimeBackend, artifact: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    session = backend.session(artifact, optimize=False)
    return np.concatenate([session.run(None, feed)[0] for feed in feeds])


def run_minilm_demo(output: Path, runs: int = 20, batches: int = 4) -> dict[str, Any]:
    """Run the demo into ``output`` and print a summary; returns the summary it also writes to ``demo.json``."""
    from trtmix.models.minilm import load_data

    output.mkdir(parents=True, exist_ok=True)
    float_path = output / "minilm.onnx"
    _export_once(float_path)
    units = api.list_units(float_path)
    LOG.info("%d quantizable units", len(units))
    ranges = _ranges_once(float_path, output / "ranges.json", batches)
    backend = OnnxRuntimeBackend()
    holdout = list(load_data("holdout", batches=batches))
    artifacts = {"fp32": backend.build(float_path, output / "minilm.fp32.ort.onnx")}
    for flavour in ("ort-cpu", "tensorrt"):
        compiled = api.build(float_path, "int8", output / f"minilm.int8.{flavour}.onnx", flavour=flavour, ranges=ranges)
        artifacts[flavour] = backend.build(compiled.onnx_path, output / f"minilm.int8.{flavour}.ort.onnx")
    reference = _outputs(backend, artifacts["fp32"], holdout)
    summary: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2",
        "units": len(units),
        "holdout_sentences": len(reference),
        "threads": backend.threads,
        "results": {},
    }
    for name, artifact in artifacts.items():
        LOG.info("timing %s ...", name)
        stats = backend.time(artifact, holdout[0], runs=runs, warmup=3) if name != "tensorrt" else None
        similarity = cosine(_outputs(backend, artifact, holdout), reference)
        summary["results"][name] = {
            "median_ms": stats.median_ms if stats else None,
            "cosine_mean": float(similarity.mean()),
            "cosine_min": float(similarity.min()),
            "int8_kernels": {
                k: v for k, v in kernel_counts(artifact).items() if "Integer" in k or k.startswith("QLinear")
            },
        }
    atomic_write_text(output / "demo.json", json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, output)
    return summary


def _print_summary(summary: dict[str, Any], output: Path) -> None:
    results = summary["results"]
    base = results["fp32"]["median_ms"]
    print(
        f"\nMiniLM-L6, batch 8 × 128 tokens, ONNX Runtime CPU, {summary['threads']} threads, "
        f"{summary['units']} units, fidelity on {summary['holdout_sentences']} held-out sentences"
    )
    print(f"{'model':<26} {'median ms':>10} {'vs FP32':>8} {'cosine mean/min':>17}  int8 kernels")
    labels = {"fp32": "FP32", "ort-cpu": "all-INT8 (ort-cpu)", "tensorrt": "all-INT8 (tensorrt sim.)"}
    for name, result in results.items():
        ms = result["median_ms"]
        timing = f"{ms:>10.1f} {base / ms:>7.2f}x" if ms else f"{'-':>10} {'-':>8}"
        kernels = ", ".join(f"{v} {k}" for k, v in result["int8_kernels"].items()) or "-"
        print(f"{labels[name]:<26} {timing} {result['cosine_mean']:>8.4f}/{result['cosine_min']:.4f}  {kernels}")
    print(f"artifacts and demo.json in {output}/")
