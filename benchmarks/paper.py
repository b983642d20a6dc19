"""The seed paper's experiment, as far as it can run here: orderings compared along measured frontiers.

    python benchmarks/paper.py [--quick] [--models ...] [--output DIR]

For each model, each ordering and each budget (99.99%, 99.9%, 99% of the float model), ``trtmix compile``
(ONNX Runtime, ort-cpu flavour) chooses a plan.  The table gives:

* the chosen plan's latency as a ratio to the float model and to all-INT8;
* its accuracy on the search split and the holdout split;
* the probes the search used, and the wall time.

Per ordering, the normalised frontier area (hypervolume of all its probes, latency ÷ float and accuracy ÷ float,
in the box spanned by every probe of the model) is listed too.  ONNX Runtime's own ``quantize_static`` all-INT8
model, built and evaluated the same way, is the external baseline.

All runs of a model share one journal, so a plan measured once (by any ordering or budget) is never measured again.
``--quick`` (the smoke test runs it) does the digits ResNet only, with two orderings and one budget.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trtmix.job import run_compile
from trtmix.pipeline import CompileConfig, Pipeline
from trtmix.search import Budget, hypervolume

# name → (factory, data recipe, metric, input names, what the accuracy means)
MODELS = {
    "digits-resnet": ("trtmix.models.digits:small_resnet", "trtmix.models.digits:load_data", "accuracy", ("input",),
                      "top-1 accuracy on real labels (trained at benchmark time)"),
    "minilm": ("trtmix.models.minilm:minilm", "trtmix.models.minilm:load_data", "cosine",
               ("input_ids", "attention_mask"), "cosine to FP32 embeddings"),
    "efficientnet-lite0": ("trtmix.models.efficientnet:efficientnet_lite0", "trtmix.models.efficientnet:load_data",
                           "agreement", ("input",), "top-1 agreement with FP32"),
    "resnet50": ("trtmix.models.resnet:resnet50", f"{__file__}:random_images", "agreement", ("input",),
                 "random weights: latency only, the accuracy column means nothing"),
}  # fmt: skip
BUDGETS = {"99.99%": "0.01%", "99.9%": "0.1%", "99%": "1%"}
ORDERINGS = ("augmented-a", "hessian", "kl", "random", "random-1", "random-2")


def random_images(split: str = "calibration") -> Iterator[dict[str, np.ndarray]]:
    """Seeded random 224² batches of 8 for the latency-only ResNet-50."""
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(4):
        yield {"input": rng.standard_normal((8, 3, 224, 224)).astype(np.float32)}


def run_model(
    name: str, output: Path, orderings: tuple[str, ...], budgets: dict[str, str], runs: int
) -> dict[str, Any]:
    """Every (budget, ordering) search of one model, plus the quantize_static baseline."""
    source, data, metric, inputs, meaning = MODELS[name]
    rows, reports = [], {}
    for budget_name, drop in budgets.items():
        for ordering in orderings:
            config = CompileConfig(data=data, budget=Budget.parse(drop), metric=metric, ordering=ordering, runs=runs,
                                   input_names=inputs)  # fmt: skip
            start = time.perf_counter()
            report = run_compile(source, output / name, config)
            reports[ordering] = report
            rows.append((budget_name, ordering, report, time.perf_counter() - start))
    config = CompileConfig(data=data, budget=Budget.parse("1%"), metric=metric, runs=runs, input_names=inputs)
    return {
        "meaning": meaning,
        "rows": rows,
        "areas": _areas(reports),
        "baseline": _ort_baseline(source, output / name, config),
    }


def _areas(reports: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Normalised hypervolume of each ordering's probes, in the box spanned by every probe of the model."""
    points = {}
    for ordering, report in reports.items():
        float_ms = report["baseline"]["latency"]["median_ms"]
        points[ordering] = [(p["latency"]["median_ms"] / float_ms, p["relative"]) for p in report["orderings"][ordering]
                            if p["status"] == "ok"]  # fmt: skip
    everything = [pt for pts in points.values() for pt in pts]
    if not everything:
        return {}
    reference = (max(lat for lat, _ in everything) * 1.001, min(acc for _, acc in everything) - 1e-9)
    box = (reference[0] - min(lat for lat, _ in everything)) * (max(acc for _, acc in everything) - reference[1])
    return {name: hypervolume(pts, reference) / box if box > 0 else float("nan") for name, pts in points.items()}


def _ort_baseline(source: str, folder: Path, config: CompileConfig) -> dict[str, float]:
    """ONNX Runtime's quantize_static (QDQ, u8 activations, s8 per-channel 7-bit weights) on the same runtime."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    pipeline = Pipeline(source, folder, config)
    batches = iter(list(pipeline._feeds("calibration")))

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    quantized = folder / "ort_quantize_static.onnx"
    quantize_static(str(pipeline.model_path), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    artifact = pipeline.backend.build(quantized, folder / "ort_quantize_static.built.onnx")
    holdout = pipeline.evaluation.score("holdout", pipeline.outputs(artifact, "holdout"))
    stats = pipeline.backend.time(artifact, pipeline.evaluation.feeds["search"][0], config.runs, config.warmup)
    baseline = pipeline.baseline()
    return {
        "ms": stats.median_ms,
        "float_ms": baseline["latency"]["median_ms"],
        "holdout": holdout / baseline["holdout"],
    }


def print_model(name: str, result: dict[str, Any]) -> None:
    print(f"\n{name}: {result['meaning']}")
    header = ("budget", "ordering", "k/U", "ms", "÷float", "÷INT8", "search", "holdout", "probes", "wall s")
    print(" ".join(f"{h:>7}" if i != 1 else f"{h:<12}" for i, h in enumerate(header)))
    for budget, ordering, report, wall in result["rows"]:
        chosen = next((p for p in report["probes"] if p["plan_hash"] == report["chosen"]), None)
        if chosen is None:
            print(f"{budget:>7} {ordering:<12}  no plan met the budget ({report['stop_reason']})")
            continue
        ms, float_ms = chosen["latency"]["median_ms"], report["baseline"]["latency"]["median_ms"]
        int8 = report["all_int8"]["latency"]["median_ms"] if report["all_int8"] else float("nan")
        k = f"{report['chosen_k']}/{report['unit_count']}"
        cells = f"{ms:>7.2f} {ms / float_ms:>7.2f} {ms / int8:>7.2f} {chosen['relative']:>7.4f}"
        print(
            f"{budget:>7} {ordering:<12} {k:>7} {cells} {report['holdout']['relative']:>7.4f} "
            f"{len(report['orderings'][ordering]):>7} {wall:>7.0f}"
        )
    areas = ", ".join(f"{k} {v:.3f}" for k, v in result["areas"].items())
    print(f"normalised frontier area (higher is better): {areas}")
    ort = result["baseline"]
    print(
        f"ORT quantize_static all-INT8: {ort['ms']:.2f} ms ({ort['ms'] / ort['float_ms']:.2f}x float), "
        f"holdout {ort['holdout']:.4f} of float"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Orderings compared along measured frontiers (seed paper experiment)")
    parser.add_argument(
        "--quick", action="store_true", help="digits ResNet only, kl and random, budget 99%% (smoke test)"
    )
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="models (default: all)")
    parser.add_argument("--output", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per probe (default: 20)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    models = ["digits-resnet"] if args.quick else (args.models or list(MODELS))
    orderings = ("kl", "random") if args.quick else ORDERINGS
    budgets = {"99%": BUDGETS["99%"]} if args.quick else BUDGETS
    runs = 3 if args.quick else args.runs
    with tempfile.TemporaryDirectory(prefix="trtmix-paper-") as temporary:
        output = args.output or Path(temporary)
        for name in models:
            print_model(name, run_model(name, output, orderings, budgets, runs))


if __name__ == "__main__":
    main()
