"""The job's quantizer settings, chosen by measurement: smoothing's α (and centring) from a few all-INT8 graphs.

``trtmix.quant.smooth`` proposes scales per tensor from an expected-noise model; that model does not see a
classifier's argmax or a channel whose outliers are a few tokens, so the job checks it.  For each option (no
smoothing, each α of ``MEASURED_ALPHAS``, and for symmetric int8 the last one with its channels centred) the all-INT8
plan is compiled, run by ONNX Runtime (the accuracy oracle) on the search split, and scored with the job's metric,
as the search scores its probes; the best score wins, ties going to the simpler option.  A continuous stand-in on a
few calibration batches was tried first and kept a scaling that cost EfficientNet-Lite0 17 points of top-1
agreement while its KL moved by 0.5%.  ``--smooth-alpha`` fixes α (still measured against no smoothing and
centring), ``--no-smooth`` skips the search.  Bias correction, when asked for (the default), is then measured
against the chosen option without it.  Ranges chosen per tensor (``trtmix.quant.range_choice``: each tensor's
range method by the least error at its readers' outputs), when the job offers them, are measured the same way: the
chosen option on those ranges against the same option on the calibrated ones (on MiniLM the per-tensor choice clips
LayerNorm outliers and loses; the job's metric, not the unit-output error, decides).  Every option's score is cached
in the journal and reported; the holdout split, which no choice sees, checks the result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from trtmix.calibration.ranges import Ranges
from trtmix.ir.large import model_sha256, tensor_bytes
from trtmix.ir.units import Unit
from trtmix.job.evaluation import Evaluation
from trtmix.job.weight_rounding import CalibrationSource, job_rounding
from trtmix.memory import release
from trtmix.progress import bar as progress_bar
from trtmix.quant.builder import Builder
from trtmix.quant.flavours import Flavour
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.smooth import SmoothSettings, plan_conv_centring, plan_smoothing
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner
from trtmix.search.journal import Journal

LOG = logging.getLogger(__name__)
JOURNAL_KEY = "quantizers"
MEASURED_ALPHAS = (0.5, 0.8)
PER_TENSOR = "per-tensor ranges"
CONV_CENTRED = "centred convs"
# What offers per-tensor ranges: called only when the job measures them; returns the ranges and the choice's record
# (``RangeChoice.to_dict()``), or None and the reason it could not choose (e.g. too few calibration batches).
RangeChoiceSource = Callable[[], tuple[Ranges | None, dict[str, Any]]]


@dataclass(frozen=True)
class QuantizerOption:
    """One way to quantize the job's INT8 units: smoothing α (None: none), centring, bias correction, which ranges."""

    alpha: float | None
    centre: bool
    bias: bool
    per_tensor: bool = False  # the per-tensor range choice instead of the calibrated method's ranges
    conv_centre: bool = False  # one-sided (ReLU6) inputs of convolutions centred (``plan_conv_centring``)


@dataclass(frozen=True)
class QuantizerSettings:
    """What the quantizer choice needs of a job's settings."""

    smooth: SmoothSettings = field(default_factory=SmoothSettings)  # --smooth-alpha / --no-smooth
    bias_correction: bool = True  # measured against the chosen option without it
    default: Precision = Precision.FP16  # the precision of units the all-INT8 plan leaves high (FP32 nodes)
    threads: int | None = None  # ONNX Runtime's threads scoring each option
    weight_rounding: bool = True  # learned weight rounding, measured on the chosen option (--no-weight-rounding)


def job_quantizers(
    config: QuantizerSettings,
    model: onnx.ModelProto,
    units: list[Unit],
    calibrated: Ranges,
    flavour: Flavour,
    journal: Journal,
    evaluation: Evaluation,
    fp32_nodes: frozenset[str] = frozenset(),
    range_choice: RangeChoiceSource | None = None,
    calibration: CalibrationSource | None = None,
    saved: Path | None = None,
) -> tuple[Ranges, dict[str, Any]]:
    """The ranges every build of the job uses, and the report of how they were chosen.

    Each step scores the option chosen so far against it with one change, and the higher score wins: the smoothing
    options, then centred convs, per-tensor ranges, bias correction off, and learned weight rounding.
    ``fp32_nodes``: the all-high plan's FP32 nodes, kept in the all-INT8 plan each option is scored on.
    ``calibration``: the batches learned weight rounding learns on (``trtmix.job.weight_rounding``; None: none).
    ``range_choice``: ranges chosen per tensor, measured against the calibrated ones (None: not offered).
    ``saved``: the ranges file a previous run of the job wrote, whose learned rounding a resumed job reuses.
    """
    cached = journal.cached(JOURNAL_KEY)
    start = time.perf_counter()
    measured: dict[str, float] = dict(cached["measured"]) if cached else {}  # a resumed job scores nothing again
    trial = _Trial(config, model, units, calibrated, flavour, evaluation, measured, fp32_nodes)
    options = _options(config.smooth, flavour, config.bias_correction)
    chosen = _best_smoothing(trial, options, range_choice is not None)
    chosen, conv_report = _measure_conv_centring(trial, options, chosen)
    chosen, per_tensor_report = _measure_per_tensor(trial, options, chosen, range_choice)
    chosen = _measure_bias_off(trial, options, chosen)
    ranges, smoothing = _prepared(model, units, trial.base(options[chosen]), config, flavour, options[chosen])
    # learned weight rounding (issue 33, part 3): the chosen option with it, kept only where it scores higher
    ranges, rounding = job_rounding(config.weight_rounding, trial, chosen, ranges, calibration, saved)
    report = _report(trial, options[chosen], ranges, {**smoothing, "option": chosen, "measured": measured}, rounding,
                     per_tensor_report, conv_report)  # fmt: skip
    if not cached:
        journal.store(JOURNAL_KEY, {"measured": measured, "seconds": time.perf_counter() - start})
    report["smoothing"]["seconds"] = (cached or {}).get("seconds", time.perf_counter() - start)
    return ranges, report


def _best_smoothing(trial: _Trial, options: dict[str, QuantizerOption], range_choice: bool) -> str:
    """The smoothing option that scores best, ties going to the simpler (earlier) one.

    Nothing is scored where there is nothing to compare (one option, no bias correction, no range choice: the job
    then takes "off" without compiling an all-INT8 graph here).
    """
    measured = trial.measured
    if len(options) > 1 or trial.config.bias_correction or range_choice:
        for label, option in progress_bar(options.items(), desc="quantizers", unit="option"):
            trial.score(label, option)
    best = max((measured[label] for label in options), default=None) if measured else None
    return next(label for label in options if best is None or measured[label] >= best)


def _measure_conv_centring(
    trial: _Trial, options: dict[str, QuantizerOption], chosen: str
) -> tuple[str, dict[str, Any] | None]:
    """The chosen option with one-sided conv inputs centred, scored against it: the winning label, and the tensors.

    The report names the tensors it centres; None where no tensor qualifies (a transformer), and where the step does
    not apply: uint8 (an asymmetric flavour) wastes no level on a ReLU6 output, and ``--no-smooth`` reads every input
    as exported.  Nothing is scored then.

    Measured on EfficientNet-Lite0 (``benchmarks/efficientnet_int8.py``): its depthwise convs read ReLU6 outputs, and
    centring them took all-INT8 top-1 agreement from 0.80 to 0.84 (0.89 with percentile or per-tensor ranges).
    """
    if not (trial.flavour.symmetric and trial.config.smooth.enabled):
        return chosen, None
    prepared, _ = _prepared(trial.model, trial.units, trial.calibrated, trial.config, trial.flavour, options[chosen])
    _, would = plan_conv_centring(trial.model, trial.units, prepared)
    if not would["centred"]:
        return chosen, None
    label = f"{chosen}, {CONV_CENTRED}"
    options[label] = replace(options[chosen], conv_centre=True)
    if trial.score(label, options[label]) > trial.measured[chosen]:
        return label, would
    return chosen, would


def _measure_per_tensor(
    trial: _Trial, options: dict[str, QuantizerOption], chosen: str, range_choice: RangeChoiceSource | None
) -> tuple[str, dict[str, Any] | None]:
    """The chosen option on the per-tensor ranges, scored against it: the label that wins, and the choice's report.

    The report holds the choice per tensor, its seconds (the choice itself; the extra all-INT8 score is in the
    quantizers' seconds) and, where no choice could be made, why.  None where the job offers no choice.
    """
    if range_choice is None:
        return chosen, None
    start = time.perf_counter()
    ranges, record = range_choice()
    record = {**record, "seconds": round(time.perf_counter() - start, 2)}
    if ranges is None:
        LOG.info("per-tensor ranges not measured: %s", record.get("skipped"))
        return chosen, record
    trial.per_tensor = ranges
    label = f"{chosen}, {PER_TENSOR}"
    options[label] = replace(options[chosen], per_tensor=True)
    if trial.score(label, options[label]) > trial.measured[chosen]:
        return label, record
    return chosen, record


def _measure_bias_off(trial: _Trial, options: dict[str, QuantizerOption], chosen: str) -> str:
    """The chosen option without bias correction where that scores higher; else the chosen one.

    Measured, not assumed: it helps depthwise convolutions, and can cost a transformer a little.  Only where bias
    correction was asked for (``--no-bias-correction``: nothing to compare).
    """
    if not trial.config.bias_correction:
        return chosen
    without = f"{chosen}, no bias correction"
    options[without] = replace(options[chosen], bias=False)
    return without if trial.score(without, options[without]) > trial.measured[chosen] else chosen


def _report(
    trial: _Trial, option: QuantizerOption, ranges: Ranges, smoothing: dict[str, Any], rounding: dict[str, Any],
    per_tensor: dict[str, Any] | None, conv: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """The quantizers' report: each step's piece, and whether the chosen ``option`` kept what it measured."""
    correction = {"enabled": ranges.bias_correction, "requested": trial.config.bias_correction,
                  "channel_statistics": len(trial.calibrated.channels)}  # fmt: skip
    report = {"smoothing": smoothing, "bias_correction": correction, "weight_rounding": rounding}
    if per_tensor is not None:
        report["per_tensor_ranges"] = {**per_tensor, "kept": option.per_tensor}
    if conv is not None:
        report["conv_centring"] = {**conv, "kept": option.conv_centre}
    return report


class _Trial:
    """Scores options: the all-INT8 plan under them, run by ONNX Runtime on the search split (each once)."""

    def __init__(
        self, config: QuantizerSettings, model: onnx.ModelProto, units: list[Unit], calibrated: Ranges,
        flavour: Flavour, evaluation: Evaluation, measured: dict[str, float], fp32_nodes: frozenset[str],
    ) -> None:  # fmt: skip
        self.config, self.model, self.units, self.calibrated = config, model, units, calibrated
        self.flavour, self.evaluation, self.measured = flavour, evaluation, measured
        self.plan = PrecisionPlan.with_int8([unit.name for unit in units], config.default, fp32_nodes)
        self.model_hash = model_sha256(model)  # once, not per option
        self.per_tensor: Ranges | None = None  # the per-tensor choice, once measured

    def base(self, option: QuantizerOption) -> Ranges:
        """The ranges ``option`` starts from: the calibrated ones, or the per-tensor choice."""
        if option.per_tensor:
            assert self.per_tensor is not None, "per-tensor option scored before the choice was made"
            return self.per_tensor
        return self.calibrated

    def score(self, label: str, option: QuantizerOption) -> float:
        """The job's metric of the all-INT8 plan under ``option`` (measured once, then remembered)."""
        if label not in self.measured:
            ranges, _ = _prepared(self.model, self.units, self.base(option), self.config, self.flavour, option)
            builder = Builder(self.model, self.units, ranges, self.flavour, model_hash=self.model_hash)
            compiled = builder.compile(self.plan, check=False)
            evaluation = self.evaluation
            with OnnxRuntimeRunner(compiled, self.config.threads, optimize=True) as runner:
                self.measured[label] = evaluation.score("search", evaluation.run(runner, "search"))
            del compiled, ranges
            release(tensor_bytes(self.model))  # the option's graph and session
            LOG.info("quantizers %s: all-INT8 %s %.5f", label, self.evaluation.metric, self.measured[label])
        return self.measured[label]


def _options(settings: SmoothSettings, flavour: Flavour, bias: bool) -> dict[str, QuantizerOption]:
    """Label → each smoothing option to measure (α None: no smoothing), simplest first."""
    options = {"off": QuantizerOption(None, False, bias)}
    if not settings.enabled:
        return options
    alphas = MEASURED_ALPHAS if settings.alpha is None else (settings.alpha,)
    for alpha in alphas:
        options[f"α={alpha}"] = QuantizerOption(alpha, False, bias)
    if flavour.symmetric:  # signed int8 wastes half its range on a skewed channel; centring is measured once
        options[f"α={alphas[-1]}, centred"] = QuantizerOption(alphas[-1], True, bias)
    return options


def _prepared(
    model: onnx.ModelProto, units: list[Unit], base: Ranges, config: QuantizerSettings, flavour: Flavour,
    option: QuantizerOption,
) -> tuple[Ranges, dict[str, Any]]:  # fmt: skip
    """``base`` (calibrated or per-tensor ranges) with one option's smoothing and bias correction."""
    float16 = flavour.float_base is Precision.FP16
    settings = SmoothSettings(enabled=option.alpha is not None, alpha=option.alpha)
    ranges, report = plan_smoothing(model, units, base, settings, float16, option.centre)
    report["searched"] = config.smooth.alpha is None
    if option.conv_centre:
        ranges, _ = plan_conv_centring(model, units, ranges)
    return replace(ranges, bias_correction=option.bias), report
