"""The job's per-unit latency model: the all-high and all-INT8 builds profiled layer by layer, cached in the journal.

``trtmix.runtime.attribution`` splits each profiled layer among units; here the job supplies the builds (the same
artifacts its k = 0 and k = U probes time), the feed, and the journal that keeps the result across reruns. The model
feeds the ``gain`` ordering and the report's predicted-vs-measured column; the search never ranks by it.
"""

from __future__ import annotations

import logging
from typing import Any

from trtmix.ir.groups import UnitGroup
from trtmix.job.driver import SearchDriver
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime.attribution import LatencyModel, attribute, latency_model, node_owners, prediction_errors

LOG = logging.getLogger(__name__)
JOURNAL_KEY = "latency-model"
GROUPS_KEY = "group-savings"
PROFILE_RUNS = 10


def job_latency_model(driver: SearchDriver) -> LatencyModel | None:
    """The per-unit model for the job's backend, or None when the backend gives no per-layer profile."""
    profile = getattr(driver.backend, "layer_profile", None)
    if profile is None:
        return None
    cached = driver.journal.cached(JOURNAL_KEY)
    if cached is not None:
        return LatencyModel.from_dict(cached)
    builder, base = driver.builder, driver.base
    feed = driver.evaluation.feeds["search"][0]
    builds = []
    for plan in (base, base.with_units(u.name for u in builder.units)):
        artifact = builder.build(plan).artifact
        builds.append((profile(artifact, feed, PROFILE_RUNS), builder.compile(plan, check=False)))
    model = latency_model(builds[0], builds[1], builder.units)
    if model.unattributed:
        LOG.warning("no %s layer named %d unit(s); their saving is their MAC share of the rest: %s",
                    driver.backend.name, len(model.unattributed), ", ".join(model.unattributed[:8]))  # fmt: skip
    driver.journal.store(JOURNAL_KEY, model.to_dict())
    return model


def add_predictions(model: LatencyModel, probes: list[dict[str, Any]], high_ms: float) -> dict[str, float] | None:
    """Each measured probe gets ``predicted_ms`` from the additive model; returns the error distribution."""
    pairs = []
    for probe in probes:
        if probe.get("status") != "ok" or "plan" not in probe:
            continue
        int8 = PrecisionPlan.from_dict(probe["plan"]).int8_units()
        probe["predicted_ms"] = round(model.predict(int8, high_ms), 4)
        pairs.append((probe["predicted_ms"], probe["latency"]["median_ms"]))
    return prediction_errors(pairs)


def job_group_savings(driver: SearchDriver, groups: list[UnitGroup], model: LatencyModel) -> list[dict[str, Any]]:
    """Per group of several units: what its members save together (all-INT8 build) and what each saves alone.

    "Alone" comes from one more profiled build per member position: the j-th member of every group in INT8, its
    partners not, so each member pays its own quantize boundaries. Cached in the journal.
    """
    several = [g for g in groups if len(g.members) > 1]
    cached = driver.journal.cached(GROUPS_KEY)
    if cached is not None or not several:
        return cached or []
    builder, profile = driver.builder, driver.backend.layer_profile  # type: ignore[attr-defined]
    feed = driver.evaluation.feeds["search"][0]
    alone: dict[str, float] = {}
    for position in range(max(len(g.members) for g in several)):
        plan = driver.base.with_units(g.members[position] for g in several if position < len(g.members))
        layers = profile(builder.build(plan).artifact, feed, PROFILE_RUNS)
        int8_ms, _, _ = attribute(layers, node_owners(builder.compile(plan, check=False), builder.units))
        for unit in plan.int8_units():
            high = model.units[unit].high_ms
            if high is not None and unit in int8_ms:
                alone[unit] = high - int8_ms[unit]
    table = [_group_row(group, model, alone) for group in several]
    driver.journal.store(GROUPS_KEY, table)
    return table


def _group_row(group: UnitGroup, model: LatencyModel, alone: dict[str, float]) -> dict[str, Any]:
    """One group's savings: together (None if a member is unattributed) and the sum of its members alone."""
    attributed = all(model.units[m].attributed for m in group.members)
    together = sum(model.savings_ms[m] for m in group.members) if attributed else None
    members_alone = sum(alone[m] for m in group.members) if all(m in alone for m in group.members) else None
    return {"group": group.name, "members": list(group.members), "reasons": list(group.reasons),
            "together_ms": _round(together), "members_alone_ms": _round(members_alone)}  # fmt: skip


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
