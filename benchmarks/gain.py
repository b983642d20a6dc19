"""Latency-aware ordering: `gain` (kl divergence per ms saved) against `kl`, on the tensorrt flavour's CPU engine.

    python benchmarks/gain.py [--models minilm efficientnet-lite0 digits-resnet] [--runs 20] [--json gain.json]

For each model, one `trtmix compile` job (tensorrt flavour, OpenVINO, budgets relative to the all-FP16 plan):

* the per-unit latency model from OpenVINO's per-layer profile of the all-FP16 and all-INT8 builds: units attributed,
  and the relative error of its predictions over every plan this run measured (the search never uses them);
* each ordering's plans at 25%, 50% and 75% of the units INT8: accuracy and latency (ratio to FP32 and to all-FP16);
* the frontier area of each ordering's measured points (latency ÷ all-FP16 against accuracy ÷ all-FP16, in the box
  spanned by all of the model's points; higher is better);
* the search at 99.9% and 99% with each ordering: chosen k and latency ratios.

The CPU line says which machine this was. Every number comes from this one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper import MODELS  # noqa: E402

from trtmix.job.config import CompileConfig  # noqa: E402
from trtmix.job.latency import add_predictions  # noqa: E402
from trtmix.job.pipeline import Pipeline  # noqa: E402
from trtmix.quant.plan import PrecisionPlan  # noqa: E402
from trtmix.runtime.cpu import cpu_features  # noqa: E402
from trtmix.search.bisection import Budget, hypervolume  # noqa: E402

ORDERINGS = ("gain", "kl")
FRACTIONS = (0.25, 0.5, 0.75)
BUDGETS = {"99.9%": "0.1%", "99%": "1%"}


def run_model(name: str, folder: Path, runs: int) -> dict[str, Any]:
    """The sweep, the searches and the latency model's check for one model."""
    spec = MODELS[name]
    config = CompileConfig(data=spec.data, budget=Budget.parse("1%"), metric=spec.metric, ordering="gain",
                           compare=("kl",), runs=runs, input_names=spec.inputs,
                           eval_batches=spec.eval_batches)  # fmt: skip
    pipeline = Pipeline(spec.source, folder / name, config)
    baseline = pipeline.baseline()
    high_ms, fp32_ms = baseline["all_high"]["latency"]["median_ms"], baseline["fp32"]["latency"]["median_ms"]
    model = pipeline.latency_model()
    records: dict[str, dict[str, Any]] = {}
    sweep: dict[str, list[dict[str, Any]]] = {}
    units = len(pipeline.units)
    for ordering in ORDERINGS:
        order, _ = pipeline.order(ordering)
        sweep[ordering] = []
        for fraction in (0.0, *FRACTIONS, 1.0):
            k = round(fraction * units)
            record = pipeline.measure(PrecisionPlan.with_int8(order[:k]), k)
            records[record["plan_hash"]] = record
            sweep[ordering].append(_point(record, baseline, high_ms, fp32_ms, fraction))
    searches = {}
    for budget_name, drop in BUDGETS.items():
        for ordering in ORDERINGS:
            search = pipeline.search(ordering, baseline["accuracy"], Budget.parse(drop))
            for k in search.probes:
                record = pipeline.journal.get(search.plan_for(k).stable_hash())
                if record:
                    records[record["plan_hash"]] = record
            best = search.best()
            searches[f"{ordering} @ {budget_name}"] = {
                "k": best.k if best else None, "latency_vs_fp32": best.latency_ms / fp32_ms if best else None,
                "latency_vs_high": best.latency_ms / high_ms if best else None,
                "accuracy": best.relative if best else None, "probes": len(search.probes)}  # fmt: skip
    probes = [dict(r) for r in records.values()]
    errors = add_predictions(model, probes, high_ms) if model else None
    seconds = {o: pipeline.ordering_seconds(o) for o in ORDERINGS}
    pipeline.close()
    return {"model": name, "units": units, "fp32_ms": fp32_ms, "high_ms": high_ms, "sweep": sweep,
            "areas": _areas(sweep), "searches": searches, "latency_model_errors": errors,
            "unattributed": model.unattributed if model else None, "ordering_seconds": seconds}  # fmt: skip


def _point(record: dict[str, Any], baseline: dict[str, Any], high_ms: float, fp32_ms: float, fraction: float) -> dict:
    ms = record["latency"]["median_ms"] if record["status"] == "ok" else None
    return {"fraction": fraction, "k": record["k"], "ms": ms,
            "accuracy": record["accuracy"] / baseline["accuracy"] if record["status"] == "ok" else None,
            "vs_fp32": ms / fp32_ms if ms else None, "vs_high": ms / high_ms if ms else None}  # fmt: skip


def _areas(sweep: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Normalised frontier area of each ordering's points (see the module docstring)."""
    points = {o: [(p["vs_high"], p["accuracy"]) for p in pts if p["ms"]] for o, pts in sweep.items()}
    everything = [point for pts in points.values() for point in pts]
    reference = (max(lat for lat, _ in everything) * 1.001, min(acc for _, acc in everything) - 1e-9)
    box = (reference[0] - min(lat for lat, _ in everything)) * (max(acc for _, acc in everything) - reference[1])
    return {o: hypervolume(pts, reference) / box if box > 0 else float("nan") for o, pts in points.items()}


def markdown(result: dict[str, Any]) -> str:
    """The model's tables."""
    lines = [f"### {result['model']} ({result['units']} units; FP32 {result['fp32_ms']:.2f} ms, all-FP16 "
             f"{result['high_ms']:.2f} ms)", ""]  # fmt: skip
    errors = result["latency_model_errors"] or {}
    lines.append(f"Latency model: {len(result['unattributed'] or [])} units unattributed; predictions off by "
                 f"{errors.get('median_abs', float('nan')):.1%} median, {errors.get('max_abs', float('nan')):.1%} max "
                 f"over {errors.get('probes', 0)} measured plans. Ordering seconds: {result['ordering_seconds']}.")
    lines += ["", "| ordering | INT8 share | k | accuracy (÷ all-FP16) | ms | ÷ FP32 | ÷ all-FP16 |",
              "|---|---|---|---|---|---|---|"]
    for ordering, points in result["sweep"].items():
        for p in points[1:-1]:
            lines.append(f"| {ordering} | {p['fraction']:.0%} | {p['k']} | {_f(p['accuracy'], 5)} | {_f(p['ms'], 2)} | "
                         f"{_f(p['vs_fp32'], 2)} | {_f(p['vs_high'], 2)} |")
    lines += ["", "| ordering | frontier area |", "|---|---|"]
    lines += [f"| {o} | {area:.3f} |" for o, area in result["areas"].items()]
    lines += ["", "| search | k | accuracy | ÷ FP32 | ÷ all-FP16 | probes |", "|---|---|---|---|---|---|"]
    for label, s in result["searches"].items():
        lines.append(f"| {label} | {s['k']} | {_f(s['accuracy'], 5)} | {_f(s['latency_vs_fp32'], 2)} | "
                     f"{_f(s['latency_vs_high'], 2)} | {s['probes']} |")
    return "\n".join(lines)


def _f(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "efficientnet-lite0", "digits-resnet"],
                        choices=sorted(MODELS))  # fmt: skip
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(cpu_features().describe())
    results = []
    with tempfile.TemporaryDirectory(prefix="trtmix-gain-") as folder:
        for name in args.models:
            print(f"{name}...", file=sys.stderr, flush=True)
            results.append(run_model(name, Path(folder), args.runs))
            print(markdown(results[-1]) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
