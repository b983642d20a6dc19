"""The job's per-unit latency model: the all-high and all-INT8 builds profiled layer by layer, cached in the journal.

``trtmix.runtime.attribution`` splits each profiled layer among units; here the job supplies the builds (the same
artifacts its k = 0 and k = U probes time), the feed, and the journal that keeps the result across reruns. The model
feeds the ``gain`` ordering and the report's predicted-vs-measured column; the search never ranks by it.
"""

from __future__ import annotations

import logging
from typing import Any

from trtmix.job.driver import SearchDriver
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime.attribution import LatencyModel, latency_model, prediction_errors

LOG = logging.getLogger(__name__)
JOURNAL_KEY = "latency-model"
PROFILE_RUNS = 10


def job_latency_model(driver: SearchDriver) -> LatencyModel | None:
    """The per-unit model for the job's backend, or None when the backend gives no per-layer profile."""
    profile = getattr(driver.backend, "layer_profile", None)
    if profile is None:
        return None
    cached = driver.journal.cached(JOURNAL_KEY)
    if cached is not None:
        return LatencyModel.from_dict(cached)
    builder, default = driver.builder, driver.config.default
    feed = driver.evaluation.feeds["search"][0]
    builds = []
    for plan in (PrecisionPlan(default=default), PrecisionPlan.with_int8([u.name for u in builder.units], default)):
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
