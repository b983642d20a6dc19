"""The search on real models with ONNX Runtime, ratios measured in one run.

    python benchmarks/search.py [--models minilm efficientnet-lite0] [--runs 20]

For each model: `trtmix compile` (ort-cpu flavour, kl ordering) at the budget the search issue names: MiniLM-L6
cosine >= 99% of FP32, EfficientNet-Lite0 top-1 agreement >= 99.9%.  The table gives the chosen plan's latency as
a ratio to all-INT8 and to FP32 (the all-INT8 probe is always measured, first), the fidelity of each, the builds and
the wall time.  Goal: <= 1.10x the all-INT8 latency; the last column says whether it was met.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from trtmix.cli.commands import DEMOS
from trtmix.job.config import CompileConfig
from trtmix.job.run import run_compile
from trtmix.runtime.cpu import cpu_features
from trtmix.search.bisection import Budget

MODELS = DEMOS  # model → (factory, data recipe, metric, max drop, input names), shared with `trtmix demo`


def main() -> None:
    parser = argparse.ArgumentParser(description="trtmix compile on real models: chosen vs all-INT8 vs FP32")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--runs", type=int, default=20, help="timed runs per probe")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    print(f"{cpu_features().describe()}; ONNX Runtime, ort-cpu flavour, {args.runs} timed runs per probe", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="trtmix-search-bench-") as folder:
        for name in args.models:
            source, data, metric, drop, inputs = MODELS[name]
            config = CompileConfig(data=data, budget=Budget.parse(drop), metric=metric, runs=args.runs,
                                   input_names=inputs, flavour="ort-cpu", backend="onnxruntime",
                                   relative_to="fp32")  # fmt: skip
            report = run_compile(source, Path(folder) / name, config)
            rows.append((name, metric, drop, report))
    print(f"\n{'model':<19} {'metric':<9} {'budget':>7} {'k/U':>6} {'chosen ms':>9} {'/all-INT8':>9} {'/FP32':>6} "
          f"{'search':>8} {'holdout':>8} {'all-INT8':>8} {'builds':>6} {'wall s':>6}  goal")  # fmt: skip
    for name, metric, drop, report in rows:
        int8 = report["all_int8"]
        float_ms = report["baseline"]["latency"]["median_ms"]
        chosen = next((p for p in report["probes"] if p["plan_hash"] == report["chosen"]), None)
        if chosen is None:
            print(f"{name:<19} {metric:<9} {drop:>7}  no plan met the budget: {report['stop_reason']}")
            continue
        ms = chosen["latency"]["median_ms"]
        ratio = ms / int8["latency"]["median_ms"]
        goal = "met" if ratio <= 1.10 else "not met: no plan within 1.10x all-INT8 meets the budget"
        print(f"{name:<19} {metric:<9} {drop:>7} {report['chosen_k']:>3}/{report['unit_count']:<2} {ms:>9.1f} "
              f"{ratio:>8.2f}x {ms / float_ms:>5.2f}x {chosen['relative']:>8.4f} {report['holdout']['relative']:>8.4f} "
              f"{int8['relative']:>8.4f} {report['builds']:>6} {report['wall_seconds']:>6.0f}  {goal}")  # fmt: skip


if __name__ == "__main__":
    main()
