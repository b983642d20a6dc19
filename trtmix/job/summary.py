"""The short summary ``trtmix compile`` and ``trtmix demo`` print, read from the report alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtmix.job.report import ORIGINAL, figures_text, latency_figures
from trtmix.quant.smooth import describe_quantizers


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
        return lines + _original_lines(report, output) + _notes(report)
    chosen = next((p for p in report["probes"] if p["plan_hash"] == report["chosen"]), None)
    if chosen is None:
        lines.append(f"no plan met the budget ({report['budget_text']}): {report['stop_reason']}")
        return lines
    final = report.get("final_timing")
    figures, source = latency_figures(report)
    ms, base = figures["chosen"], figures.get(reference)
    kept = report["chosen_k"] == 0 and reference == "all-high"
    speed = "" if kept or base is None or ms <= 0 else f"; {base / ms:.2f}x the {reference} plan's speed"
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
    lines += _notes(report)
    if base is not None and ms > base:
        both = figures_text({"chosen": ms, reference: base})
        lines.append(f"warning: the chosen plan is slower than the {reference} plan ({both}): INT8 does not pay on "
                     "this backend at these shapes; consider shipping the high-precision plan")  # fmt: skip
    return lines


def _notes(report: dict[str, Any]) -> list[str]:
    """What the summary says after the choice, whatever was chosen: the latency model, orderings, warnings."""
    lines = []
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
