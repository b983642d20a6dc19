"""The job's quantizer settings, chosen by measurement: smoothing's α (and centring) from a few all-INT8 graphs.

``trtmix.quant.smooth`` proposes scales per tensor from an expected-noise model; that model does not see a
classifier's argmax or a channel whose outliers are a few tokens, so the job checks it. For each option (no
smoothing, each α of ``MEASURED_ALPHAS``, and for symmetric int8 the last one with its channels centred) the all-INT8
plan is compiled and scored on calibration batches against the float model, with the job's metric, as the ``kl``
ordering scores units; the lowest divergence wins.  ``--smooth-alpha`` fixes α (centring is still measured),
``--no-smooth`` skips the search.  The choice and every measured divergence are cached in the journal and reported.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import onnx

from trtmix.calibration.ranges import Ranges
from trtmix.ir.units import Unit
from trtmix.job.config import CompileConfig
from trtmix.job.evaluation import scored_output, split_feeds
from trtmix.quant.flavours import Flavour
from trtmix.quant.plan import Precision
from trtmix.quant.smooth import SmoothSettings, plan_smoothing
from trtmix.runtime.build import Builder
from trtmix.search.journal import Journal
from trtmix.sensitivity.measured import PlanScorer

LOG = logging.getLogger(__name__)
JOURNAL_KEY = "quantizers"
MEASURED_ALPHAS = (0.5, 0.8)
FEEDS = 2  # calibration batches each option is scored on


def job_quantizers(
    config: CompileConfig,
    model: onnx.ModelProto,
    units: list[Unit],
    calibrated: Ranges,
    flavour: Flavour,
    journal: Journal,
) -> tuple[Ranges, dict[str, Any]]:
    """The ranges every build of the job uses, and the report of how they were chosen."""
    options = _options(config.smooth, flavour)
    cached = journal.cached(JOURNAL_KEY)
    measured: dict[str, float] = cached["measured"] if cached else {}
    start = time.perf_counter()
    if len(options) > 1 and not cached:
        feeds = split_feeds(config, model, "calibration", FEEDS)
        index, _ = scored_output(model, config.score_output)
        for label, (alpha, centre) in options.items():
            ranges, _ = _prepared(model, units, calibrated, config, flavour, alpha, centre)
            scorer = PlanScorer(Builder(model, units, ranges, flavour), config.metric, feeds, config.default, index)
            measured[label] = scorer.distance([unit.name for unit in units])
            LOG.info("quantizers %s: all-INT8 divergence %.3g", label, measured[label])
    chosen = min(measured, key=lambda label: measured[label]) if measured else next(iter(options))
    ranges, smoothing = _prepared(model, units, calibrated, config, flavour, *options[chosen])
    correction = {"enabled": config.bias_correction, "channel_statistics": len(calibrated.channels)}
    report = {"smoothing": {**smoothing, "option": chosen, "measured": measured}, "bias_correction": correction}
    if not cached:
        journal.store(JOURNAL_KEY, {"measured": measured, "seconds": time.perf_counter() - start})
    report["smoothing"]["seconds"] = (cached or {}).get("seconds", time.perf_counter() - start)
    return ranges, report


def _options(settings: SmoothSettings, flavour: Flavour) -> dict[str, tuple[float | None, bool]]:
    """Label → (α, centre) of each option to measure (α None: no smoothing)."""
    if not settings.enabled:
        return {"off": (None, False)}
    alphas = MEASURED_ALPHAS if settings.alpha is None else (settings.alpha,)
    options: dict[str, tuple[float | None, bool]] = {"off": (None, False)}
    for alpha in alphas:
        options[f"α={alpha}"] = (alpha, False)
    if flavour.symmetric:  # signed int8 wastes half its range on a skewed channel; centring is measured once
        options[f"α={alphas[-1]}, centred"] = (alphas[-1], True)
    return options


def _prepared(
    model: onnx.ModelProto, units: list[Unit], calibrated: Ranges, config: CompileConfig, flavour: Flavour,
    alpha: float | None, centre: bool,
) -> tuple[Ranges, dict[str, Any]]:  # fmt: skip
    """``calibrated`` with one option's smoothing and the job's bias correction."""
    float16 = flavour.float_base is Precision.FP16
    settings = SmoothSettings(enabled=alpha is not None, alpha=alpha)
    ranges, report = plan_smoothing(model, units, calibrated, settings, float16, centre)
    report["searched"] = config.smooth.alpha is None
    return replace(ranges, bias_correction=config.bias_correction), report
