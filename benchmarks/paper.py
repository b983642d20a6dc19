"""The seed paper's experiment, as far as it can run here: orderings compared along measured frontiers.

    python benchmarks/paper.py [--quick] [--models ...] [--output DIR] [--json FILE]

For each model, one trtmix job (ONNX Runtime, ``ort-cpu`` flavour) computes every ordering, then bisects along
each at each budget (99.99%, 99.9%, 99% of the float model's search metric).  All searches share the job's
journal, so a plan is built and measured once however many searches ask for it.  The tables (markdown, on stdout)
give, per budget and ordering:

* the chosen plan's INT8 units, latency, and its latency as a ratio to the float model and to all-INT8;
* its search metric on the search split and the holdout split, and the model's own quality checks (see
  ``quality.py``) on data the search never saw;
* the probes that search needed and the seconds it would take alone: its ordering's cost plus its probes' builds.

Per ordering: the seconds the ordering cost, the normalised frontier area (hypervolume of every probe it made,
latency ÷ float against metric ÷ float, in the box spanned by all the model's probes; higher is better), and the
divergence from the float model at 25%, 50% and 75% of the units INT8 (lower is better): the orderings compared at
equal INT8 counts, free of latency noise.
Reference rows: the float model, trtmix's all-INT8 plan, and ONNX Runtime's own ``quantize_static`` all-INT8
model built and measured the same way.

``--quick`` (the smoke test runs it) does the digits ResNet with three orderings at one budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import DigitsQuality, EfficientNetQuality, MiniLMQuality, NoQuality, Quality  # noqa: E402

from trtmix.job.config import CompileConfig  # noqa: E402
from trtmix.job.outputs import holdout_check  # noqa: E402
from trtmix.job.pipeline import Pipeline  # noqa: E402
from trtmix.quant.plan import PrecisionPlan  # noqa: E402
from trtmix.runtime.cpu import cpu_features  # noqa: E402
from trtmix.search.bisection import BisectionSearch, Budget, hypervolume  # noqa: E402


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: factory, data recipe, search metric, input names, meaning, quality checks."""

    source: str
    data: str
    metric: str
    inputs: tuple[str, ...]
    meaning: str
    quality: Callable[[], Quality] = NoQuality
    eval_batches: int = 8


MODELS = {
    "digits-resnet": ModelSpec("trtmix.models.digits:small_resnet", "trtmix.models.digits:load_data", "accuracy",
                               ("input",), "ResNet trained on sklearn digits at benchmark time; metric: top-1 "
                               "accuracy on real labels", DigitsQuality),
    "minilm": ModelSpec("trtmix.models.minilm:minilm", "trtmix.models.minilm:load_data", "cosine",
                        ("input_ids", "attention_mask"), "MiniLM-L6 (pretrained), batch 8 × 128 tokens; metric: "
                        "cosine to the FP32 embeddings", MiniLMQuality),
    "efficientnet-lite0": ModelSpec("trtmix.models.efficientnet:efficientnet_lite0", f"{__file__}:efficientnet_crops",
                                    "agreement", ("input",), "EfficientNet-Lite0 (ImageNet weights), batch 8 × 224²; "
                                    "metric: top-1 agreement with FP32 on 256 crops", EfficientNetQuality, 32),
    "resnet50": ModelSpec("trtmix.models.resnet:resnet50", f"{__file__}:random_images", "agreement", ("input",),
                          "ResNet-50 shape with random weights, batch 8 × 224²: latency only (its agreement "
                          "column measures nothing real)"),
}  # fmt: skip
BUDGETS = {"99.99%": "0.01%", "99.9%": "0.1%", "99%": "1%"}
ORDERINGS = ("augmented-a", "augmented-b", "augmented-c", "hessian", "kl", "random", "random-1", "random-2")
QUICK_ORDERINGS = ("augmented-a", "kl", "random")
SCALING_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # latency-only models: INT8 prefixes of the random ordering
SWEEP_FRACTIONS = (0.25, 0.5, 0.75)  # orderings compared at equal INT8 counts


def efficientnet_crops(split: str = "calibration") -> Any:
    """32 batches of crops: with 64, 99% top-1 agreement already meant not one flipped crop."""
    from trtmix.models.efficientnet import load_data

    return load_data(split, batches=32)


def random_images(split: str = "calibration") -> Any:
    """Seeded random 224² batches of 8 for the latency-only ResNet-50."""
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(2):
        yield {"input": rng.standard_normal((8, 3, 224, 224)).astype(np.float32)}


@dataclass
class ModelResult:
    """Everything one model's tables need."""

    name: str
    spec: ModelSpec
    units: int
    baseline: dict[str, Any]
    columns: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    references: list[dict[str, Any]] = field(default_factory=list)
    orderings: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_seconds: float = 0.0


def run_model(name: str, output: Path, orderings: tuple[str, ...], budgets: dict[str, str], runs: int) -> ModelResult:
    """Every (budget, ordering) search of one model, the reference rows, and the per-ordering summary."""
    started = time.perf_counter()
    spec = MODELS[name]
    first_budget = Budget.parse(next(iter(budgets.values())))
    config = CompileConfig(data=spec.data, budget=first_budget, metric=spec.metric, ordering=orderings[0],
                           compare=orderings[1:], runs=runs, input_names=spec.inputs,
                           eval_batches=spec.eval_batches, flavour="ort-cpu", backend="onnxruntime",
                           relative_to="fp32")  # fmt: skip
    pipeline = Pipeline(spec.source, output / name, config)
    baseline = pipeline.baseline()
    quality = spec.quality()
    quality.prepare(_runner(pipeline, pipeline.float_artifact))
    result = ModelResult(name, spec, len(pipeline.units), baseline, quality.columns)
    measured: dict[str, dict[str, Any]] = {}  # plan hash → holdout and quality of a chosen plan
    if spec.quality is NoQuality:  # random weights: only latency means something
        result.rows = _latency_scaling(pipeline, baseline)
        result.references = _references(pipeline, quality, baseline, measured)
        result.wall_seconds = time.perf_counter() - started
        return result
    searches: dict[str, list[BisectionSearch]] = {ordering: [] for ordering in orderings}
    for budget_name, drop in budgets.items():
        for ordering in orderings:
            search = pipeline.search(ordering, baseline["accuracy"], Budget.parse(drop))
            searches[ordering].append(search)
            result.rows.append(_row(pipeline, quality, search, budget_name, ordering, baseline, measured))
    result.orderings = _ordering_summary(pipeline, searches, baseline)
    for ordering, divergences in _sweep(pipeline, orderings).items():
        result.orderings[ordering]["sweep"] = divergences
    result.references = _references(pipeline, quality, baseline, measured)
    result.wall_seconds = time.perf_counter() - started
    return result


def _latency_scaling(pipeline: Pipeline, baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """Latency of INT8 prefixes (``SCALING_FRACTIONS`` of the units) of the seeded random ordering."""
    order, _ = pipeline.order("random")
    float_ms, rows = baseline["latency"]["median_ms"], []
    for fraction in SCALING_FRACTIONS:
        k = round(fraction * len(order))
        record = pipeline.measure(PrecisionPlan.with_int8(order[:k]))
        rows.append({"budget": "–", "ordering": "random prefix", "probes": 1, "alone_seconds": record["seconds"],
                     "chosen": k, "ms": record["latency"]["median_ms"],
                     "vs_float": record["latency"]["median_ms"] / float_ms,
                     "search": record["accuracy"] / baseline["accuracy"]})  # fmt: skip
    for row in rows:
        row["vs_int8"] = row["ms"] / rows[-1]["ms"]
    return rows


def _runner(pipeline: Pipeline, artifact: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    runner = pipeline.backend.open(artifact)  # one session for every batch the quality checks run
    return lambda feed: runner.infer(feed)[0]


def _plan_quality(
    pipeline: Pipeline, quality: Quality, plan: PrecisionPlan, baseline: dict[str, Any], measured: dict[str, Any]
) -> dict[str, Any]:
    """Holdout metric and quality checks of a plan already built by the search (once per plan)."""
    key = plan.stable_hash()
    if key not in measured:
        artifact = pipeline.build(plan)
        measured[key] = {"holdout": holdout_check(pipeline.driver, plan, baseline)["relative"],
                         **quality.measure(_runner(pipeline, artifact))}  # fmt: skip
    return measured[key]


def _row(
    pipeline: Pipeline,
    quality: Quality,
    search: BisectionSearch,
    budget: str,
    ordering: str,
    baseline: dict[str, Any],
    measured: dict[str, Any],
) -> dict[str, Any]:
    probe_seconds = sum(pipeline.journal.get(search.plan_for(k).stable_hash())["seconds"] for k in search.probes)
    row = {"budget": budget, "ordering": ordering, "probes": len(search.probes),
           "alone_seconds": (pipeline.ordering_seconds(ordering) or 0.0) + probe_seconds}  # fmt: skip
    best = search.best()
    if best is None:
        return {**row, "chosen": None, "stop": search.stop_reason}
    plan = search.plan_for(best.k)
    all_int8 = search.probes.get(search.units)
    return {
        **row,
        "chosen": best.k,
        "ms": best.latency_ms,
        "vs_float": best.latency_ms / baseline["latency"]["median_ms"],
        "vs_int8": best.latency_ms / all_int8.latency_ms if all_int8 and all_int8.ok else float("nan"),
        "search": best.relative,
        **_plan_quality(pipeline, quality, plan, baseline, measured),
    }


def _ordering_summary(
    pipeline: Pipeline, searches: dict[str, list[BisectionSearch]], baseline: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per ordering: its cost, the distinct plans its searches measured, and its normalised frontier area."""
    float_ms = baseline["latency"]["median_ms"]
    points: dict[str, list[tuple[float, float]]] = {}
    for ordering, runs in searches.items():
        probes = {k: p for search in runs for k, p in search.probes.items() if p.ok}
        points[ordering] = [(p.latency_ms / float_ms, p.relative) for p in probes.values()]  # type: ignore[operator]
    everything = [point for pts in points.values() for point in pts]
    reference = (max(lat for lat, _ in everything) * 1.001, min(acc for _, acc in everything) - 1e-9)
    box = (reference[0] - min(lat for lat, _ in everything)) * (max(acc for _, acc in everything) - reference[1])
    return {
        ordering: {"seconds": pipeline.ordering_seconds(ordering) or 0.0, "plans": len(points[ordering]),
                   "area": hypervolume(points[ordering], reference) / box if box > 0 else float("nan")}
        for ordering in searches
    }  # fmt: skip


def _sweep(pipeline: Pipeline, orderings: tuple[str, ...]) -> dict[str, list[float]]:
    """Divergence from the float model (KL, or 1 − cosine) at ``SWEEP_FRACTIONS`` of the units INT8, per ordering.

    The searches stop at different k for each ordering, and latency is noisy on a shared CPU; equal INT8 counts
    along each ordering, scored by a continuous distance on the search split, compare the orderings themselves.
    """
    from trtmix.evaluate import divergence

    reference = pipeline.evaluation.reference["search"]
    results: dict[str, list[float]] = {}
    for ordering in orderings:
        order, _ = pipeline.order(ordering)
        results[ordering] = []
        for fraction in SWEEP_FRACTIONS:
            artifact = pipeline.build(PrecisionPlan.with_int8(order[: round(fraction * len(order))]))
            outputs = pipeline.outputs(artifact, "search")
            results[ordering].append(divergence(pipeline.config.metric, outputs, reference))
    return results


def _references(
    pipeline: Pipeline, quality: Quality, baseline: dict[str, Any], measured: dict[str, Any]
) -> list[dict[str, Any]]:
    """Rows for the float model, trtmix's all-INT8 plan and ONNX Runtime's quantize_static model."""
    float_ms = baseline["latency"]["median_ms"]
    rows = [{"name": "float (FP32)", "ms": float_ms, "search": 1.0, "holdout": 1.0,
             **quality.measure(_runner(pipeline, pipeline.float_artifact))}]  # fmt: skip
    all_int8 = PrecisionPlan.with_int8([unit.name for unit in pipeline.units])
    record = pipeline.measure(all_int8)
    rows.append({"name": "all-INT8 (trtmix)", "ms": record["latency"]["median_ms"],
                 "search": record["accuracy"] / baseline["accuracy"],
                 **_plan_quality(pipeline, quality, all_int8, baseline, measured)})  # fmt: skip
    rows.append(_tensorrt_flavour(pipeline, all_int8, baseline))
    rows.append(_ort_quantize_static(pipeline, quality, baseline, None))
    rows.append(_ort_quantize_static(pipeline, quality, baseline, ["Conv", "MatMul", "Gemm"]))
    for row in rows:
        row["vs_float"] = row["ms"] / float_ms if row["ms"] is not None else None
        row["vs_int8"] = row["ms"] / rows[1]["ms"] if row["ms"] is not None else None
    return rows


def _tensorrt_flavour(pipeline: Pipeline, plan: PrecisionPlan, baseline: dict[str, Any]) -> dict[str, Any]:
    """The plan as it would ship to TensorRT (fp16 + symmetric Q/DQ), its metrics run by ORT CPU; no latency."""
    artifact = pipeline.build(plan, "tensorrt")
    return {"name": "all-INT8, tensorrt flavour (latency needs TensorRT)", "ms": None,
            **_relative_scores(pipeline, artifact, baseline)}  # fmt: skip


def _relative_scores(pipeline: Pipeline, artifact: Path, baseline: dict[str, Any]) -> dict[str, float]:
    """The search metric of ``artifact`` on the search and holdout splits, relative to the float model's."""
    scores = {
        split: pipeline.evaluation.score(split, pipeline.outputs(artifact, split)) for split in ("search", "holdout")
    }
    return {"search": scores["search"] / baseline["accuracy"], "holdout": scores["holdout"] / baseline["holdout"]}


def _ort_quantize_static(
    pipeline: Pipeline, quality: Quality, baseline: dict[str, Any], op_types: list[str] | None
) -> dict[str, Any]:
    """ONNX Runtime's quantize_static (QDQ, u8 activations, s8 per-channel 7-bit weights) on the same runtime.

    Same calibration batches and the same range method (max) as trtmix.  ``op_types`` None is ORT's default (every
    op it can quantize); a list restricts it, e.g. to the ops trtmix's units are made of.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    batches = iter(pipeline.recipe.batches(pipeline.model, "calibration", pipeline.config.calibration.batches))

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    stem = "ort_quantize_static" + ("" if op_types is None else "." + "-".join(op_types))
    quantized = pipeline.output / f"{stem}.onnx"
    restrict = {} if op_types is None else {"op_types_to_quantize": op_types}
    quantize_static(str(pipeline.model_path), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    **restrict)  # fmt: skip
    artifact = pipeline.backend.build(quantized, pipeline.output / f"{stem}.built.onnx")
    config = pipeline.config
    stats = pipeline.backend.time(artifact, pipeline.evaluation.feeds["search"][0], config.runs, config.warmup)
    name = "ORT quantize_static, " + ("default ops" if op_types is None else "/".join(op_types) + " only")
    return {"name": name, "ms": stats.median_ms, **_relative_scores(pipeline, artifact, baseline),
            **quality.measure(_runner(pipeline, artifact))}  # fmt: skip


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown(result: ModelResult) -> str:
    """The model's two tables: searches (with reference rows) and orderings."""
    columns = result.columns
    head = ["budget", "ordering", "INT8 units", "ms", "÷ float", "÷ all-INT8", "search", "holdout", *columns,
            "probes", "alone s"]  # fmt: skip
    lines = [f"### {result.name}", "", result.spec.meaning + f"; {result.units} units. Float search metric "
             f"{result.baseline['accuracy']:.4f}, holdout {result.baseline['holdout']:.4f}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for row in result.rows:
        if row["chosen"] is None:
            cells = [row["budget"], row["ordering"], f"none met the budget ({row['stop']})"] + [""] * (len(head) - 5)
            lines.append("| " + " | ".join([*cells, str(row["probes"]), f"{row['alone_seconds']:.0f}"]) + " |")
            continue
        cells = [row["budget"], row["ordering"], f"{row['chosen']}/{result.units}", _cell(row["ms"], 1),
                 _cell(row["vs_float"], 2), _cell(row["vs_int8"], 2), _cell(row["search"]), _cell(row.get("holdout")),
                 *(_cell(row.get(c)) for c in columns), str(row["probes"]), f"{row['alone_seconds']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for row in result.references:
        cells = ["ref", row["name"], "", _cell(row["ms"], 1), _cell(row["vs_float"], 2), _cell(row["vs_int8"], 2),
                 _cell(row["search"]), _cell(row.get("holdout")), *(_cell(row.get(c)) for c in columns)]  # fmt: skip
        cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    distance = "1 − cosine" if result.spec.metric == "cosine" else "KL"
    sweep = [f"{distance} at {fraction:.0%} INT8" for fraction in SWEEP_FRACTIONS]
    if result.orderings:
        head = ["ordering", "ordering s", "plans measured", "frontier area", *sweep]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ordering, summary in result.orderings.items():
        divergences = " | ".join(f"{value:.2e}" for value in summary["sweep"])
        lines.append(f"| {ordering} | {summary['seconds']:.0f} | {summary['plans']} | {summary['area']:.3f} | "
                     f"{divergences} |")  # fmt: skip
    lines += ["", f"Wall time for this model: {result.wall_seconds:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Orderings compared along measured frontiers (seed paper experiment)")
    quick_help = "digits ResNet only, orderings augmented-a, kl and random, budget 99%% (smoke test)"
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="models (default: all)")
    parser.add_argument("--output", type=Path, help="keep the jobs here, to inspect or resume (default: a temporary "
                        "folder)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per probe (default: 20)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    models = ["digits-resnet"] if args.quick else (args.models or list(MODELS))
    budgets = {"99%": BUDGETS["99%"]} if args.quick else BUDGETS
    runs = 3 if args.quick else args.runs
    print(f"{cpu_features().describe()}; ONNX Runtime, ort-cpu flavour, {runs} timed runs per probe", flush=True)
    started, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="trtmix-paper-") as temporary:
        output = args.output or Path(temporary)
        for name in models:
            orderings = QUICK_ORDERINGS if args.quick else ORDERINGS
            result = run_model(name, output, orderings, budgets, runs)
            print(markdown(result), flush=True)
            results.append(result)
            if args.json:  # after every model, so a later failure keeps what was measured
                _write_json(args.json, results)
    print(f"Total wall time: {time.perf_counter() - started:.0f} s.")


def _write_json(path: Path, results: list[ModelResult]) -> None:
    payload = [{"name": r.name, "units": r.units, "baseline": r.baseline, "rows": r.rows, "references": r.references,
                "orderings": r.orderings, "wall_seconds": r.wall_seconds} for r in results]  # fmt: skip
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
