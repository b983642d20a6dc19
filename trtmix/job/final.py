"""The job's final choice: every feasible probe is a candidate, the close ones are re-timed interleaved.

``trtmix.search.choose`` decides; this module gathers the candidates from the journal (the high-precision plan and
all-INT8 included), adds probes off the bisection path where latency was seen to rise with k, and times the
contenders with runners opened once each, so the interleaved rounds compare like with like.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from trtmix.job.pipeline import Pipeline
from trtmix.job.report import ORIGINAL
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.runtime.base import Runner
from trtmix.search.bisection import BisectionSearch
from trtmix.search.choose import Candidate, Choice, choose, latency_violations

ROUND_RUNS = 5  # timed runs per contender per interleaved round (their median is the round's figure)
ORIGINAL_PLAN = PrecisionPlan(default=Precision.FP32)  # what plan.json says when the user's own graph is shipped
EXTRA_PROBES = 2  # probes added off the bisection path when latency rises with k


def final_choice(
    pipeline: Pipeline, search: BisectionSearch, baseline: dict[str, Any], rounds: int = 12
) -> tuple[PrecisionPlan | None, dict[str, Any]]:
    """The chosen plan (None when no probe met the budget) and the report's record of how it was chosen.

    ``rounds``: interleaved rounds of the final timing (``--final-rounds``; 0 chooses by the probes' medians).
    """
    records = {k: pipeline.journal.get(search.plan_for(k).stable_hash()) for k in search.probes}
    violations = latency_violations([_point(k, r) for k, r in records.items() if _ok(r)])
    extra = _extra_probes(pipeline, search, records, baseline) if violations else []
    high = pipeline.journal.get(pipeline.driver.base.stable_hash())
    pool = {r["plan_hash"]: r for r in [*records.values(), high] if _ok(r) and _feasible(search, r, baseline)}
    part: dict[str, Any] = {"latency_violations": violations, "extra_probes": extra}
    if not pool:
        return None, part
    candidates = [Candidate(key, r["k"], *_interval(r)) for key, r in pool.items()]
    reference = high["plan_hash"] if high and high["plan_hash"] in pool else min(candidates, key=lambda c: c.k).key
    if rounds == 0:
        fastest = min(candidates, key=lambda c: (c.median_ms, -c.k))
        fp32 = baseline["fp32"]["latency"]
        if (fp32.get("ci_high_ms") or fp32["median_ms"]) < fastest.ci_low_ms:  # faster beyond both intervals
            return ORIGINAL_PLAN, {**part, "original": True}
        return PrecisionPlan.from_dict(pool[fastest.key]["plan"]), part
    choice = _timed_choice(pipeline, candidates, reference, pool, rounds)
    part["final_timing"] = {**asdict(choice), "k": {c.key: c.k for c in candidates} | {ORIGINAL: None},
                            "baseline": reference, "round_runs": ROUND_RUNS}  # fmt: skip
    if choice.key == ORIGINAL:
        return ORIGINAL_PLAN, {**part, "original": True}
    return PrecisionPlan.from_dict(pool[choice.key]["plan"]), part


def _timed_choice(
    pipeline: Pipeline, candidates: list[Candidate], reference: str, pool: dict[str, dict[str, Any]], rounds: int
) -> Choice:
    """``choose`` with the contenders and the user's original graph timed in the same interleaved rounds.

    The original runs as the FP32 baseline was timed (OpenVINO: at its f32 precision hint, as TensorRT runs an FP32
    graph); every runner is opened once, so the rounds compare like with like.
    """
    runners: dict[str, Runner] = {}
    feed = pipeline.evaluation.feeds["search"][0]

    def measure(key: str) -> float:
        if key not in runners:
            runners[key] = _runner(pipeline, pool[key]["plan"] if key != ORIGINAL else None)
        return runners[key].time(feed, ROUND_RUNS, 1).median_ms

    try:
        return choose(candidates, reference, measure, rounds, original=ORIGINAL)
    finally:
        for runner in runners.values():
            runner.close()


def _runner(pipeline: Pipeline, plan: dict[str, Any] | None) -> Runner:
    """A runner on a plan's artifact, or (None) on the original graph's, built through the builder.

    The builder checks each artifact's hash: a truncated one is rebuilt, never timed.
    """
    if plan is not None:
        return pipeline.backend.open(pipeline.build(PrecisionPlan.from_dict(plan)))
    at_precision = getattr(pipeline.backend, "at_precision", None)
    timer = at_precision("f32") if at_precision else pipeline.backend
    return timer.open(pipeline.float_artifact)


def _ok(record: dict[str, Any] | None) -> bool:
    return bool(record) and record["status"] == "ok"  # type: ignore[index]


def _feasible(search: BisectionSearch, record: dict[str, Any], baseline: dict[str, Any]) -> bool:
    return search.budget.feasible(record["accuracy"] / baseline["accuracy"])


def _interval(record: dict[str, Any]) -> tuple[float, float, float]:
    latency = record["latency"]
    median = latency["median_ms"]
    return median, latency.get("ci_low_ms") or median, latency.get("ci_high_ms") or median


def _point(k: int, record: dict[str, Any]) -> tuple[int, float, float, float]:
    return (k, *_interval(record))


def _extra_probes(
    pipeline: Pipeline, search: BisectionSearch, records: dict[int, Any], baseline: dict[str, Any]
) -> list[int]:
    """Measure a few plans off the bisection path, spread over the feasible range, and add them to ``records``."""
    feasible_ks = [k for k, r in records.items() if _ok(r) and _feasible(search, r, baseline)]
    if not feasible_ks or max(feasible_ks) < 2:
        return []
    spread = {int(round(k)) for k in np.linspace(0, max(feasible_ks), EXTRA_PROBES + 2)[1:-1]}
    extra = sorted(spread - set(records))
    for k in extra:
        records[k] = pipeline.measure(search.plan_for(k))
    return extra
