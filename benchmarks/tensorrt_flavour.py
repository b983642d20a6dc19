"""The tensorrt flavour on OpenVINO: FP32, all-FP16, all-INT8 and the search, ratios measured in one run.

    python benchmarks/tensorrt_flavour.py [--models minilm efficientnet-lite0 digits-resnet] [--runs 30] [--threads 2]

For each model, one `trtmix compile` job (tensorrt flavour, OpenVINO backend, kl ordering) in a temporary folder:

* latency of the exported FP32 model, the all-FP16 plan (at the timing precision, bf16 where the CPU has it, and
  again at f32) and the all-INT8 plan, each with its fidelity to FP32;
* how many INT8 units OpenVINO's runtime model shows running int8 (the exceptions named, with their reason);
* the search at 99.9% and 99% of the all-FP16 plan: chosen k, latency ratios, search and holdout fidelity;
* the accuracy engine: the all-FP16 and all-INT8 graphs scored by OpenVINO at f32 (what trtmix uses on VNNI
  machines), by OpenVINO at bf16, and by ONNX Runtime on the same graph (exact float16 semantics).

Targets (the OpenVINO issue, on a VNNI machine): all-INT8 <= 0.35x FP32 on MiniLM and <= 0.45x on EfficientNet, and
<= 0.60x the all-FP16 (bf16) latency on MiniLM where bf16 is native.  The CPU line says which machine this was.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper import MODELS  # noqa: E402

from trtmix.job.config import CompileConfig  # noqa: E402
from trtmix.job.outputs import holdout_check  # noqa: E402
from trtmix.job.pipeline import Pipeline  # noqa: E402
from trtmix.quant.plan import PrecisionPlan  # noqa: E402
from trtmix.runtime.cpu import cpu_features  # noqa: E402
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from trtmix.runtime.openvino import OpenVinoBackend  # noqa: E402
from trtmix.search.bisection import Budget  # noqa: E402

BUDGETS = {"99.9%": "0.1%", "99%": "1%"}
TARGETS = {"minilm": (0.35, 0.60), "efficientnet-lite0": (0.45, None)}  # all-INT8 / FP32, all-INT8 / all-FP16


def _fidelity(pipeline: Pipeline, outputs: np.ndarray) -> float:
    """The job's metric of ``outputs`` against FP32 on the search split."""
    return pipeline.evaluation.score("search", outputs)


def _engine_outputs(pipeline: Pipeline, artifact: Path) -> dict[str, float]:
    """The same graph scored by OpenVINO at f32 and bf16 and by ONNX Runtime."""
    feeds = pipeline.evaluation.feeds["search"]
    backend: OpenVinoBackend = pipeline.backend  # type: ignore[assignment]
    result = {}
    for precision in ("f32", "bf16"):
        request = backend.compile(artifact, precision).create_infer_request()
        outputs = [np.array(request.infer(f)[request.model_outputs[0]]) for f in feeds]
        result[f"openvino {precision}"] = _fidelity(pipeline, np.concatenate(outputs))
    with OnnxRuntimeRunner(artifact, backend.threads) as runner:
        result["onnxruntime"] = _fidelity(pipeline, np.concatenate([runner.infer(f)[0] for f in feeds]))
    return result


def run_model(name: str, folder: Path, runs: int, threads: int | None) -> dict[str, Any]:
    spec = MODELS[name]
    started = time.perf_counter()
    config = CompileConfig(data=spec.data, budget=Budget.parse("1%"), metric=spec.metric, runs=runs,
                           input_names=spec.inputs, eval_batches=spec.eval_batches, flavour="tensorrt",
                           backend="openvino", relative_to="high", threads=threads)  # fmt: skip
    pipeline = Pipeline(spec.source, folder / name, config)
    baseline = pipeline.baseline()
    units = [u.name for u in pipeline.units]
    all_int8 = PrecisionPlan.with_int8(units)
    int8 = pipeline.measure(all_int8)
    checks = pipeline.driver.precision_checks(all_int8, Path(int8["artifact"])) or []
    high_artifact = pipeline.build(PrecisionPlan())
    high_f32 = OpenVinoBackend(threads, precision="f32").time(high_artifact, pipeline.evaluation.feeds["search"][0],
                                                              runs, config.warmup)  # fmt: skip
    searches = {}
    for label, drop in BUDGETS.items():
        search = pipeline.search("kl", baseline["accuracy"], Budget.parse(drop))
        best = search.best()
        plan = search.plan_for(best.k) if best else None
        record = pipeline.measure(plan) if plan else None
        holdout = holdout_check(pipeline.driver, plan, baseline)["relative"] if plan is not None else None
        searches[label] = {"k": best.k if best else None, "record": record, "holdout": holdout,
                           "builds": len(search.probes)}  # fmt: skip
    return {
        "name": name, "units": len(units), "baseline": baseline, "int8": int8, "high_f32_ms": high_f32.median_ms,
        "checks": checks, "searches": searches, "seconds": time.perf_counter() - started,
        "engines": {"all-FP16": _engine_outputs(pipeline, high_artifact),
                    "all-INT8": _engine_outputs(pipeline, Path(int8["artifact"]))},
        "precision": pipeline.backend.precision,  # type: ignore[attr-defined]
    }  # fmt: skip


def _print(results: list[dict[str, Any]]) -> None:
    print(f"\n{cpu_features().describe()}; OpenVINO timing precision {results[0]['precision']}\n")
    print(
        "| model | units | FP32 ms | all-FP16 ms (f32 hint) | all-INT8 ms | INT8 / FP32 | INT8 / FP16 | "
        "all-INT8 fidelity | verified int8 | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        fp32 = r["baseline"]["fp32"]["latency"]["median_ms"]
        high = r["baseline"]["all_high"]["latency"]["median_ms"]
        int8 = r["int8"]["latency"]["median_ms"]
        planned = [c for c in r["checks"] if c.planned == "int8"]
        verified = sum(c.verified for c in planned)
        targets = TARGETS.get(r["name"])
        goal = "–"
        if targets:
            met = int8 / fp32 <= targets[0] and (targets[1] is None or int8 / high <= targets[1])
            goal = (
                ("met" if met else "missed")
                + f" (≤ {targets[0]}x FP32"
                + (f", ≤ {targets[1]}x FP16)" if targets[1] else ")")
            )
        print(f"| {r['name']} | {r['units']} | {fp32:.1f} | {high:.1f} ({r['high_f32_ms']:.1f}) | {int8:.1f} | "
              f"{int8 / fp32:.2f}x | {int8 / high:.2f}x | {r['int8']['accuracy']:.4f} | {verified}/{len(planned)} | "
              f"{goal} |")  # fmt: skip
        for check in planned:
            if not check.verified:
                reason = (f"fused into one {check.layer} layer with {', '.join(check.fused_with)}" if check.fused_with
                          else f"engine reports {check.engine}")  # fmt: skip
                print(f"|   not verified: `{check.unit}`: {reason} |")
    print("\n| model | budget (of all-FP16) | chosen k | chosen ms | / all-FP16 | / FP32 | search | holdout | probes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        high = r["baseline"]["all_high"]["latency"]["median_ms"]
        fp32 = r["baseline"]["fp32"]["latency"]["median_ms"]
        for label, s in r["searches"].items():
            if s["record"] is None:
                print(f"| {r['name']} | {label} | no plan met the budget | | | | | | {s['builds']} |")
                continue
            ms = s["record"]["latency"]["median_ms"]
            relative = s["record"]["accuracy"] / r["baseline"]["accuracy"]
            print(f"| {r['name']} | {label} | {s['k']}/{r['units']} | {ms:.1f} | {ms / high:.2f}x | {ms / fp32:.2f}x | "
                  f"{relative:.4%} | {s['holdout']:.4%} | {s['builds']} |")  # fmt: skip
    print("\n| model | graph | OpenVINO f32 | OpenVINO bf16 | ONNX Runtime (float16 semantics) |")
    print("|---|---|---|---|---|")
    for r in results:
        for graph, scores in r["engines"].items():
            print(
                f"| {r['name']} | {graph} | {scores['openvino f32']:.4f} | {scores['openvino bf16']:.4f} | "
                f"{scores['onnxruntime']:.4f} |"
            )
    print("\n" + ", ".join(f"{r['name']} {r['seconds']:.0f} s" for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description="tensorrt flavour on OpenVINO: FP32 / all-FP16 / all-INT8 / search")
    parser.add_argument("--models", nargs="+", choices=("minilm", "efficientnet-lite0", "digits-resnet"),
                        default=["minilm", "efficientnet-lite0", "digits-resnet"])  # fmt: skip
    parser.add_argument("--runs", type=int, default=30, help="timed runs per probe")
    parser.add_argument("--threads", type=int, default=None, help="OpenVINO threads (default: all usable cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="trtmix-openvino-bench-") as folder:
        results = [run_model(name, Path(folder), args.runs, args.threads) for name in args.models]
    _print(results)


if __name__ == "__main__":
    main()
