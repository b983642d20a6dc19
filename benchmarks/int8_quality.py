"""INT8 quality ablation: all-INT8 fidelity and latency with each quantizer technique on and off, both flavours,
against ONNX Runtime's ``quantize_static`` and NNCF's ``nncf.quantize`` on the same calibration batches.

    pip install -e '.[bench]'   # nncf
    python benchmarks/int8_quality.py [--models minilm efficientnet-lite0 digits-resnet] [--rounds 7] [--json q.json]

Per model and flavour (``tensorrt`` on OpenVINO, ``ort-cpu`` on ONNX Runtime), the all-INT8 plan under:

* ``plain``: no smoothing, no bias correction (what trtmix wrote before these techniques);
* ``smooth``: outlier-aware scaling, the option ``compile`` measures best (no smoothing, α 0.5 or 0.8, and in the
  tensorrt flavour α 0.8 with centred channels; each option's score is printed);
* ``bias``: bias correction alone; ``smooth + bias (default)``: both, ``compile``'s defaults.

Fidelity is the job's metric against the FP32 model on the search split: cosine to FP32 embeddings (MiniLM-L6), top-1
agreement with FP32 on 256 crops (EfficientNet-Lite0), top-1 accuracy on the real digits labels (the FP32 figure is
printed beside it).  Latency: every artifact of one engine is timed in the same interleaved rounds (``--rounds``,
10 runs each per round, median of the round medians), so the ratios to ``plain`` compare like with like.
Reference rows: ``quantize_static`` (QDQ, u8/s8 per-channel, the same batches and the max range method) on ONNX
Runtime, and ``nncf.quantize`` (ONNX backend, the same batches; ``model_type=TRANSFORMER`` for MiniLM, which turns
on NNCF's own SmoothQuant) on both engines.  The CPU line says which machine this was.

``--range-methods`` (issue 33) instead compares the activation range methods: the all-INT8 tensorrt-flavour graph
with every tensor's range by ``max``, ``percentile``, ``entropy`` or ``mse``, and with each tensor's method chosen by
``trtmix.quant.range_choice.choose_ranges`` (least error at its readers' outputs on the calibration batches),
each without smoothing, with α = 0.8, and with α = 0.8 and centring; ONNX Runtime scores them (no timing), and the
choice per tensor is printed with each method's error.

    python benchmarks/int8_quality.py --models minilm --range-methods

``--rounding`` (issue 33, part 3) compares round-to-nearest with learned weight rounding
(``trtmix.quant.rounding.learn_rounding``, on the calibration batches): the all-INT8 tensorrt-flavour graph with
max ranges and bias correction, without smoothing, with α = 0.8, and with α = 0.8 and centring; ONNX Runtime scores
them on the search split (no timing), and the units rounded or skipped and the seconds spent learning are printed.

    python benchmarks/int8_quality.py --models minilm --rounding

Measured 2026-12-03 (MiniLM-L6, 8 calibration batches, search split, cosine to FP32; all 36 units rounded):
round-to-nearest → learned 0.97552 → 0.97587 without smoothing, 0.98678 → 0.98764 with α = 0.8, 0.98776 → 0.98859
with α = 0.8 and centring; learning took 33–50 s per row on a 2-core machine shared with other jobs.
EfficientNet-Lite0 (``--models efficientnet-lite0 --rounding``, top-1 agreement on 256 crops; all 50 units rounded,
32–35 s): 0.79688 → 0.79297 without smoothing, 0.62109 → 0.62109 with α = 0.8, 0.60938 → 0.60547 centred: one crop
lost or none, so a job on it keeps round-to-nearest.  Each unit's own output error (weights alone, held-out
calibration batches) fell to a median 0.31–0.45 of round-to-nearest's on both models: the all-INT8 error is mostly
the activations'.  The ``float weights`` column is the ceiling of any weight rounding (Q/DQ removed from every
weight, activations still int8, bias correction off since no weight error is left; not defined for centred inputs,
whose bias holds z·Q(W·s)/s).  MiniLM, same run as above, learning 16 s per row: 0.97608 without smoothing, 0.98881
with α = 0.8, so learned rounding takes 63% and 42% of what weights can give, and weights can give at most +0.002
of the 0.013 that all-INT8 loses at α = 0.8.

``--classes`` (issue 33) says where the all-INT8 error sits: the job's all-INT8 plan (its own quantizer choice,
tensorrt flavour, ONNX Runtime on the search split), then the same plan with one class of units kept high (units
whose names match once digits are replaced by ``#``), then smoothing's α beyond the job's 0.5 and 0.8 (centred, with
round-to-nearest and with learned rounding).

    python benchmarks/int8_quality.py --models minilm --classes

It found MiniLM's residual stream: with the residual Adds' skip input quantized (the placement before 2026-12-03),
keeping the six FFN up- or down-projections high took all-INT8 from 0.988 to 0.997 because either removed that
quantizer, and no α helped (0.983–0.988).  With the residual stream float (rerun the same day): all-INT8 0.99757
(the job's choice, with learned rounding), no class of units above +0.0010 when kept high (the attention
probabilities·V MatMuls 0.99857, the FFN down-projections 0.99828, every other class within 0.0002), and α = 0.8
still best: 0.99712 → 0.99757 with learned rounding, 0.99701–0.99689 at 0.85–0.9, 0.9913 at 0.95.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper import MODELS  # noqa: E402

from trtmix.data.recipe import Recipe  # noqa: E402
from trtmix.job.config import CompileConfig  # noqa: E402
from trtmix.job.pipeline import Pipeline  # noqa: E402
from trtmix.job.quantizers import QuantizerSettings  # noqa: E402
from trtmix.quant.plan import PrecisionPlan  # noqa: E402
from trtmix.quant.smooth import SmoothSettings  # noqa: E402
from trtmix.runtime import get_backend  # noqa: E402
from trtmix.runtime.cpu import cpu_features  # noqa: E402
from trtmix.search.bisection import Budget  # noqa: E402

SETTINGS = {
    "plain": (SmoothSettings(enabled=False), False),
    "smooth": (SmoothSettings(), False),
    "bias": (SmoothSettings(enabled=False), True),
    "smooth + bias (default)": (SmoothSettings(), True),
}
ENGINES = {"tensorrt": "openvino", "ort-cpu": "onnxruntime"}
ROUND_RUNS = 10


def run_model(name: str, folder: Path, rounds: int) -> dict[str, Any]:
    """Every (flavour, setting) all-INT8 plan and the reference quantizers of one model."""
    spec = MODELS[name]
    base = CompileConfig(data=spec.data, budget=Budget.parse("1%"), metric=spec.metric, input_names=spec.inputs,
                         eval_batches=spec.eval_batches, runs=5, final_rounds=0)  # fmt: skip
    source, result = spec.source, {"model": name, "rows": []}
    for flavour, backend in ENGINES.items():
        artifacts: dict[str, Path] = {}
        pipeline = None
        for label, (smooth, bias) in SETTINGS.items():
            config = replace(base, flavour=flavour, backend=backend, smooth=smooth, bias_correction=bias)
            pipeline = Pipeline(source, folder / name / f"{flavour}-{label}", config)
            source = str(pipeline.model_path)  # export once; the other jobs read the same ONNX
            try:
                row, artifacts[label] = _all_int8(pipeline, flavour, label)
                result["fp32"] = pipeline.evaluation.score("search", pipeline.evaluation.reference["search"])
                result["rows"].append(row)
            finally:
                pipeline.close()
        for label, artifact in _references(name, source, base, folder, flavour, backend).items():
            artifacts[label] = artifact
            fidelity = _fidelity(base, source, get_backend(backend, flavour=flavour), artifact)
            result["rows"].append({"flavour": flavour, "setting": label, "fidelity": fidelity})
        timings = _interleaved(get_backend(backend, flavour=flavour), artifacts, base, source, rounds)
        for row in result["rows"]:
            if row["flavour"] == flavour:
                row["ms"] = timings[row["setting"]]
                row["vs_plain"] = timings[row["setting"]] / timings["plain"]
    return result


def _all_int8(pipeline: Pipeline, flavour: str, label: str) -> tuple[dict[str, Any], Path]:
    """The all-INT8 plan of ``pipeline``'s settings: its fidelity and what the quantizers decided."""
    plan = PrecisionPlan.with_int8([unit.name for unit in pipeline.units])
    artifact = pipeline.build(plan)
    fidelity = pipeline.evaluation.score("search", pipeline.outputs(artifact, "search"))
    smoothing = pipeline.quantizers["smoothing"]
    return {"flavour": flavour, "setting": label, "fidelity": fidelity, "option": smoothing.get("option"),
            "smoothed_tensors": smoothing.get("tensors"), "measured": smoothing.get("measured")}, artifact  # fmt: skip


def _references(name: str, source: str, base: CompileConfig, folder: Path, flavour: str, backend: str) -> dict:
    """quantize_static (ONNX Runtime only: its u8 QDQ graph is the ort-cpu kind) and NNCF, built for ``backend``."""
    engine = get_backend(backend, flavour=flavour)
    feeds = Recipe.of(base.data, base.data_args).batches(_model(source), "calibration", base.calibration.batches)
    built = {}
    if flavour == "ort-cpu":
        path = folder / name / "quantize_static.onnx"
        _quantize_static(source, path, feeds)
        built["ORT quantize_static"] = engine.build(path, path.with_suffix(f".{backend}.onnx"))
    path = folder / name / "nncf.onnx"
    if not path.exists():
        _nncf(name, source, path, feeds)
    built["NNCF quantize"] = engine.build(path, path.with_suffix(f".{backend}.onnx"))
    return built


def _model(source: str) -> Any:
    from trtmix.ir.graph import load_onnx

    return load_onnx(source)


def _quantize_static(source: str, path: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    batches = iter(feeds)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    reduce = not cpu_features().int8_exact  # 7-bit weights only without VNNI/AMX, as trtmix's ort-cpu
    quantize_static(source, str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip


def _nncf(name: str, source: str, path: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    import nncf
    import onnx

    model = onnx.load(source)
    model_type = nncf.ModelType.TRANSFORMER if name == "minilm" else None
    quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=model_type, subset_size=len(feeds))
    onnx.save(quantized, str(path))


def _fidelity(base: CompileConfig, source: str, engine: Any, artifact: Path) -> float:
    """The job's metric of ``artifact`` against the FP32 model on the search split."""
    from trtmix.job.evaluation import load_evaluation

    evaluation = load_evaluation(Recipe.of(base.data, base.data_args), _model(source), Path(source), base.metric,
                                 base.eval_batches, base.score_output, base.threads)  # fmt: skip
    return evaluation.score("search", evaluation.outputs(engine, artifact, "search"))


def _interleaved(engine: Any, artifacts: dict[str, Path], base: CompileConfig, source: str, rounds: int) -> dict:
    """Median over ``rounds`` interleaved rounds of each artifact's median of ``ROUND_RUNS`` runs."""
    feed = Recipe.of(base.data, base.data_args).batches(_model(source), "search", 1)[0]
    return interleaved_medians({label: engine.open(path) for label, path in artifacts.items()}, feed, rounds)


def interleaved_medians(runners: dict[str, Any], feed: dict[str, np.ndarray], rounds: int) -> dict[str, float]:
    """Each open runner's median over ``rounds`` interleaved rounds of its median of ``ROUND_RUNS`` runs; closes them.

    One round times every runner once, so a slow spell of the machine touches every graph alike.
    """
    medians: dict[str, list[float]] = {label: [] for label in runners}
    try:
        for _ in range(rounds):
            for label, runner in runners.items():
                medians[label].append(runner.time(feed, ROUND_RUNS, 2).median_ms)
    finally:
        for runner in runners.values():
            runner.close()
    return {label: float(np.median(values)) for label, values in medians.items()}


def markdown(result: dict[str, Any]) -> str:
    """One table per model."""
    lines = [f"### {result['model']} (FP32 metric {result['fp32']:.4f})", "",
             "| flavour (engine) | setting | smoothing chosen | smoothed tensors | fidelity | ms | ÷ plain |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in result["rows"]:
        option = row.get("option") if row["setting"].startswith("smooth") else None
        lines.append(f"| {row['flavour']} ({ENGINES[row['flavour']]}) | {row['setting']} | {option or '–'} | "
                     f"{row.get('smoothed_tensors') or '–'} | {row['fidelity']:.4f} | {row['ms']:.2f} | "
                     f"{row['vs_plain']:.3f} |")  # fmt: skip
    for row in result["rows"]:
        if row["setting"] == "smooth" and row.get("measured"):
            scores = ", ".join(f"{label} {value:.4f}" for label, value in row["measured"].items())
            lines.append(f"\n{row['flavour']}: all-INT8 metric per smoothing option (search split, ONNX Runtime): "
                         f"{scores}.")  # fmt: skip
    return "\n".join(lines)


def _model_and_batches(name: str, folder: Path) -> tuple[Any, Any, list, Any, list, list]:
    """``name``'s exported float model, its units, the calibration settings and batches, and the search batches."""
    from trtmix.calibration.calibrate import CalibrationConfig
    from trtmix.data.recipes import load_batches
    from trtmix.export import export_once
    from trtmix.ir.fold import load_float_model
    from trtmix.ir.units import require_units

    spec = MODELS[name]
    path = export_once(spec.source, folder / f"{name}.onnx", input_names=list(spec.inputs))
    model = load_float_model(path)
    config = CalibrationConfig()
    calibration = list(load_batches(spec.data, "calibration"))[: config.batches]
    search = list(load_batches(spec.data, "search"))[: spec.eval_batches]
    return spec, model, require_units(model, str(path)), config, calibration, search


RANGE_METHODS = ("max", "percentile", "entropy", "mse")
RANGE_SMOOTHING = {"no smoothing": None, "α=0.8": (0.8, False), "α=0.8, centred": (0.8, True)}


def range_methods(name: str, folder: Path) -> dict[str, Any]:
    """All-INT8 tensorrt-flavour fidelity with each global range method and with the per-tensor choice (issue 33).

    ONNX Runtime is the oracle (the job's accuracy engine): no timing here.  The candidates come from one pass of
    histograms over the job's calibration batches; ``trtmix.quant.range_choice.choose_ranges`` scores them on the
    same batches.  Each row is built without smoothing, with α = 0.8, and with α = 0.8 and centring (fixed).
    """
    import time

    from trtmix.calibration.calibrate import _unit_statistics, calibrate
    from trtmix.evaluate import cosine, top1_agreement
    from trtmix.quant.compile import compile_plan
    from trtmix.quant.range_choice import choose_ranges
    from trtmix.quant.smooth import plan_smoothing
    from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

    spec, model, units, config, calibration, search = _model_and_batches(name, folder)
    start = time.perf_counter()
    histograms, _, channels = _unit_statistics(model, units, calibration, config.batches, False)
    candidates = {method: calibrate(model, units, (), replace(config, method=method), progress=False,
                                    histograms=histograms, channels=channels) for method in RANGE_METHODS}  # fmt: skip
    candidates_seconds = time.perf_counter() - start
    chosen, record = choose_ranges(model, units, candidates, calibration, symmetric=True)
    score = {"cosine": lambda out, ref: float(np.mean(cosine(out, ref))), "agreement": top1_agreement}[spec.metric]
    with OnnxRuntimeRunner(model, threads=2) as runner:
        reference = np.concatenate([runner.infer(feed)[0] for feed in search])
    plan = PrecisionPlan.with_int8([unit.name for unit in units])
    rows = []
    for label, ranges in [*candidates.items(), ("per-tensor", chosen)]:
        row: dict[str, Any] = {"ranges": label}
        for setting, option in RANGE_SMOOTHING.items():
            prepared = ranges
            if option is not None:
                prepared, _ = plan_smoothing(model, units, ranges, SmoothSettings(alpha=option[0]), True, option[1])
            with OnnxRuntimeRunner(compile_plan(model, plan, prepared, "tensorrt"), threads=2, optimize=True) as r:
                row[setting] = score(np.concatenate([r.infer(feed)[0] for feed in search]), reference)
        rows.append(row)
        print(f"  {label}: {row}", file=sys.stderr, flush=True)
    return {"model": name, "metric": spec.metric, "calibration_batches": len(calibration), "rows": rows,
            "candidates_seconds": candidates_seconds, "choice": record.to_dict()}  # fmt: skip


def rounding_quality(name: str, folder: Path) -> dict[str, Any]:
    """All-INT8 tensorrt-flavour fidelity with round-to-nearest and with learned weight rounding (issue 33, part 3).

    Max ranges and bias correction (``compile``'s default) under each of ``RANGE_SMOOTHING``; the rounding is
    learned on the job's calibration batches, for the ranges of that row, and scored on the search split.
    """
    from trtmix.calibration.calibrate import calibrate
    from trtmix.evaluate import cosine, top1_agreement
    from trtmix.quant.compile import compile_plan
    from trtmix.quant.flavours import get_flavour
    from trtmix.quant.rounding import learn_rounding
    from trtmix.quant.smooth import plan_smoothing
    from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

    spec, model, units, config, calibration, search = _model_and_batches(name, folder)
    calibrated = replace(calibrate(model, units, calibration, config, progress=False), bias_correction=True)
    score = {"cosine": lambda out, ref: float(np.mean(cosine(out, ref))), "agreement": top1_agreement}[spec.metric]
    with OnnxRuntimeRunner(model, threads=2) as runner:
        reference = np.concatenate([runner.infer(feed)[0] for feed in search])
    plan = PrecisionPlan.with_int8([unit.name for unit in units])
    rows = []
    for setting, option in RANGE_SMOOTHING.items():
        ranges = calibrated
        if option is not None:
            ranges, _ = plan_smoothing(model, units, calibrated, SmoothSettings(alpha=option[0]), True, option[1])
        learned, record = learn_rounding(model, units, ranges, get_flavour("tensorrt"), calibration)
        row: dict[str, Any] = {"setting": setting, "units": record.to_dict()}
        # the ceiling of any weight rounding: activations int8, weights float, so no bias correction (it removes the
        # mean of a weight error there no longer is); not for centred inputs, whose bias holds z·Q(W·s)/s
        ceiling = None if ranges.shifts else replace(ranges, bias_correction=False)
        row["float weights"] = None
        for label, prepared in (("nearest", ranges), ("learned", learned), ("float weights", ceiling)):
            if prepared is None:
                continue
            compiled = compile_plan(model, plan, prepared, "tensorrt")
            if label == "float weights":
                compiled = _unquantized_weights(compiled)
            with OnnxRuntimeRunner(compiled, threads=2, optimize=True) as r:
                row[label] = score(np.concatenate([r.infer(feed)[0] for feed in search]), reference)
        rows.append(row)
        print(f"  {setting}: nearest {row['nearest']:.5f}, learned {row['learned']:.5f}, "
              f"float weights {_figure(row['float weights'])}, "
              f"{len(record.rounded)} rounded, {len(record.skipped)} skipped, {record.seconds:.1f} s",
              file=sys.stderr, flush=True)  # fmt: skip
    return {"model": name, "metric": spec.metric, "calibration_batches": len(calibration), "rows": rows}


ALPHA_GRID = (0.8, 0.85, 0.9, 0.95)


def error_classes(name: str, folder: Path) -> dict[str, Any]:
    """Where the all-INT8 error sits: the job's all-INT8 plan, then the same plan with one class of units high.

    A class is the units whose names match once their digits are replaced by ``#`` (MiniLM: the six query
    projections, the six FFN up-projections, ...).  The quantizers are the ones ``compile`` chooses (tensorrt flavour,
    scored by ONNX Runtime, the oracle, on the search split).  Then smoothing's α beyond ``MEASURED_ALPHAS``,
    centred, without and with learned weight rounding: what a stronger migration of the outliers gives.
    """
    import re

    from trtmix.job.quantizers import QuantizerOption, _prepared, _Trial
    from trtmix.job.weight_rounding import all_int8_scorer, rounding_learner

    spec = MODELS[name]
    config = CompileConfig(data=spec.data, budget=Budget.parse("1%"), metric=spec.metric, input_names=spec.inputs,
                           eval_batches=spec.eval_batches, runs=5, final_rounds=0, backend="onnxruntime")  # fmt: skip
    pipeline = Pipeline(spec.source, folder / name / "classes", config)
    try:
        names = [unit.name for unit in pipeline.units]
        fp32_nodes = pipeline.float_baseline.plan.fp32_nodes  # as the job scores its all-INT8 options

        def score(int8: list[str]) -> float:
            artifact = pipeline.build(PrecisionPlan.with_int8(int8, config.default, fp32_nodes))
            return pipeline.evaluation.score("search", pipeline.outputs(artifact, "search"))

        classes: dict[str, list[str]] = {}
        for unit in names:
            classes.setdefault(re.sub(r"\d+", "#", unit), []).append(unit)
        rows = [{"high": "none (all-INT8)", "units": 0, "score": score(names)}]
        for pattern, members in classes.items():
            kept = score([n for n in names if n not in members])
            rows.append({"high": pattern, "units": len(members), "score": kept})
            print(f"  {pattern}: {rows[-1]['score']:.5f}", file=sys.stderr, flush=True)
        calibrated, settings = pipeline._calibrated(), QuantizerSettings()
        plan = PrecisionPlan.with_int8(names, config.default, fp32_nodes)
        trial = _Trial(settings, pipeline.model, pipeline.units, calibrated, pipeline.flavour, pipeline.evaluation,
                       {}, plan.fp32_nodes)  # fmt: skip
        batches = partial(pipeline.recipe.batches, pipeline.model, "calibration", config.calibration.batches)
        learn = rounding_learner(pipeline.model, pipeline.units, pipeline.flavour, batches, trial.plan)
        learned_score = all_int8_scorer(pipeline.model, pipeline.units, pipeline.flavour, pipeline.evaluation,
                                        trial.plan, None, trial.model_hash)  # fmt: skip
        alphas = []
        for alpha in ALPHA_GRID:
            option = QuantizerOption(alpha, True, False)
            ranges, _ = _prepared(pipeline.model, pipeline.units, calibrated, settings, pipeline.flavour, option)
            alphas.append({"alpha": alpha, "nearest": trial.score(f"α={alpha}", option),
                           "learned": learned_score(learn(ranges)[0])})  # fmt: skip
            print(f"  α={alpha}: {alphas[-1]}", file=sys.stderr, flush=True)
        return {"model": name, "metric": spec.metric, "chosen": pipeline.quantizers["smoothing"]["option"],
                "rows": rows, "alphas": alphas}  # fmt: skip
    finally:
        pipeline.close()


def classes_markdown(result: dict[str, Any]) -> str:
    """The class table and the α grid."""
    lines = [f"### {result['model']}: all-INT8 {result['metric']} to FP32 with one class of units high (tensorrt "
             f"flavour, the job's quantizers: {result['chosen']}; ONNX Runtime, search split)", "",
             "| units kept high | how many | score |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {row['high']} | {row['units']} | {row['score']:.5f} |" for row in result["rows"]]
    lines += ["", "| smoothing α (centred, no bias correction) | round-to-nearest | learned rounding |",
              "|---|---|---|"]
    lines += [f"| {row['alpha']} | {row['nearest']:.5f} | {row['learned']:.5f} |" for row in result["alphas"]]
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"


def _unquantized_weights(compiled: Any) -> Any:
    """``compiled`` with every weight's Q→DQ pair removed: each unit reads the float weight the Q read."""
    constants = {init.name for init in compiled.graph.initializer}
    producers = {out: node for node in compiled.graph.node for out in node.output}
    bypass, dropped = {}, []
    for node in compiled.graph.node:
        source = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is not None and source.op_type == "QuantizeLinear" and source.input[0] in constants:
            bypass[node.output[0]] = source.input[0]
            dropped += [node, source]
    for node in compiled.graph.node:
        for position, name in enumerate(node.input):
            if name in bypass:
                node.input[position] = bypass[name]
    for node in dropped:
        if node in compiled.graph.node:
            compiled.graph.node.remove(node)
    used = {name for node in compiled.graph.node for name in node.input}
    for init in [init for init in compiled.graph.initializer if init.name not in used]:
        compiled.graph.initializer.remove(init)  # the pairs' scales and zero points: ORT refuses orphans
    return compiled


def rounding_markdown(result: dict[str, Any]) -> str:
    """Round-to-nearest against learned rounding per smoothing setting, with the units rounded and the seconds."""
    lines = [f"### {result['model']}: all-INT8 {result['metric']} to FP32, round-to-nearest vs learned weight "
             f"rounding (tensorrt flavour, max ranges, bias correction, ONNX Runtime, search split; "
             f"{result['calibration_batches']} calibration batches)", "",
             "| smoothing | nearest | learned | float weights (ceiling) | units rounded | skipped | rows | seconds |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in result["rows"]:
        units = row["units"]
        lines.append(f"| {row['setting']} | {row['nearest']:.5f} | {row['learned']:.5f} | "
                     f"{_figure(row['float weights'])} | {len(units['rounded'])} "
                     f"| {len(units['skipped'])} | {units['rows']} | {units['seconds']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def range_markdown(result: dict[str, Any]) -> str:
    """The range-method table, the per-tensor counts and the tensors whose choice is not max."""
    choice = result["choice"]
    lines = [f"### {result['model']}: all-INT8 {result['metric']} to FP32 by range method (tensorrt flavour, "
             f"ONNX Runtime, search split; {result['calibration_batches']} calibration batches)", "",
             "| ranges | " + " | ".join(RANGE_SMOOTHING) + " |", "|---|" + "---|" * len(RANGE_SMOOTHING)]  # fmt: skip
    for row in result["rows"]:
        lines.append(f"| {row['ranges']} | " + " | ".join(f"{row[s]:.4f}" for s in RANGE_SMOOTHING) + " |")
    counts = ", ".join(f"{method} {count}" for method, count in choice["counts"].items())
    lines += ["", f"Per-tensor choice ({choice['scored']} tensors scored, {choice['stable']} stable across halves, "
              f"{choice['seconds']:.1f} s; candidates {result['candidates_seconds']:.1f} s): {counts}.", "",
              "| tensor | chosen | " + " | ".join(RANGE_METHODS) + " | stable |",
              "|---|---|" + "---|" * len(RANGE_METHODS) + "---|"]  # fmt: skip
    for tensor, entry in choice["tensors"].items():
        errors = " | ".join(f"{entry['errors'][m]:.4f}" for m in RANGE_METHODS)
        lines.append(f"| {tensor} | {entry['method']} | {errors} | {'yes' if entry['stable'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "efficientnet-lite0", "digits-resnet"],
                        choices=sorted(MODELS))  # fmt: skip
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--range-methods", action="store_true",
                        help="only the range methods and the per-tensor choice, all-INT8 on ONNX Runtime")  # fmt: skip
    parser.add_argument("--rounding", action="store_true",
                        help="only round-to-nearest against learned rounding, all-INT8 on ONNX Runtime")  # fmt: skip
    parser.add_argument("--classes", action="store_true",
                        help="only where the all-INT8 error sits: each class of units kept high, and α beyond the "
                        "job's, all-INT8 on ONNX Runtime")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(cpu_features().describe())
    results = []
    with tempfile.TemporaryDirectory(prefix="trtmix-int8-") as folder:
        for name in args.models if args.range_methods else ():
            results.append(range_methods(name, Path(folder)))
            print(range_markdown(results[-1]) + "\n", flush=True)
        for name in args.models if args.rounding else ():
            results.append(rounding_quality(name, Path(folder)))
            print(rounding_markdown(results[-1]) + "\n", flush=True)
        for name in args.models if args.classes else ():
            results.append(error_classes(name, Path(folder)))
            print(classes_markdown(results[-1]) + "\n", flush=True)
        for name in () if args.range_methods or args.rounding or args.classes else args.models:
            print(f"{name}...", file=sys.stderr, flush=True)
            results.append(run_model(name, Path(folder), args.rounds))
            print(markdown(results[-1]) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
