"""The sections of a compile job's report, assembled from the pipeline after the search (``report.json``).

``trtmix.job.report`` writes them as JSON, HTML and a plot; ``trtmix.job.summary`` prints the short summary.
"""

from __future__ import annotations

import logging
import platform
import sys
from dataclasses import asdict
from typing import Any

import numpy as np

from trtmix import __version__
from trtmix.errors import TrtmixError
from trtmix.ir.groups import describe_groups
from trtmix.ir.large import model_sha256
from trtmix.job.engine_check import mismatches, not_found
from trtmix.job.latency import add_predictions, job_group_savings
from trtmix.job.pipeline import Pipeline
from trtmix.job.report import mark_pareto
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.runtime.cpu import cpu_features
from trtmix.runtime.timing import busy
from trtmix.search.bisection import BisectionSearch, order_computed

LOG = logging.getLogger(__name__)


def metric_ms(seconds: list[float]) -> float | None:
    """The metric's median cost per evaluation in ms (it runs on every probe), None before any evaluation."""
    return round(float(np.median(seconds)) * 1000, 3) if seconds else None


def report_sections(
    pipeline: Pipeline,
    searches: dict[str, BisectionSearch],
    baseline: dict[str, Any],
    chosen_plan: PrecisionPlan | None,
    extra_probes: list[int],
) -> dict[str, Any]:
    """The report of a finished search: every probe of every ordering, the baselines, units, latency model, groups.

    The job's requested settings come from ``Pipeline.settings_record`` (the report says what was asked and what
    was resolved: ``backend_requested`` against ``backend``, ``metric_requested`` against ``metric``).
    """
    asked = pipeline.settings_record()
    by_hash: dict[str, dict[str, Any]] = {}
    orderings: dict[str, list[dict[str, Any]]] = {}
    for k in extra_probes:  # measured off the bisection path because latency rose with k
        record = dict(pipeline.journal.get(searches[asked["ordering"]].plan_for(k).stable_hash()) or {})
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
    primary = searches[asked["ordering"]]
    all_int8 = next((p for p in probes if p["k"] == len(pipeline.units) and p["status"] == "ok"), None)
    backend = pipeline.backend
    return {
        "model": pipeline.source,
        "model_sha256": model_sha256(pipeline.model),
        "unit_count": len(pipeline.units),
        "backend": backend.name,
        "backend_requested": asked["backend"],
        "backend_version": backend.version,
        "backend_options": backend.options(),
        "flavour": asked["flavour"],
        "flavour_note": pipeline.builder.flavour.note(backend.name),
        "flavour_settings": pipeline.builder.flavour.metadata(),
        "quantizers": pipeline.quantizers,
        "scored_output": pipeline.evaluation.output_note,
        "cpu": cpu_features().describe(),
        "relative_to": asked["relative_to"],
        "busy_probes": busy_probes,
        "metric": pipeline.evaluation.metric,
        "metric_requested": asked["metric"],
        "metric_note": pipeline.evaluation.metric_note,
        "metric_ms": metric_ms(pipeline.evaluation.metric_seconds),
        "budget": asked["budget"],
        "budget_text": asked["budget_text"],
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


def engine_check(pipeline: Pipeline, plan: PrecisionPlan) -> dict[str, Any] | None:
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
