"""Graphs made elsewhere, at real size: every step of trtmix on `transformers` models exported by torch directly.

    python benchmarks/zoo.py [--models bert distilbert gpt2 vit resnet mobilenetv2] [--exporters dynamo legacy]
                             [--runs 20] [--threads 2] [--json zoo.json] [--size real|small]

Each model is the published architecture (BERT-base, DistilBERT-base, GPT-2 small, ViT-B/16, ResNet-50, MobileNetV2
1.0) from its `transformers` config at seeded random init (no download), batch 1 x 128 tokens or 1 x 3 x 224 x 224,
exported by `torch.onnx.export` as a user calls it (`trtmix.models.zoo.export_as_user`). For each graph:

* the seconds of export, `units`, calibration, the all-INT8 build in both flavours, and `compile --max-drop 1%`
  (tensorrt flavour on OpenVINO, kl ordering, computed only if the search needs it);
* latency of FP32, the all-16-bit plan and all-INT8, on OpenVINO (tensorrt flavour, the graph TensorRT gets) and on
  ONNX Runtime (ort-cpu flavour), each timed here in one run, with ratios to FP32;
* all-INT8 fidelity to the model's own FP32 outputs (cosine for text, top-1 agreement for images): these are random
  weights, so it is fidelity, not task accuracy.

The CPU flags are printed with the table. Steps that fail are reported with their error and the run goes on.
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

from trtmix import api
from trtmix.calibration.calibrate import CalibrationConfig
from trtmix.calibration.collect import collect_ranges
from trtmix.data.recipes import load_batches
from trtmix.errors import TrtmixError
from trtmix.evaluate import cosine, top1_agreement
from trtmix.job.config import CompileConfig
from trtmix.models.zoo import SHAPES, VOCAB, ZOO, export_as_user, zoo_model
from trtmix.runtime.cpu import cpu_features
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner
from trtmix.search.bisection import Budget

RECIPE = str(Path(__file__).resolve().parents[1] / "calib" / "zoo.py")


def data_args(kind: str, size: str) -> dict[str, str]:
    """The recipe's shapes for the models of ``size``."""
    shape = SHAPES[size]
    return {"kind": kind, "batch": str(shape["batch"]), "sequence": str(shape["sequence"]),
            "image": str(shape["image"]), "vocab": str(VOCAB[size]), "batches": "8"}  # fmt: skip


def fidelity(kind: str, path: Path, reference_path: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    """Cosine (text) or top-1 agreement (images) of ``path``'s first output with the FP32 model's, on ONNX Runtime."""
    outputs = []
    for model in (path, reference_path):
        with OnnxRuntimeRunner(model, optimize=True) as runner:
            outputs.append(np.concatenate([runner.infer(feed)[0] for feed in feeds]))
    if kind == "text":
        return float(cosine(outputs[0], outputs[1]).mean())
    return top1_agreement(outputs[0], outputs[1])


class Timer:
    """Seconds per named step, and the error of a step that failed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.errors: dict[str, str] = {}

    def run(self, step: str, action: Any) -> Any:
        start = time.perf_counter()
        try:
            return action()
        except (TrtmixError, RuntimeError, ValueError) as err:
            self.errors[step] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            return None
        finally:
            self.seconds[step] = round(time.perf_counter() - start, 1)


def one_graph(name: str, exporter: str, folder: Path, runs: int, threads: int, size: str) -> dict[str, Any]:
    """Every step on one exported graph; see the module docstring."""
    timer = Timer()
    model = zoo_model(name, size)
    path = timer.run("export", lambda: export_as_user(model, folder / f"{name}.{exporter}.onnx", exporter))
    row: dict[str, Any] = {"model": name, "exporter": exporter, "timer": timer}
    if path is None:
        return row
    args = data_args(model.kind, size)
    units = timer.run("units", lambda: api.list_units(path))
    row["units"] = len(units) if units else None
    calibration = CalibrationConfig()
    ranges = timer.run("calibrate", lambda: collect_ranges(path, RECIPE, "calibration", calibration, data_args=args))
    built = {}
    for flavour in ("tensorrt", "ort-cpu"):
        for plan in ("int8", "fp16") if flavour == "tensorrt" else ("int8",):
            target = folder / f"{name}.{exporter}.{plan}.{flavour}.onnx"
            step = f"build {plan} {flavour}"
            if timer.run(step, lambda p=plan, t=target, f=flavour: api.build(path, p, t, f, ranges)):
                built[(plan, flavour)] = target
    feeds = list(load_batches(RECIPE, "search", **args))[:4]
    row["latency_ms"] = latencies(path, built, feeds[0], runs, threads, timer)
    row["fidelity"] = {f"int8 {flavour}": fidelity(args["kind"], built[("int8", flavour)], path, feeds)
                       for flavour in ("tensorrt", "ort-cpu") if ("int8", flavour) in built}  # fmt: skip
    row["compile"] = timer.run("compile", lambda: compile_job(path, args, folder / f"{name}.{exporter}.job", runs))
    return row


def latencies(
    path: Path, built: dict[tuple[str, str], Path], feed: dict[str, np.ndarray], runs: int, threads: int, timer: Timer
) -> dict[str, float | None]:
    """Median latency of FP32, all-16-bit and all-INT8 on each engine (None where a build or a run failed)."""
    cases = {"openvino fp32": (path, "openvino"), "openvino fp16 plan": (built.get(("fp16", "tensorrt")), "openvino"),
             "openvino int8": (built.get(("int8", "tensorrt")), "openvino"), "onnxruntime fp32": (path, "onnxruntime"),
             "onnxruntime int8": (built.get(("int8", "ort-cpu")), "onnxruntime")}  # fmt: skip
    result: dict[str, float | None] = {}
    for label, (graph, backend) in cases.items():
        stats = None if graph is None else timer.run(
            f"profile {label}", lambda g=graph, b=backend: api.profile(g, feed, b, runs, threads=threads))
        result[label] = round(stats.median_ms, 2) if stats else None
    return result


def compile_job(path: Path, args: dict[str, str], output: Path, runs: int) -> dict[str, Any]:
    """`trtmix compile --max-drop 1%` with the defaults (tensorrt flavour, backend auto, kl ordering)."""
    kind = args["kind"]
    config = CompileConfig(data=RECIPE, budget=Budget.parse("1%"), metric="cosine" if kind == "text" else "agreement",
                           data_args=tuple(sorted(args.items())), runs=runs)  # fmt: skip
    report = api.compile(str(path), output, config, fresh=True).report
    return {"chosen_k": report["chosen_k"], "stop": report["stop_reason"], "builds": report["builds"],
            "ordering_computed": report["orderings_computed"].get("kl"), "backend": report["backend"],
            "wall_seconds": round(report["wall_seconds"], 1), "peak_rss_mb": report["peak_rss_mb"]}  # fmt: skip


def ratio(value: float | None, base: float | None) -> str:
    return f"{value:.2f} ({value / base:.2f}x)" if value and base else "failed"


def print_tables(rows: list[dict[str, Any]]) -> None:
    """The steps table and the latency table, in markdown."""
    print(f"\n{cpu_features().describe()}\n")
    print("| model | exporter | units | export s | calibrate s | build int8 (tensorrt / ort-cpu) s | compile s | "
          "compile result | peak RSS MiB (process so far) | errors |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        t: Timer = row["timer"]
        job = row.get("compile") or {}
        result = (f"k={job['chosen_k']}, {job['builds']} builds, ordering "
                  f"{'computed' if job['ordering_computed'] else 'not needed'}; {job['stop']}") if job else "failed"
        builds = f"{t.seconds.get('build int8 tensorrt', '-')} / {t.seconds.get('build int8 ort-cpu', '-')}"
        errors = "; ".join(f"{step}: {error}" for step, error in t.errors.items()) or "none"
        print(f"| {row['model']} | {row['exporter']} | {row.get('units')} | {t.seconds.get('export')} | "
              f"{t.seconds.get('calibrate', '-')} | {builds} | {t.seconds.get('compile', '-')} | {result} | "
              f"{job.get('peak_rss_mb', '-')} | {errors} |")
    print("\nLatency, median ms (ratio to FP32 on the same engine); fidelity of all-INT8 to the model's own FP32\n")
    print("| model | exporter | OpenVINO FP32 | OpenVINO all-16-bit | OpenVINO all-INT8 | ORT FP32 | ORT all-INT8 | "
          "fidelity int8 tensorrt / ort-cpu |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        ms = row.get("latency_ms") or {}
        ov, ort = ms.get("openvino fp32"), ms.get("onnxruntime fp32")
        fid = row.get("fidelity") or {}
        print(f"| {row['model']} | {row['exporter']} | {ov} | {ratio(ms.get('openvino fp16 plan'), ov)} | "
              f"{ratio(ms.get('openvino int8'), ov)} | {ort} | {ratio(ms.get('onnxruntime int8'), ort)} | "
              f"{fid.get('int8 tensorrt', float('nan')):.4f} / {fid.get('int8 ort-cpu', float('nan')):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=ZOO)
    parser.add_argument("--exporters", nargs="+", default=["dynamo", "legacy"], choices=["dynamo", "legacy"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--size", default="real", choices=["real", "small"], help="small: the test suite's configs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="trtmix-zoo-") as folder:
        for name in args.models:
            for exporter in args.exporters:
                print(f"{name} ({exporter})...", file=sys.stderr, flush=True)
                rows.append(one_graph(name, exporter, Path(folder), args.runs, args.threads, args.size))
    print_tables(rows)
    if args.json:
        serial = [{**r, "timer": {"seconds": r["timer"].seconds, "errors": r["timer"].errors}} for r in rows]
        args.json.write_text(json.dumps(serial, indent=2))


if __name__ == "__main__":
    main()
