"""``trtmix compile`` end to end: run the pipeline, choose, check on the holdout split, write outputs and report."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from trtmix.errors import JobInterruptedError, TrtmixError
from trtmix.job.config import CompileConfig
from trtmix.job.final import ORIGINAL, final_choice
from trtmix.job.outputs import holdout_check, write_original_outputs, write_plan_outputs
from trtmix.job.pipeline import Pipeline
from trtmix.job.report import write_report
from trtmix.job.sections import engine_check, peak_rss_mb, report_sections
from trtmix.job.steps import step

LOG = logging.getLogger(__name__)


def run_compile(source: str, output: Path, config: CompileConfig, fresh: bool = False) -> dict[str, Any]:
    """Run the whole job into ``output`` and return the report (also written as report.json / .html / .png)."""
    started = time.perf_counter()
    try:
        pipeline = Pipeline(source, output, config, fresh=fresh)  # export, calibration, quantizers: steps to resume
    except KeyboardInterrupt:
        raise JobInterruptedError(output) from None
    try:
        return _run(pipeline, output, config, started)
    except KeyboardInterrupt:
        raise JobInterruptedError(output) from None
    finally:
        pipeline.close()


def _run(pipeline: Pipeline, output: Path, config: CompileConfig, started: float) -> dict[str, Any]:
    """The job's steps after its pipeline is assembled (each reports running out of memory or disk by name)."""
    resumed_before = len(pipeline.journal.records())
    with step("the FP32 and all-high baselines", output):
        baseline = pipeline.baseline()
    if baseline["accuracy"] <= 0:
        raise TrtmixError(f"The float model scores {baseline['accuracy']} on the search split: nothing to keep.",
                          fix="check the metric and the labels")  # fmt: skip
    searches = _searches(pipeline, output, list(config.orderings()), baseline["accuracy"])
    primary = searches[config.ordering]
    with step("the final interleaved timing", output):
        chosen_plan, final = final_choice(pipeline, primary, baseline, config.final_rounds)
    with step("the report's latency model", output):
        report = report_sections(pipeline, searches, baseline, chosen_plan, final["extra_probes"])
    report.update(final)
    if final.get("original"):
        with step("writing the original graph as the choice", output):
            report.update(chosen=ORIGINAL, chosen_k=0, holdout=_original_holdout(baseline),
                          files=write_original_outputs(output, pipeline.workspace.original, pipeline.float_artifact,
                                                       pipeline.backend.name, pipeline.tensorrt_settings))  # fmt: skip
    elif chosen_plan is not None:
        with step("checking the chosen plan and writing it", output):
            report["engine_check"] = engine_check(pipeline, chosen_plan)
            report["holdout"] = holdout_check(pipeline.driver, chosen_plan, baseline)
            report["files"] = write_plan_outputs(output, pipeline.builder, chosen_plan, pipeline.tensorrt_settings)
    report["builds"] = pipeline.measured
    report["resumed_probes"] = resumed_before
    report["wall_seconds"] = time.perf_counter() - started
    report["peak_rss_mb"] = peak_rss_mb()
    with step("writing the report", output):
        write_report(report, output)
    return report


def _original_holdout(baseline: dict[str, Any]) -> dict[str, Any]:
    """The holdout figures when the user's own graph is shipped: the FP32 model's, against the baseline's."""
    fp32 = baseline["fp32"]["holdout"]
    return {"baseline": baseline["holdout"], "accuracy": fp32,
            "relative": fp32 / baseline["holdout"] if baseline["holdout"] else float("nan")}  # fmt: skip


def _searches(pipeline: Pipeline, output: Path, orderings: list[str], baseline_accuracy: float) -> dict[str, Any]:
    """One search per ordering: on Ray, all of them together (``--compare-orderings``); else one after another."""
    if len(orderings) > 1 and pipeline.config.parallel.enabled:
        with step(f"the searches along the {', '.join(orderings)} orderings", output):
            return pipeline.searches_together(orderings, baseline_accuracy)
    searches = {}
    for name in orderings:
        with step(f"the search along the {name} ordering", output):
            searches[name] = pipeline.search(name, baseline_accuracy)
    return searches
