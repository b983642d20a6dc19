"""Learned weight rounding as a measured quantizer option: kept only where the job's metric says it helps.

``trtmix.quant.rounding`` lowers each unit's output error on calibration data, which is not the job's metric: an
error moved from one unit's output to where the metric notices it more, or learned on too few rows, can cost
accuracy.  So, as for smoothing and bias correction (``trtmix.job.quantizers``), the all-INT8 plan is compiled
with the chosen option's ranges and with the same ranges plus learned rounding, each run by ONNX Runtime on the
search split and scored; the learned values are kept only if the score is higher (a tie keeps round-to-nearest).
The report gives both scores, per unit rounded (held-out error ratio) or skipped (why), and the seconds spent
learning and scoring, which is all this option adds to a job.  A resumed job reads the score from the journal's
``measured``; where learned rounding lost, it is not learned again, and where it won, the values the previous run
saved (``ranges.json`` and its ``ranges.rounding.npz``) are reused when they were learned for exactly these ranges
(the saved ranges, less their rounding, hash the same), else learned again: learning is most of this option's cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from trtmix.calibration.ranges import LearnedRounding, Ranges
from trtmix.data.recipes import Feed
from trtmix.ir.units import Unit
from trtmix.job.evaluation import Evaluation
from trtmix.quant.builder import Builder
from trtmix.quant.flavours import Flavour
from trtmix.quant.plan import PrecisionPlan
from trtmix.quant.rounding import MIN_BATCHES, learn_rounding
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

LOG = logging.getLogger(__name__)
LABEL = "learned weight rounding"
CalibrationSource = Callable[[], Sequence[Feed]]  # the calibration batches, read only when rounding is learned


def measured_rounding(
    enabled: bool,
    ranges: Ranges,
    chosen: str,
    measured: dict[str, float],
    learn: Callable[[Ranges], tuple[Ranges, Any]],
    score: Callable[[Ranges], float],
    saved: Path | None = None,
) -> tuple[Ranges, dict[str, Any]]:
    """``ranges`` with learned rounding where it scores higher than ``chosen`` (in ``measured``), and the report.

    ``learn`` is ``learn_rounding`` bound to the job's model, flavour and calibration batches; ``score`` compiles
    the all-INT8 plan with the ranges given and scores it on the search split.  ``measured`` gains the new label.
    ``saved``: the ranges file a previous run of this job wrote; where ``measured`` (the journal's) already says
    rounding wins, its learned values are reused if they were learned for these ranges (``saved_rounding``).
    """
    start = time.perf_counter()
    label = f"{chosen}, {LABEL}"
    report: dict[str, Any] = {"enabled": False, "requested": enabled, "label": label}
    if not enabled:
        return ranges, {**report, "note": "off (--no-weight-rounding)"}
    if label in measured and chosen in measured:  # a resumed job: the journal has both scores
        scores = {"score_with": measured[label], "score_without": measured[chosen]}
        if measured[label] <= measured[chosen]:
            note = "not kept: it did not score higher when this job measured it (not learned again)"
            return ranges, {**report, **scores, "note": note, "seconds": 0.0}
        reused = saved_rounding(saved, ranges)
        if reused is not None:
            note = f"kept when this job measured it; the values learned then are reused from {saved}"
            return replace(ranges, rounding=reused), {**report, **scores, "enabled": True, "reused": True,
                                                      "weights": sorted(reused), "learn_seconds": 0.0, "note": note,
                                                      "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
    learned, record = learn(ranges)
    report["reused"] = False
    report["units"] = record.to_dict()
    report["learn_seconds"] = round(record.seconds, 2)
    if not learned.rounding:
        note = record.note or "no unit's learned rounding beat round-to-nearest on the held-out calibration batches"
        return ranges, {**report, "note": note, "seconds": round(time.perf_counter() - start, 2)}
    scored = time.perf_counter()
    if chosen not in measured:  # a job that measured no other option (--no-smooth --no-bias-correction)
        measured[chosen] = score(ranges)
    if label not in measured:
        measured[label] = score(learned)
    report["score_seconds"] = round(time.perf_counter() - scored, 2)
    with_rounding, without = measured[label], measured[chosen]
    kept = with_rounding > without
    report.update(enabled=kept, score_with=with_rounding, score_without=without,
                  seconds=round(time.perf_counter() - start, 2),
                  note=None if kept else "not kept: the all-INT8 score is not higher with it")  # fmt: skip
    return (learned if kept else ranges), report


def saved_rounding(saved: Path | None, ranges: Ranges) -> Mapping[str, LearnedRounding] | None:
    """The learned values in the ranges file ``saved``, if they were learned for exactly ``ranges``; else None.

    Exactly: the saved ranges less their rounding hash as ``ranges`` do (same calibration, option, smoothing,
    shifts, bias correction), so a file from another option or job is never applied.  ``Ranges.load`` checks each
    weight's digest against the ``.npz``; a missing, unreadable or altered file is learned again, not trusted.
    """
    if saved is None or not saved.exists():
        return None
    try:
        previous = Ranges.load(saved)
    except Exception as err:  # any unreadable file: learning again is always correct, only slower
        LOG.info("learned rounding not reused: %s cannot be read (%s)", saved, err)
        return None
    same = replace(previous, rounding={}).stable_hash() == replace(ranges, rounding={}).stable_hash()
    if not (previous.rounding and same):
        LOG.info("learned rounding not reused: %s was saved for other ranges", saved)
        return None
    return previous.rounding


def job_rounding(
    enabled: bool, trial: Any, chosen: str, ranges: Ranges, calibration: CalibrationSource | None,
    saved: Path | None = None,
) -> tuple[Ranges, dict[str, Any]]:  # fmt: skip
    """``measured_rounding`` for ``trtmix.job.quantizers``: ``trial`` is its ``_Trial`` (model, plan, evaluation).

    ``ranges`` are the chosen option's, ``chosen`` its label in ``trial.measured``; the score is remembered there,
    and so journalled with the other options'.  ``saved``: the previous run's ranges file (its values reused).
    """
    learn = rounding_learner(trial.model, trial.units, trial.flavour, calibration, trial.plan)
    score = all_int8_scorer(trial.model, trial.units, trial.flavour, trial.evaluation, trial.plan,
                            trial.config.threads, trial.model_hash)  # fmt: skip
    return measured_rounding(enabled, ranges, chosen, trial.measured, learn, score, saved)


def rounding_learner(
    model: onnx.ModelProto, units: list[Unit], flavour: Flavour, calibration: CalibrationSource | None,
    plan: PrecisionPlan,
) -> Callable[[Ranges], tuple[Ranges, Any]]:  # fmt: skip
    """``learn`` for ``measured_rounding``: the calibration batches read once, the all-INT8 plan's float typing."""

    def learn(ranges: Ranges) -> tuple[Ranges, Any]:
        feeds = list(calibration()) if calibration is not None else []
        learned, record = learn_rounding(model, units, ranges, flavour, feeds, default=plan.default,
                                         fp32_nodes=plan.fp32_nodes)  # fmt: skip
        if calibration is None:
            record.note = f"no calibration batches were given to the quantizer choice (needs {MIN_BATCHES} or more)"
        return learned, record

    return learn


def all_int8_scorer(
    model: onnx.ModelProto, units: list[Unit], flavour: Flavour, evaluation: Evaluation, plan: PrecisionPlan,
    threads: int | None, model_hash: str,
) -> Callable[[Ranges], float]:  # fmt: skip
    """``score`` for ``measured_rounding``: the all-INT8 ``plan`` compiled with the ranges, scored on search."""

    def score(ranges: Ranges) -> float:
        builder = Builder(model, units, ranges, flavour, model_hash=model_hash)
        compiled = builder.compile(plan, check=False)
        with OnnxRuntimeRunner(compiled, threads, optimize=True) as runner:
            return evaluation.score("search", evaluation.run(runner, "search"))

    return score
