"""``trtmix compile`` end to end: run the pipeline, choose, check on the holdout split, write outputs and report."""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from trtmix import __version__
from trtmix.errors import JobInterruptedError, TrtmixError
from trtmix.ir.groups import describe_groups
from trtmix.ir.large import model_sha256
from trtmix.job.config import CompileConfig
from trtmix.job.final import ORIGINAL, final_choice
from trtmix.job.latency import add_predictions, job_group_savings
from trtmix.job.outputs import holdout_check, write_original_outputs, write_plan_outputs
from trtmix.job.pipeline import Pipeline
from trtmix.job.report import figures_text, latency_figures, mark_pareto, write_report
from trtmix.job.steps import step
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.quant.smooth import describe_quantizers
from trtmix.runtime.cpu import cpu_features
from trtmix.runtime.engine_report import mismatches, not_found
from trtmix.runtime.timing import busy
from trtmix.search.bisection import BisectionSearch, order_computed

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
        chosen_plan, final = final_choice(pipeline, primary, baseline)
    with step("the report's latency model", output):
        report = _report(pipeline, searches, baseline, chosen_plan, final["extra_probes"])
    report.update(final)
    if final.get("original"):
        with step("writing the original graph as the choice", output):
            report.update(chosen=ORIGINAL, chosen_k=0, holdout=_original_holdout(baseline),
                          files=write_original_outputs(output, pipeline.workspace.original, pipeline.float_artifact,
                                                       pipeline.backend.name, pipeline.tensorrt_settings))  # fmt: skip
    elif chosen_plan is not None:
        with step("checking the chosen plan and writing it", output):
            report["engine_check"] = _engine_check(pipeline, chosen_plan)
            report["holdout"] = holdout_check(pipeline.driver, chosen_plan, baseline)
            report["files"] = write_plan_outputs(output, pipeline.builder, chosen_plan, pipeline.tensorrt_settings)
    report["builds"] = pipeline.measured
    report["resumed_probes"] = resumed_before
    report["wall_seconds"] = time.perf_counter() - started
    report["peak_rss_mb"] = peak_rss_mb()
    with step("writing the report", output):
        write_report(report, output)
    return report


def _metric_ms(seconds: list[float]) -> float | None:
    """The metric's median cost per evaluation in ms (it runs on every probe), None before any evaluation."""
    return round(float(np.median(seconds)) * 1000, 3) if seconds else None


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


def _report(
    pipeline: Pipeline,
    searches: dict[str, BisectionSearch],
    baseline: dict[str, Any],
    chosen_plan: PrecisionPlan | None,
    extra_probes: list[int],
) -> dict[str, Any]:
    config = pipeline.config
    by_hash: dict[str, dict[str, Any]] = {}
    orderings: dict[str, list[dict[str, Any]]] = {}
    for k in extra_probes:  # measured off the bisection path because latency rose with k
        record = dict(pipeline.journal.get(searches[config.ordering].plan_for(k).stable_hash()) or {})
        if record:
            by_hash[record["plan_hash"]] = {**record, "relative": _relative(record, baseline), "orderings": ["extra"]}
    for name, search in searches.items():
        orderings[name] = []
        for k in sorted(search.probes):
            record = dict(pipeline.journal.get(search.plan_for(k).stable_hash()) or {})
            record["relative"] = _relative(record, baseline)
            entry = by_hash.setdefault(record["plan_hash"], {**record, "orderings": []})
            entry["orderings"].append(name)
            orderings[name].append({**record, "step": k})
    high = dict(pipeline.journal.get(pipeline.driver.base.stable_hash()) or {})
    if high and high["plan_hash"] not in by_hash:  # measured as the baseline though no search visited k = 0
        by_hash[high["plan_hash"]] = {**high, "relative": _relative(high, baseline), "orderings": ["baseline"]}
    probes = list(by_hash.values())
    mark_pareto(probes)
    latency = _latency_section(pipeline, probes, baseline)
    busy_probes = [p["k"] for p in probes if p.get("latency") and busy(p["latency"].get("load") or {})]
    primary = searches[config.ordering]
    all_int8 = next((p for p in probes if p["k"] == len(pipeline.units) and p["status"] == "ok"), None)
    backend = pipeline.backend
    return {
        "model": pipeline.source,
        "model_sha256": model_sha256(pipeline.model),
        "unit_count": len(pipeline.units),
        "backend": backend.name,
        "backend_requested": config.backend,
        "backend_version": backend.version,
        "backend_options": backend.options(),
        "flavour": config.flavour,
        "flavour_note": pipeline.builder.flavour.note(backend.name),
        "flavour_settings": pipeline.builder.flavour.metadata(),
        "quantizers": pipeline.quantizers,
        "scored_output": pipeline.evaluation.output_note,
        "cpu": cpu_features().describe(),
        "relative_to": config.relative_to,
        "busy_probes": busy_probes,
        "metric": pipeline.evaluation.metric,
        "metric_requested": config.metric,
        "metric_note": pipeline.evaluation.metric_note,
        "metric_ms": _metric_ms(pipeline.evaluation.metric_seconds),
        "budget": asdict(config.budget),
        "budget_text": config.budget.describe(config.reference),
        "baseline": baseline,
        "float_baseline": pipeline.float_baseline.record,
        "original_model": str(pipeline.workspace.original_path),
        "all_int8": all_int8 and {"latency": all_int8["latency"], "relative": all_int8["relative"],
                                  "accuracy": all_int8["accuracy"]},
        "orderings": orderings,
        "ordering_seconds": {name: pipeline.ordering_seconds(name) for name in searches},
        "orderings_computed": {name: order_computed(search.order) for name, search in searches.items()},
        "probes": probes,
        "chosen": chosen_plan.stable_hash() if chosen_plan else None,
        "chosen_k": len(chosen_plan.int8_units()) if chosen_plan else None,
        "stop_reason": primary.stop_reason,
        "violations": primary.violations(),
        "max_builds": primary.max_builds,
        "holdout": {"baseline": baseline["holdout"]},
        "units": _unit_table(pipeline, searches, chosen_plan, latency),
        "latency_model": latency and {k: v for k, v in latency.items() if k != "units"},
        "groups": _groups_section(pipeline),
        "versions": _versions(),
    }


def peak_rss_mb() -> float | None:
    """Peak resident memory of the process so far, in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _latency_section(
    pipeline: Pipeline, probes: list[dict[str, Any]], baseline: dict[str, Any]
) -> dict[str, Any] | None:
    """The per-unit latency model, each probe's predicted latency beside its measured one, and the error spread."""
    try:
        model = pipeline.latency_model()
    except TrtmixError as err:  # a report without the model beats no report: the search never relied on it
        LOG.warning("no per-unit latency model: %s", str(err).splitlines()[0])
        return None
    if model is None:
        return None
    errors = add_predictions(model, probes, baseline["all_high"]["latency"]["median_ms"])
    units = {name: {"high": lat.high_ms, "int8": lat.int8_ms, "saving": round(model.savings_ms.get(name, 0.0), 4),
                    "attributed": lat.attributed} for name, lat in model.units.items()}  # fmt: skip
    return {"errors": errors, "unattributed": model.unattributed, "profiled_high_ms": round(model.high_total_ms, 4),
            "profiled_int8_ms": round(model.int8_total_ms, 4), "units": units}  # fmt: skip


def _groups_section(pipeline: Pipeline) -> dict[str, Any] | None:
    """With ``--groups``: the steps, and per group of several units its saving together vs its members alone."""
    if not pipeline.groups:
        return None
    section: dict[str, Any] = {"steps": len(pipeline.groups), "description": describe_groups(pipeline.groups),
                               "groups": []}  # fmt: skip
    try:
        model = pipeline.latency_model()
        if model is not None:
            section["groups"] = job_group_savings(pipeline.driver, pipeline.groups, model)
    except TrtmixError as err:  # as for the latency model: the report goes on without it
        LOG.warning("no group savings: %s", str(err).splitlines()[0])
    if not section["groups"]:
        section["groups"] = [{"group": g.name, "members": list(g.members), "reasons": list(g.reasons)}
                             for g in pipeline.groups if len(g.members) > 1]  # fmt: skip
    return section


def _relative(record: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    """A probe's accuracy relative to the baseline's (None for a failed probe)."""
    return record["accuracy"] / baseline["accuracy"] if record.get("status") == "ok" else None


def _engine_check(pipeline: Pipeline, plan: PrecisionPlan) -> dict[str, Any] | None:
    """The chosen plan's units as the engine reports them (precision, layer, kernel, time), where it reports."""
    artifact = pipeline.build(plan)
    checks = pipeline.driver.precision_checks(plan, artifact)
    if checks is None:
        return None
    int8 = [c for c in checks if c.planned == "int8"]
    return {"units": {c.unit: asdict(c) | {"verified": c.verified, "matches": c.matches} for c in checks},
            "planned_int8": len(int8), "verified_int8": sum(c.verified for c in int8),
            "mismatches": [c.unit for c in mismatches(checks)],
            "not_found": [c.unit for c in not_found(checks)],
            "unverifiable": [c.unit for c in checks if c.fused_with]}  # fmt: skip


def _unit_table(
    pipeline: Pipeline,
    searches: dict[str, BisectionSearch],
    chosen_plan: PrecisionPlan | None,
    latency: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    ranks = {name: {unit: i + 1 for i, step in enumerate(search.order) for unit in search.expand([step])}
             for name, search in searches.items() if order_computed(search.order)}  # fmt: skip
    table = []
    for unit in pipeline.units:
        precision = chosen_plan.precision_of(unit.name) if chosen_plan else Precision.FP16
        table.append({
            "name": unit.name, "kind": unit.kind, "module": unit.module, "precision": precision.value,
            "ranks": {name: ranks[name][unit.name] for name in ranks},
            "latency_ms": (latency or {}).get("units", {}).get(unit.name),
        })  # fmt: skip
    return table


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"trtmix": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}  # fmt: skip


def summary_lines(report: dict[str, Any], output: Path) -> list[str]:
    """The short summary ``trtmix compile`` and ``trtmix demo`` print."""
    base = report["baseline"]["latency"]["median_ms"]
    reference = "all-high" if report.get("relative_to", "fp32") == "high" else "FP32"
    lines = [f"report: {output / 'report.html'} (also report.json, frontier.png)"]
    if report.get("flavour_note"):
        lines.append(f"note: {report['flavour_note']}")
    if report.get("scored_output"):
        lines.append(report["scored_output"])
    if report.get("metric_note"):
        lines.append(report["metric_note"])
    if report.get("metric_ms") is not None:
        lines.append(f"metric {report['metric']}: {report['metric_ms']:.2f} ms per evaluation (it scores every probe)")
    settings = report.get("flavour_settings") or {}
    if "trtmix.weight_bits_reason" in settings:
        lines.append(f"weights: {settings['trtmix.weight_bits']}-bit ({settings['trtmix.weight_bits_reason']})")
    if report.get("quantizers"):
        lines.append(describe_quantizers(report["quantizers"]))
    lines += _float_lines(report)
    if report["chosen"] == ORIGINAL:
        return lines + _original_lines(report, output)
    chosen = next((p for p in report["probes"] if p["plan_hash"] == report["chosen"]), None)
    if chosen is None:
        lines.append(f"no plan met the budget ({report['budget_text']}): {report['stop_reason']}")
        return lines
    final = report.get("final_timing")
    figures, source = latency_figures(report)
    ms, base = figures["chosen"], figures.get(reference)
    kept = report["chosen_k"] == 0 and reference == "all-high"
    speed = "" if kept or base is None else f"; {base / ms:.2f}x the {reference} plan's speed"
    lines += [
        f"chosen plan: {report['chosen_k']} of {report['unit_count']} units INT8 ({output / 'plan.json'})"
        + (": the high-precision plan was kept, so there is no INT8 speed-up" if kept else ""),
        f"engine: {_engine_line(report)}",
        f"latency: {figures_text(figures)} ({source}){speed}",
    ]
    if final and final["rounds"]:
        lines.append(f"choice: {final['reason']} ({len(final['contenders'])} contenders re-timed in "
                     f"{final['rounds']} interleaved rounds)")  # fmt: skip
    elif final:
        lines.append(f"choice: {final['reason']}")
    fp32_accuracy = report["baseline"]["fp32"]["accuracy"]
    lines += [
        f"{report['metric']}: {chosen['relative']:.4%} of the {reference} plan on the search split, "
        f"{report['holdout']['relative']:.4%} on the holdout split"
        + (f"; {chosen['accuracy'] / fp32_accuracy:.4%} of the FP32 model on the search split"
           if reference != "FP32" and fp32_accuracy else ""),
        f"{report['builds']} builds this run, {report['resumed_probes']} probes resumed from the journal, "
        f"{report['wall_seconds']:.0f} s"
        + (f", peak memory {report['peak_rss_mb']:.0f} MiB" if report.get("peak_rss_mb") else "")
        + f"; stop: {report['stop_reason']}",
    ]
    errors = (report.get("latency_model") or {}).get("errors")
    if errors:
        lines.append(f"latency model: the per-unit profile predicted the {errors['probes']} probes' latency within "
                     f"{errors['median_abs']:.1%} (median), {errors['max_abs']:.1%} (max); the search ranks by "
                     "measured latency only")  # fmt: skip
    if report.get("groups"):
        lines.append(_groups_line(report["groups"]))
    skipped = [name for name, computed in (report.get("orderings_computed") or {}).items() if not computed]
    if skipped:
        lines.append(f"ordering {', '.join(skipped)}: not computed, the search never needed it")
    if report["violations"]:
        lines.append(f"note: accuracy was not monotone in k for probe pairs {report['violations']}")
    if report.get("latency_violations"):
        lines.append(f"note: latency rose with k beyond noise for probe pairs {report['latency_violations']}; "
                     f"extra probes off the bisection path: {report.get('extra_probes') or 'none'}")  # fmt: skip
    disagreement = _oracle_disagreement(report)
    if disagreement:
        lines.append(disagreement)
    if report.get("busy_probes"):
        busy_ks = report["busy_probes"]
        lines.append(f"warning: the machine was busy while timing k={busy_ks} (more runnable work than cores, or "
                     "CPU time stolen): rerun on a quiet machine before trusting these latencies")  # fmt: skip
    if base is not None and ms > base:
        both = figures_text({"chosen": ms, reference: base})
        lines.append(f"warning: the chosen plan is slower than the {reference} plan ({both}): INT8 does not pay on "
                     "this backend at these shapes; consider shipping the high-precision plan")  # fmt: skip
    return lines


ORACLE_GAP = 0.05  # all-INT8 scores this far apart on the engine and on ONNX Runtime: the engine computes it otherwise


def _oracle_disagreement(report: dict[str, Any]) -> str | None:
    """A warning when the engine's all-INT8 score is far from ONNX Runtime's on the same graph (the oracle).

    The quantizer choice scores the all-INT8 graph on ONNX Runtime; the search scores it on the job's engine.  On
    PP-OCR's text detector OpenVINO computed one int8 convolution wrongly (all-INT8 0.04 against ORT's 0.97): the
    search measures on the engine and so avoids it, but the user should know which engine disagreed.
    """
    smoothing = ((report.get("quantizers") or {}).get("smoothing") or {})
    oracle = (smoothing.get("measured") or {}).get(smoothing.get("option"))
    engine = (report.get("all_int8") or {}).get("accuracy")
    if oracle is None or engine is None or report.get("backend") == "onnxruntime" or abs(oracle - engine) < ORACLE_GAP:
        return None
    return (f"warning: all-INT8 scores {engine:.4f} on {report['backend']} but {oracle:.4f} on ONNX Runtime (the "
            f"exact-semantics oracle) for the same graph: {report['backend']} computes some INT8 unit differently; "
            "the search measured on the engine, so the choice avoids it, but verify on the target engine")


def _float_lines(report: dict[str, Any]) -> list[str]:
    """The all-high plan against FP32, and which float nodes it keeps in FP32 and why (tensorrt flavour)."""
    base = report["baseline"]
    fp32, high = base["fp32"]["accuracy"], base["all_high"]["accuracy"]
    metric = report["metric"]
    line = f"all-high plan: {high / fp32:.4%} of the FP32 model's {metric} on the search split" if fp32 else ""
    record = report.get("float_baseline") or {}
    if "magnitude_nodes" in record:
        regions = record.get("regions") or []
        kept = len(record["magnitude_nodes"]) + sum(r["nodes"] for r in regions)
        line += (f"; {kept} float nodes kept FP32 ({len(record['magnitude_nodes'])} seen beyond "
                 f"|{record['data_max']:g}| in calibration, {sum(r['nodes'] for r in regions)} in {len(regions)} "
                 f"measured region(s)); before the regions: {record['before_regions']:.4%}")  # fmt: skip
    return [line] if line else []


def _original_lines(report: dict[str, Any], output: Path) -> list[str]:
    """The summary when the user's own FP32 graph won the final timing: it is shipped unchanged."""
    final = report.get("final_timing") or {}
    figures, source = latency_figures(report)
    return [
        f"chosen: the FP32 graph you brought ({report.get('original_model')}), unchanged "
        f"({output / report['files']['onnx']}): no plan was faster than it",
        f"engine: {_engine_line(report)}",
        f"latency: {figures_text(figures)} ({source})",
        f"choice: {final.get('reason', 'the FP32 model was the fastest of the probes measured')}",
        f"{report['builds']} builds this run, {report['resumed_probes']} probes resumed from the journal, "
        f"{report['wall_seconds']:.0f} s; stop: {report['stop_reason']}",
    ]


def _groups_line(section: dict[str, Any]) -> str:
    """``--groups``: the steps, and the groups' profiled saving together against their members' alone."""
    rows = [g for g in section["groups"] if g.get("together_ms") is not None and g.get("members_alone_ms") is not None]
    line = f"groups: {section['description']}"
    if rows:
        together = sum(g["together_ms"] for g in rows)
        alone = sum(g["members_alone_ms"] for g in rows)
        line += (f"; profiled, {len(rows)} groups save {together:.3f} ms together against {alone:.3f} ms for their "
                 "members alone (report.html has each group)")  # fmt: skip
    return line


def _engine_line(report: dict[str, Any]) -> str:
    """Which engine timed the probes, with what settings, and how many INT8 units it verified as int8."""
    settings = report["baseline"]["latency"].get("settings") or {}
    hint = f", inference precision {settings['inference_precision']}" if "inference_precision" in settings else ""
    line = f"{report['backend']} {report.get('backend_version', '')}{hint} on {report.get('cpu', 'this machine')}"
    check = report.get("engine_check")
    if check:
        line += f"; {check['verified_int8']} of {check['planned_int8']} INT8 units verified int8 by the engine"
        if check["mismatches"]:
            line += f"; MISMATCHES: {', '.join(check['mismatches'])}"
        if check.get("not_found"):
            line += f"; {len(check['not_found'])} unit(s) not found among the engine's layers (not checked)"
        if check["unverifiable"]:
            line += f"; {len(check['unverifiable'])} fused with units of another precision (not checkable)"
    return line
