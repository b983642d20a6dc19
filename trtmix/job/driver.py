"""The search driver: builds, scores and times each probe the bisection asks for, and journals it at once.

Every probe is compiled, built by the backend and timed for real; latency is never estimated.  A probe already in
the journal is replayed, not measured again, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from trtmix.errors import TrtmixError
from trtmix.job.engine_check import UnitCheck, check_layers, describe, mismatches, not_found, topology
from trtmix.job.evaluation import SPLITS, Evaluation
from trtmix.memory import release
from trtmix.parallel.cluster import Cluster
from trtmix.progress import bar as progress_bar
from trtmix.quant.builder import Builder
from trtmix.quant.plan import Precision, PrecisionPlan
from trtmix.runtime.timing import TimingPolicy
from trtmix.search.bisection import BisectionSearch, Budget
from trtmix.search.journal import Journal

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSettings:
    """How a probe is measured: what a Ray worker receives of the job's settings, and nothing more."""

    timing: TimingPolicy = field(default_factory=TimingPolicy)
    default: Precision = Precision.FP16  # the precision of units a plan leaves high
    frontier: int = 0  # extra probes spread over k
    strict_precision: bool = False  # a unit the engine runs in another precision fails its probe
    relative_to: str = "high"  # what budgets are relative to: the all-high plan or "fp32"


# Measures several plans at once on a cluster (``trtmix.job.probes.measure_on_cluster``), given by the wiring.
ManyMeasure = Callable[["SearchDriver", Cluster, list[PrecisionPlan]], list[dict[str, Any]]]


class SearchDriver:
    """Measures plans with ``builder``'s backend against ``evaluation``; see the module docstring."""

    def __init__(
        self,
        settings: ProbeSettings,
        builder: Builder,
        evaluation: Evaluation,
        journal: Journal,
        cluster: Callable[[], Cluster | None] = lambda: None,
        measure_many: ManyMeasure | None = None,
    ) -> None:
        """``cluster`` (with ``measure_many``): where independent probes are measured with ``--workers``."""
        self.settings, self.builder, self.evaluation, self.journal = settings, builder, evaluation, journal
        self.cluster, self.measure_many = cluster, measure_many
        self.backend = builder.require_backend()
        self.measured = 0
        self.base = PrecisionPlan(default=settings.default)  # the all-high plan (its FP32 nodes: job/float_baseline)

    def outputs(self, artifact: Path, split: str) -> Any:
        """The first output of ``artifact`` on every evaluated batch of ``split``."""
        return self.evaluation.outputs(self.backend, artifact, split)

    def measure(self, plan: PrecisionPlan) -> dict[str, Any]:
        """The journal record of ``plan``: measured now unless a previous run already did.

        Its ``k`` is the number of units the plan puts in INT8 (a search step may flip a group of several).
        """
        recorded = self.journal.get(plan.stable_hash())
        if recorded is not None:
            return recorded
        start = time.perf_counter()
        record = self.scored(plan)
        if record["status"] == "ok":
            record.update(self.timed(plan, Path(record["artifact"])))
        return self.keep(plan, record, time.perf_counter() - start)

    def keep(self, plan: PrecisionPlan, record: dict[str, Any], seconds: float) -> dict[str, Any]:
        """Journal a measured probe (the one writer: workers return records, the driver keeps them)."""
        record.update(plan_hash=plan.stable_hash(), k=len(plan.int8_units()), plan=plan.to_dict(), seconds=seconds)
        if record["status"] != "ok":
            LOG.warning("probe k=%d failed: %s", record["k"], record["error"])
            record.update(accuracy=None, latency=None, artifact=None)
        self.journal.record(record["plan_hash"], record)
        self.measured += 1
        release(self.builder.model_bytes)  # what the probe held, so the job's peak does not grow per probe
        return record

    def scored(self, plan: PrecisionPlan, scoring_threads: int | None = None) -> dict[str, Any]:
        """``plan`` built and scored on the search split (``scoring_threads``: fewer engine threads for scoring)."""
        try:
            artifact = self.builder.build(plan).artifact
            with_threads = getattr(self.backend, "with_threads", None)
            backend = with_threads(scoring_threads) if scoring_threads and with_threads else self.backend
            value = self.evaluation.score("search", self.evaluation.outputs(backend, artifact, "search"))
        except TrtmixError as err:
            return {"status": "failed", "error": str(err)}
        return {"status": "ok", "accuracy": value, "artifact": str(artifact)}

    def timed(self, plan: PrecisionPlan, artifact: Path) -> dict[str, Any]:
        """The latency of a built probe and its precision check (failed: with --strict-precision and a mismatch)."""
        try:
            timing = self.settings.timing
            stats = self.backend.time(artifact, self.evaluation.feeds["search"][0], timing.runs, timing.warmup,
                                      timing)  # fmt: skip
            return {"latency": stats.to_dict(), **self._precision_check(plan, artifact)}
        except TrtmixError as err:
            return {"status": "failed", "error": str(err)}

    def precision_checks(self, plan: PrecisionPlan, artifact: Path) -> list[UnitCheck] | None:
        """Each unit's planned precision against the engine's own report (None: this engine reports nothing).

        The engine sees the search split's first feed: TensorRT's inspector needs its shapes for dynamic engines,
        OpenVINO times each layer on it.
        """
        engine_layers = getattr(self.backend, "engine_layers", None)
        if engine_layers is None:
            return None
        feed = self.evaluation.feeds["search"][0]
        exact_float = self.backend.name == "tensorrt"  # strongly typed; OpenVINO picks its own float type
        consumers, node_outputs = self._topology
        return check_layers(engine_layers(artifact, feed), self.builder.units, plan, exact_float, consumers,
                            node_outputs)  # fmt: skip

    @functools.cached_property
    def _topology(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Tensor → the float model's nodes reading it, node → its outputs (built once per job)."""
        return topology(self.builder.model)

    def _precision_check(self, plan: PrecisionPlan, artifact: Path) -> dict[str, Any]:
        """The units whose engine precision differs from the plan; a failed probe with --strict-precision."""
        checks = self.precision_checks(plan, artifact)
        if checks is None:
            return {}
        wrong = mismatches(checks)
        if wrong and self.settings.strict_precision:
            raise TrtmixError(f"--strict-precision: the engine does not run the plan:\n{describe(wrong)}")
        int8 = [c for c in checks if c.planned == "int8"]
        return {"precision_mismatches": [asdict(m) for m in wrong],
                "verified_int8": sum(c.verified for c in int8), "planned_int8": len(int8),
                "unverifiable": [c.unit for c in checks if c.fused_with],
                "not_found": [c.unit for c in not_found(checks)]}  # fmt: skip

    def float_artifact(self) -> Path:
        """The float model as the backend built it for the baseline."""
        return self.builder.build(None).artifact

    def fp32(self) -> dict[str, Any]:
        """The float model as exported: its metric on both splits and its latency (cached in the journal)."""
        cached = self.journal.cached("fp32")
        if cached is not None:
            return cached
        artifact = self.float_artifact()
        scores = {split: self.evaluation.reference_score(split) for split in SPLITS}
        at_precision = getattr(self.backend, "at_precision", None)  # an engine that picks its own float type
        timer = at_precision("f32") if at_precision else self.backend
        feed = self.evaluation.feeds["search"][0]
        timing = self.settings.timing
        stats = timer.time(artifact, feed, timing.runs, timing.warmup, timing)
        result = {"accuracy": scores["search"], "holdout": scores["holdout"], "latency": stats.to_dict()}
        self.journal.store("fp32", result)
        return result

    def all_high(self) -> dict[str, Any]:
        """The all-high-precision plan (k = 0, the paper's 16-bit baseline): the search's own k = 0 probe."""
        plan = self.base
        record = self.measure(plan)
        if record["status"] != "ok":
            raise TrtmixError(f"The all-high-precision plan could not be measured: {record['error']}",
                              fix="use --relative-to fp32, or another --backend")  # fmt: skip
        cached = self.journal.cached("all-high-holdout")
        if cached is None:
            artifact = self.builder.build(plan).artifact  # hash-checked: a damaged artifact is rebuilt
            cached = self.evaluation.score("holdout", self.outputs(artifact, "holdout"))
            self.journal.store("all-high-holdout", cached)
        return {"accuracy": record["accuracy"], "holdout": cached, "latency": record["latency"],
                "plan": plan.to_dict()}  # fmt: skip

    def baseline(self) -> dict[str, Any]:
        """What budgets are relative to (``--relative-to``): the all-high plan (default) or the FP32 model.

        Both are in the result (``fp32``, ``all_high``) so the report can show them side by side.
        """
        fp32, all_high = self.fp32(), self.all_high()
        reference = all_high if self.settings.relative_to == "high" else fp32
        return {"accuracy": reference["accuracy"], "holdout": reference["holdout"], "latency": reference["latency"],
                "relative_to": self.settings.relative_to, "fp32": fp32, "all_high": all_high}  # fmt: skip

    def search(
        self,
        order: Sequence[str],
        label: str,
        baseline_accuracy: float,
        budget: Budget,
        members: Mapping[str, Sequence[str]] | None = None,
    ) -> BisectionSearch:
        """Run one bisection along ``order`` (``members``: a group step's units) to its end, measuring each probe."""
        search = BisectionSearch(order, budget, self.settings.default, self.settings.frontier, members or {},
                                 fp32_nodes=self.base.fp32_nodes)  # fmt: skip
        total = search.max_builds + self.settings.frontier
        progress = progress_bar(total=total, desc=f"search ({label})", unit="probe")
        while (asked := search.ask()) is not None:
            frontier = search.pending_frontier()
            for k, record in self._next_records(search, asked, frontier):
                self._answer(search, k, record, k == asked or bool(frontier), baseline_accuracy, progress)
        progress.close()
        return search

    def searches(
        self, orders: Mapping[str, tuple[Sequence[str], Mapping[str, Sequence[str]]]], baseline_accuracy: float,
        budget: Budget, cluster: Cluster,
    ) -> dict[str, BisectionSearch]:  # fmt: skip
        """One bisection per ordering (label → (order, members)), driven together on ``cluster``.

        Each round takes every unfinished search's next probes (its pending frontier, or what it asks with k-section
        points, the workers shared among the searches) and measures them in one batch; a plan two searches share
        (all-INT8, all-high) is measured once.  Each search then takes its own answers as ``search`` gives them, so it
        makes the choices it would make alone.  The driver stays the journal's one writer.
        """
        searches = {label: BisectionSearch(order, budget, self.settings.default, self.settings.frontier, dict(members),
                                           fp32_nodes=self.base.fp32_nodes)
                    for label, (order, members) in orders.items()}  # fmt: skip
        total = sum(search.max_builds + self.settings.frontier for search in searches.values())
        progress = progress_bar(total=total, desc=f"searches ({', '.join(searches)})", unit="probe")
        while active := [search for search in searches.values() if search.ask() is not None]:
            share = max(1, cluster.workers // len(active))
            rounds = []
            for search in active:
                asked, frontier = search.ask(), search.pending_frontier()
                rounds.append((search, asked, frontier, self._round_ks(search, asked, frontier, share)))  # type: ignore[arg-type]
            records = iter(self._measure_many(cluster, [s.plan_for(k) for s, _, _, ks in rounds for k in ks]))
            for search, asked, frontier, ks in rounds:
                for k in ks:
                    self._answer(search, k, next(records), k == asked or bool(frontier), baseline_accuracy, progress)
        progress.close()
        return searches

    def _answer(
        self, search: BisectionSearch, k: int, record: dict[str, Any], asked: bool, baseline_accuracy: float,
        progress: tqdm,
    ) -> None:  # fmt: skip
        """Give ``search`` a probe's record: ``tell`` for what it asked, ``record`` for a k-section point ahead."""
        relative = record["accuracy"] / baseline_accuracy if record["status"] == "ok" else None
        latency = record["latency"]["median_ms"] if record["status"] == "ok" else None
        if asked:
            search.tell(k, relative, latency, record["status"])
        else:
            search.record(k, relative, latency, record["status"])
        progress.update()
        measured = f"{relative:.4%} {latency:.1f} ms" if relative else "failed"
        progress.set_postfix_str(f"k={k}/{search.units} {measured}")

    @staticmethod
    def _round_ks(search: BisectionSearch, asked: int, frontier: list[int], workers: int) -> list[int]:
        """The ks of one round: every pending frontier probe, or the k-section points then ``asked`` (told last)."""
        return frontier if len(frontier) > 1 else [*search.speculate(workers)[1:], asked]

    def _next_records(
        self, search: BisectionSearch, asked: int, frontier: list[int]
    ) -> list[tuple[int, dict[str, Any]]]:
        """The probe at ``asked``, or on a cluster several at once, ``asked`` last.

        They are every pending frontier probe, or ``asked`` and the bisection points that may come next, one per worker
        (``BisectionSearch.speculate``).
        """
        cluster = self.cluster() if len(frontier) > 1 or search.speculate(2)[1:] else None
        if cluster is None:
            return [(asked, self.measure(search.plan_for(asked)))]
        ks = self._round_ks(search, asked, frontier, cluster.workers)
        records = self._measure_many(cluster, [search.plan_for(k) for k in ks])
        return list(zip(ks, records, strict=True))

    def _measure_many(self, cluster: Cluster, plans: list[PrecisionPlan]) -> list[dict[str, Any]]:
        """The records of ``plans`` measured together on ``cluster`` (the wiring gave the function that does it)."""
        if self.measure_many is None:
            raise TrtmixError("Internal error: a cluster was given to the search driver without measure_many.")
        return self.measure_many(self, cluster, plans)
