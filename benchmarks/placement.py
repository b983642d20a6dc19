"""Q/DQ placement in the tensorrt flavour: trtmix's rule against NVIDIA ModelOpt's, all-INT8, on the same engine.

    python benchmarks/placement.py [--models minilm digits-resnet] [--rounds 15] [--threads 2]

Per model, one `trtmix compile` job's settings (tensorrt flavour, OpenVINO backend, its calibration and quantizer
choices); the all-INT8 plan compiled twice, ``TensorRTFlavour(placement="trtmix")`` and ``placement="modelopt"``
(``trtmix.quant.flavours``: ModelOpt also quantizes the unit-output input of residual Adds behind MatMul/Gemm units),
with the same ranges.  Printed per placement:

* the metric against FP32 on the search split, scored by ONNX Runtime (exact float16 semantics, the oracle) and by
  OpenVINO at f32 and at its timing precision (bf16 where the CPU has it);
* OpenVINO latency: both artifacts timed in the same interleaved rounds (``--rounds``, ``ROUND_RUNS`` runs each per
  round, median of the round medians), so the ratio compares like with like on a shared machine; the load average
  before and after is printed beside it, because other work on the same cores moves absolute figures;
* the precision OpenVINO's runtime model reports for the layer that runs each residual Add behind a unit, with the
  element types of its inputs (where the two placements differ);
* ``modelopt, entropy``: the modelopt graph with the Q/DQ it adds ranged by the entropy method (ModelOpt's default
  calibrator) instead of the job's, scored only, so the placement is not judged by a range method it does not use.

Where the two placements put the same Q/DQ in a model (CNNs whose residual Adds all follow convs), it says so and
measures nothing.

The CPU line says which machine this was.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper import MODELS  # noqa: E402

from trtmix.ir.graph import two_activation_adds  # noqa: E402
from trtmix.job.config import CompileConfig  # noqa: E402
from trtmix.job.pipeline import Pipeline  # noqa: E402
from trtmix.quant.flavours import PLACEMENTS, TensorRTFlavour  # noqa: E402
from trtmix.quant.plan import PrecisionPlan  # noqa: E402
from trtmix.runtime.cpu import cpu_features  # noqa: E402
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from trtmix.runtime.openvino import OpenVinoBackend  # noqa: E402
from trtmix.search.bisection import Budget  # noqa: E402

ROUND_RUNS = 10


def _added_tensors(pipeline: Pipeline) -> set[str]:
    """The activations the modelopt placement quantizes and the default does not (all-INT8 plan)."""
    sites = {p: TensorRTFlavour(p).sites(pipeline.model, pipeline.units, None).activations for p in PLACEMENTS}
    return {t for t, readers in sites["modelopt"].items() if readers - sites["trtmix"].get(t, set())}


def _artifacts(pipeline: Pipeline, added: set[str]) -> dict[str, Path]:
    """The all-INT8 plan built once per placement with the job's ranges, and modelopt's with entropy ranges."""
    plan = PrecisionPlan.with_int8([unit.name for unit in pipeline.units])
    built = {placement: pipeline._builder(pipeline.ranges, TensorRTFlavour(placement)).build(plan).artifact
             for placement in PLACEMENTS}  # fmt: skip
    entropy = pipeline._calibrated(replace(pipeline.config.calibration, method="entropy"))
    ranges = replace(pipeline.ranges, tensors={**pipeline.ranges.tensors, **{t: entropy.tensors[t] for t in added}})
    built["modelopt, entropy"] = pipeline._builder(ranges, TensorRTFlavour("modelopt")).build(plan).artifact
    return built


def _scores(pipeline: Pipeline, artifact: Path) -> dict[str, float]:
    """The job's metric of ``artifact`` on the search split: ONNX Runtime, OpenVINO f32, OpenVINO timing precision."""
    feeds = pipeline.evaluation.feeds["search"]
    backend: OpenVinoBackend = pipeline.backend  # type: ignore[assignment]
    scores = {}
    with OnnxRuntimeRunner(artifact, backend.threads) as runner:
        outputs = np.concatenate([runner.infer(f)[0] for f in feeds])
    scores["onnxruntime"] = pipeline.evaluation.score("search", outputs)
    for precision in dict.fromkeys(("f32", backend.precision)):
        request = backend.compile(artifact, precision).create_infer_request()
        outputs = np.concatenate([np.array(request.infer(f)[request.model_outputs[0]]) for f in feeds])
        scores[f"openvino {precision}"] = pipeline.evaluation.score("search", outputs)
    return scores


def _add_layers(pipeline: Pipeline, artifact: Path) -> dict[str, int]:
    """How many residual Adds behind a unit run as each (layer type, runtime precision, input types) in OpenVINO.

    Read from the runtime model at the timing precision: the input element types show which inputs arrive int8.
    """
    outputs = {unit.output for unit in pipeline.units}
    adds = {node.name for node, inputs in two_activation_adds(pipeline.model) if set(inputs) & outputs}
    backend: OpenVinoBackend = pipeline.backend  # type: ignore[assignment]
    counts: dict[str, int] = {}
    for op in backend.compile(artifact, backend.precision).get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        fused = set(str(info["originalLayersNames"].astype(str)).split(","))
        for _ in adds & fused:
            types = "/".join(sorted(op.input(i).get_element_type().get_type_name() for i in range(op.get_input_size())))
            key = f"{info['layerType'].astype(str)} {info['runtimePrecision'].astype(str)} ({types})"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _interleaved(pipeline: Pipeline, artifacts: dict[str, Path], rounds: int) -> dict[str, list[float]]:
    """Each artifact's median of ``ROUND_RUNS`` runs, per round, the artifacts taking turns within every round."""
    backend: OpenVinoBackend = pipeline.backend  # type: ignore[assignment]
    feed = pipeline.evaluation.feeds["search"][0]
    runners = {label: backend.open(path) for label, path in artifacts.items()}
    medians: dict[str, list[float]] = {label: [] for label in artifacts}
    try:
        for round_index in range(rounds):
            order = list(runners) if round_index % 2 == 0 else list(reversed(runners))  # neither always goes first
            for label in order:
                medians[label].append(runners[label].time(feed, ROUND_RUNS, 2).median_ms)
    finally:
        for runner in runners.values():
            runner.close()
    return medians


def run_model(name: str, folder: Path, rounds: int, threads: int | None) -> dict[str, Any]:
    """Both placements of one model: scores, Add precisions and interleaved latency."""
    spec = MODELS[name]
    started = time.perf_counter()
    config = CompileConfig(data=spec.data, budget=Budget.parse("1%"), metric=spec.metric, runs=5,
                           input_names=spec.inputs, eval_batches=spec.eval_batches, flavour="tensorrt",
                           backend="openvino", threads=threads, final_rounds=0)  # fmt: skip
    pipeline = Pipeline(spec.source, folder / name, config)
    try:
        added = _added_tensors(pipeline)
        result = {"name": name, "added": len(added), "precision": pipeline.backend.precision}  # type: ignore[attr-defined]
        if not added:
            return {**result, "seconds": time.perf_counter() - started}
        artifacts = _artifacts(pipeline, added)
        scores = {placement: _scores(pipeline, path) for placement, path in artifacts.items()}
        adds = {placement: _add_layers(pipeline, artifacts[placement]) for placement in PLACEMENTS}
        load_before = os.getloadavg()
        medians = _interleaved(pipeline, {p: artifacts[p] for p in PLACEMENTS}, rounds)
        load_after = os.getloadavg()
        return {**result, "scores": scores, "adds": adds, "medians": medians, "load": (load_before, load_after),
                "seconds": time.perf_counter() - started}  # fmt: skip
    finally:
        pipeline.close()


def _print(results: list[dict[str, Any]], rounds: int) -> None:
    """Markdown tables: scores, latency ratio, Add precisions."""
    print(f"\n{cpu_features().describe()}; OpenVINO timing precision {results[0]['precision']}; "
          f"{rounds} interleaved rounds of {ROUND_RUNS} runs")  # fmt: skip
    for r in results:
        print(f"{r['name']}: the modelopt placement quantizes {r['added']} more tensors (all-INT8 plan)")
    print()
    print("| model | placement | ONNX Runtime | OpenVINO f32 | OpenVINO timing precision | ms (median of rounds) | "
          "÷ trtmix (median of per-round ratios) | rounds modelopt faster | load avg 1 min before/after |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if not r["added"]:
            print(f"| {r['name']} | both | the two placements put the same Q/DQ: nothing to measure | | | | | | |")
            continue
        base = np.asarray(r["medians"]["trtmix"])
        for placement, scores in r["scores"].items():
            values = list(scores.values())
            timing = values[-1] if len(values) == 3 else values[1]
            latency = "| (same graph as modelopt) | | |"
            if placement in r["medians"]:
                ms = np.asarray(r["medians"][placement])
                faster = f"{int(np.sum(ms < base))}/{len(ms)}" if placement != "trtmix" else "–"
                latency = f"| {np.median(ms):.2f} | {float(np.median(ms / base)):.3f} | {faster} |"
            print(f"| {r['name']} | {placement} | {scores['onnxruntime']:.4f} | {scores['openvino f32']:.4f} | "
                  f"{timing:.4f} {latency} {r['load'][0][0]:.2f} / {r['load'][1][0]:.2f} |")  # fmt: skip
    print("\n| model | placement | residual Adds behind a unit: OpenVINO layer, runtime precision (input types) |")
    print("|---|---|---|")
    for r in results:
        for placement, counts in r.get("adds", {}).items():
            print(f"| {r['name']} | {placement} | {'; '.join(f'{n} × {key}' for key, n in counts.items())} |")
    print("\n" + ", ".join(f"{r['name']} {r['seconds']:.0f} s" for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description="tensorrt flavour: trtmix vs ModelOpt Q/DQ placement, all-INT8")
    parser.add_argument("--models", nargs="+", choices=("minilm", "digits-resnet"), default=["minilm"])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="OpenVINO threads (default: all usable cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="trtmix-placement-") as folder:
        results = [run_model(name, Path(folder), args.rounds, args.threads) for name in args.models]
    _print(results, args.rounds)


if __name__ == "__main__":
    main()
