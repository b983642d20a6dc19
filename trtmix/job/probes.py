"""Probes measured on Ray workers: built and scored anywhere, timed alone on their node, journaled by the driver.

A worker rebuilds the job's driver from a ``ProbeContext`` (the float model, ranges, backend, artifact folder and
evaluation data, shipped once through Ray's object store) with no journal: it returns records, and only the driver
writes them.  Scoring runs on one engine thread per task; timing runs as a second task, on the node that built the
artifact, holding a timing token and the device: every core of a CPU host, or one GPU (``Cluster.timing_options``).
With a GPU backend the build and scoring hold a whole GPU, so none runs on a GPU while it is timed or built on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from trtmix.calibration.ranges import Ranges
from trtmix.ir.units import Unit
from trtmix.job.driver import ProbeSettings, SearchDriver
from trtmix.job.evaluation import Evaluation
from trtmix.parallel.cluster import BUILD_GPUS, TASK_THREADS, Cluster, Failure, current_node
from trtmix.quant.builder import Builder
from trtmix.quant.flavours import Flavour
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime.base import Backend


@dataclass
class ProbeContext:
    """What a worker needs to build, score and time probes of one job (of its settings, only how probes measure)."""

    settings: ProbeSettings
    model: onnx.ModelProto
    units: list[Unit]
    ranges: Ranges | None
    flavour: Flavour
    backend: Backend
    folder: Path | None
    evaluation: Evaluation
    model_hash: str

    @classmethod
    def of(cls, driver: SearchDriver) -> ProbeContext:
        """The context of the driver's job."""
        builder = driver.builder
        return cls(driver.settings, builder.model, builder.units, builder.ranges, builder.flavour, driver.backend,
                   builder.folder, driver.evaluation, builder.model_hash)  # fmt: skip

    def driver(self) -> SearchDriver:
        """A driver for this job without a journal (it measures; the real driver keeps)."""
        builder = Builder(self.model, self.units, self.ranges, self.flavour, self.backend, self.folder,
                          self.model_hash)  # fmt: skip
        return SearchDriver(self.settings, builder, self.evaluation, journal=None)  # type: ignore[arg-type]


def build_and_score(context: ProbeContext, plan: dict[str, Any]) -> dict[str, Any]:
    """On a worker: the probe built and scored, where it was built, and the seconds it took."""
    start = time.perf_counter()
    record = context.driver().scored(PrecisionPlan.from_dict(plan), TASK_THREADS)
    return {**record, "node": current_node(), "seconds": time.perf_counter() - start}


def time_probe(context: ProbeContext, plan: dict[str, Any], artifact: str) -> dict[str, Any]:
    """On the building node, holding its timing token: the probe's latency and precision check."""
    start = time.perf_counter()
    record = context.driver().timed(PrecisionPlan.from_dict(plan), Path(artifact))
    return {**record, "seconds": time.perf_counter() - start}


def measure_on_cluster(driver: SearchDriver, cluster: Cluster, plans: list[PrecisionPlan]) -> list[dict[str, Any]]:
    """The journal records of ``plans``: those not yet journaled measured on ``cluster``, then all replayed."""
    unique = {plan.stable_hash(): plan for plan in plans}
    todo = [plan for key, plan in unique.items() if driver.journal.get(key) is None]
    if todo:
        context = cluster.put(ProbeContext.of(driver))
        gpu = driver.backend.device == "gpu"  # a TensorRT probe builds, and times, on a whole GPU
        scored = cluster.map(build_and_score, [(context, plan.to_dict()) for plan in todo], "probes: build, score",
                             BUILD_GPUS if gpu else 0.0)  # fmt: skip
        records = _timed(cluster, context, todo, [_record(result) for result in scored], gpu)
        for plan, record in zip(todo, records, strict=True):
            seconds = record.pop("seconds", 0.0)
            record.pop("node", None)
            driver.keep(plan, record, seconds)
    return [driver.measure(plan) for plan in plans]


def _timed(cluster: Cluster, context: Any, plans: list[PrecisionPlan], scored: list[dict[str, Any]],
           gpu: bool) -> list[dict[str, Any]]:  # fmt: skip
    """``scored`` with the timing of each probe that built: one task each, on its builder's node, holding its device."""
    built = [index for index, record in enumerate(scored) if record["status"] == "ok"]
    places = cluster.timing_options([scored[index].get("node") for index in built], gpu)
    refs = [cluster.submit(time_probe, (context, plans[index].to_dict(), scored[index]["artifact"]), options)
            for index, options in zip(built, places, strict=True)]  # fmt: skip
    records = list(scored)
    for index, timed in zip(built, cluster.gather(refs, "probes: timing"), strict=True):
        records[index] = _merged(scored[index], _record(timed))
    return records


def _record(result: dict[str, Any] | Failure) -> dict[str, Any]:
    """A task's record, or a failed one for a task lost twice."""
    if isinstance(result, Failure):
        return {"status": "failed", "error": f"the Ray worker was lost twice: {result.error}"}
    return result


def _merged(scored: dict[str, Any], timed: dict[str, Any]) -> dict[str, Any]:
    """The build-and-score record with its timing; a failed timing fails the probe."""
    seconds = scored.get("seconds", 0.0) + timed.pop("seconds", 0.0)
    return {**scored, **timed, "seconds": seconds}
