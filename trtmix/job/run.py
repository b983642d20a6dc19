"""``trtmix compile`` end to end: run the pipeline, choose, check on the holdout split, write outputs and report."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trtmix import __version__
from trtmix.errors import TrtmixError
from trtmix.ir.graph import model_sha256
from trtmix.job.config import CompileConfig
from trtmix.job.outputs import holdout_check, write_plan_outputs
from trtmix.job.pipeline import Pipeline
from trtmix.job.report import mark_pareto, write_report
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.search.bisection import BisectionSearch

LOG = logging.getLogger(__name__)


def run_compile(source: str, output: Path, config: CompileConfig, fresh: bool = False) -> dict[str, Any]:
    """Run the whole job into ``output`` and return the report (also written as report.json / .html / .png)."""
    started = time.perf_counter()
    pipeline = Pipeline(source, output, config, fresh=fresh)
    resumed_before = len(pipeline.journal.records())
    baseline = pipeline.baseline()
    if baseline["accuracy"] <= 0:
        raise TrtmixError(f"The float model scores {baseline['accuracy']} on the search split: nothing to keep.",
                          fix="check the metric and the labels")  # fmt: skip
    searches = {name: pipeline.search(name, baseline["accuracy"]) for name in config.orderings()}
    primary = searches[config.ordering]
    best = primary.best()
    chosen_plan = primary.plan_for(best.k) if best else None
    report = _report(pipeline, searches, baseline, chosen_plan)
    if chosen_plan is not None:
        report["holdout"] = holdout_check(pipeline.driver, chosen_plan, baseline)
        report["files"] = write_plan_outputs(output, pipeline.builder, chosen_plan)
    report["builds"] = pipeline.measured
    report["resumed_probes"] = resumed_before
    report["wall_seconds"] = time.perf_counter() - started
    write_report(report, output)
    pipeline.journal.close()
    return report


def _report(
    pipeline: Pipeline,
    searches: dict[str, BisectionSearch],
    baseline: dict[str, Any],
    chosen_plan: PrecisionPlan | None,
) -> dict[str, Any]:
    config = pipeline.config
    by_hash: dict[str, dict[str, Any]] = {}
    orderings: dict[str, list[dict[str, Any]]] = {}
    for name, search in searches.items():
        orderings[name] = []
        for k in sorted(search.probes):
            record = dict(pipeline.journal.get(search.plan_for(k).stable_hash()) or {})
            record["relative"] = record["accuracy"] / baseline["accuracy"] if record.get("status") == "ok" else None
            entry = by_hash.setdefault(record["plan_hash"], {**record, "orderings": []})
            entry["orderings"].append(name)
            orderings[name].append({**record, "k": k})
    probes = list(by_hash.values())
    mark_pareto(probes)
    primary = searches[config.ordering]
    all_int8 = next((p for p in probes if p["k"] == len(pipeline.units) and p["status"] == "ok"), None)
    return {
        "model": pipeline.source,
        "model_sha256": model_sha256(pipeline.model),
        "unit_count": len(pipeline.units),
        "backend": config.backend,
        "flavour": config.flavour,
        "metric": config.metric,
        "budget": asdict(config.budget),
        "budget_text": config.budget.describe(),
        "baseline": baseline,
        "all_int8": all_int8 and {"latency": all_int8["latency"], "relative": all_int8["relative"]},
        "orderings": orderings,
        "ordering_seconds": {name: pipeline.ordering_seconds(name) for name in searches},
        "probes": probes,
        "chosen": chosen_plan.stable_hash() if chosen_plan else None,
        "chosen_k": len(chosen_plan.int8_units()) if chosen_plan else None,
        "stop_reason": primary.stop_reason,
        "violations": primary.violations(),
        "max_builds": primary.max_builds,
        "holdout": {"baseline": baseline["holdout"]},
        "units": _unit_table(pipeline, searches, chosen_plan),
        "versions": _versions(),
    }


def _unit_table(
    pipeline: Pipeline, searches: dict[str, BisectionSearch], chosen_plan: PrecisionPlan | None
) -> list[dict[str, Any]]:
    ranks = {name: {unit: i + 1 for i, unit in enumerate(search.order)} for name, search in searches.items()}
    table = []
    for unit in pipeline.units:
        precision = chosen_plan.precision_of(unit.name) if chosen_plan else Precision.FP16
        table.append({
            "name": unit.name, "kind": unit.kind, "module": unit.module, "precision": precision.value,
            "ranks": {name: ranks[name][unit.name] for name in ranks},
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
    lines = [f"report: {output / 'report.html'} (also report.json, frontier.png)"]
    chosen = next((p for p in report["probes"] if p["plan_hash"] == report["chosen"]), None)
    if chosen is None:
        lines.append(f"no plan met the budget ({report['budget_text']}): {report['stop_reason']}")
        return lines
    ms = chosen["latency"]["median_ms"]
    int8 = report["all_int8"]
    versus_int8 = f", {ms / int8['latency']['median_ms']:.2f}x the all-INT8 latency" if int8 else ""
    lines += [
        f"chosen plan: {report['chosen_k']} of {report['unit_count']} units INT8 ({output / 'plan.json'})",
        f"latency: {ms:.2f} ms median; float {base:.2f} ms, so a {base / ms:.2f}x speed-up{versus_int8}",
        f"{report['metric']}: {chosen['relative']:.4%} of float on the search split, "
        f"{report['holdout']['relative']:.4%} on the holdout split",
        f"{report['builds']} builds this run, {report['resumed_probes']} probes resumed from the journal, "
        f"{report['wall_seconds']:.0f} s; stop: {report['stop_reason']}",
    ]
    if report["violations"]:
        lines.append(f"note: accuracy was not monotone in k for probe pairs {report['violations']}")
    if ms > base:
        lines.append(
            f"warning: the chosen plan is slower than the float model ({ms:.2f} vs {base:.2f} ms): INT8 does not pay "
            "on this backend at these shapes; consider shipping the float model"
        )
    return lines
