"""The bisection with scripted measurements: visits, stopping, non-monotone accuracy, budgets, Pareto; k-section on
the real ``SearchDriver`` (scripted probes, an in-process cluster) against its serial path."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from trtmix.errors import TrtmixError
from trtmix.ir.units import find_units
from trtmix.job.driver import ProbeSettings, SearchDriver
from trtmix.job.probes import measure_on_cluster
from trtmix.quant.builder import Builder
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime.onnxruntime import OnnxRuntimeBackend
from trtmix.search.bisection import BisectionSearch, Budget, pareto
from trtmix.search.journal import Journal


def drive(search, accuracy_of_k, latency_of_k=lambda k: 100.0 - k, failing=()):
    visited = []
    while (k := search.ask()) is not None:
        visited.append(k)
        if k in failing:
            search.tell(k, None, None, status="failed")
        else:
            search.tell(k, accuracy_of_k(k), latency_of_k(k))
    return visited


def units(count):
    return [f"u{i}" for i in range(count)]


def test_bisection_visits_expected_k_and_stops_inside_range():
    # Accuracy falls 0.1% per INT8 unit; the range 98.5%..99.0% holds k = 10..15.
    search = BisectionSearch(units(32), Budget.parse(accuracy_range="98.5:99.0"))
    visited = drive(search, lambda k: 1.0 - 0.001 * k)
    assert visited == [32, 0, 16, 8, 12]
    assert search.stop_reason == "k=12 landed inside the accuracy range"
    assert search.best().k == 12
    assert len(visited) <= math.ceil(math.log2(32)) + 3


def test_max_drop_bisects_to_the_largest_feasible_k():
    search = BisectionSearch(units(20), Budget.parse(max_drop="0.7%"))
    visited = drive(search, lambda k: 1.0 - 0.001 * k)
    assert search.best().k == 7 and search.stop_reason == "interval closed at k=7"
    assert len(visited) <= search.max_builds
    assert not search.violations()


def test_all_int8_meeting_the_budget_returns_after_one_build():
    search = BisectionSearch(units(48), Budget.parse(max_drop="5%"))
    assert drive(search, lambda k: 0.99) == [48]
    assert search.best().k == 48 and "already meets" in search.stop_reason


def test_budget_missed_even_by_high_precision():
    search = BisectionSearch(units(8), Budget.parse(max_drop="0.1%"))
    assert drive(search, lambda k: 0.99) == [8, 0]
    assert search.best() is None and "even the all-high-precision plan" in search.stop_reason


def test_non_monotone_accuracy_keeps_the_best_feasible_probe():
    # k=16 is worse than k=24, which still meets the budget and is faster: accuracy is not monotone in k.
    script = {32: 0.95, 0: 1.0, 16: 0.97, 8: 0.995, 12: 0.99, 14: 0.985, 13: 0.991, 24: 0.992}
    search = BisectionSearch(units(32), Budget.parse(max_drop="1%"), frontier=3)
    visited = drive(search, script.__getitem__)
    assert visited == [32, 0, 16, 8, 12, 14, 13, 24]  # bisection, then the one new frontier probe (8, 16 known)
    assert search.stop_reason == "interval closed at k=13"
    assert search.best().k == 24  # the fastest feasible probe wins, even off the bisection path
    assert (16, 24) in search.violations() and (12, 13) in search.violations()


def test_failed_probe_is_treated_as_infeasible_and_the_search_goes_on():
    search = BisectionSearch(units(16), Budget.parse(max_drop="1%"))
    drive(search, lambda k: 1.0 - 0.001 * k, failing={8})
    assert search.probes[8].status == "failed"
    assert search.best().k == 7


def test_frontier_probes_are_spread_and_not_repeated():
    search = BisectionSearch(units(10), Budget.parse(max_drop="50%"), frontier=3)
    visited = drive(search, lambda k: 1.0)
    assert visited[0] == 10 and sorted(visited[1:]) == [2, 5, 8]
    assert len(set(visited)) == len(visited)


def test_plan_for_k():
    search = BisectionSearch(["a", "b", "c"], Budget.parse(max_drop="1%"))
    assert search.plan_for(2).int8_units() == ["a", "b"]
    assert search.plan_for(0).int8_units() == []


@pytest.mark.parametrize(
    ("max_drop", "accuracy_range", "message"),
    [
        (None, None, "exactly one"),
        ("1%", "99:99.9", "exactly one"),
        ("abc", None, "Bad --max-drop"),
        ("150%", None, "out of range"),
        (None, "99.9", "LOW:HIGH"),
        (None, "99.99:99.9", "LOW <= HIGH"),
        (None, "100.5:101", "more than the float model"),
    ],
)
def test_bad_budgets(max_drop, accuracy_range, message):
    with pytest.raises(TrtmixError, match=message):
        Budget.parse(max_drop, accuracy_range)


def test_budget_parsing():
    assert Budget.parse("0.1%").lower == pytest.approx(0.999)
    assert Budget.parse("0.001").lower == pytest.approx(0.999)
    budget = Budget.parse(accuracy_range="99.9:99.99")
    assert budget.inside(0.9995) and not budget.inside(0.99995) and budget.feasible(0.99995)


def test_pareto():
    points = [(10.0, 0.99), (8.0, 0.98), (12.0, 0.995), (11.0, 0.97), (8.0, 0.98)]
    assert pareto(points) == [True, True, True, False, True]


def test_hypervolume():
    from trtmix.search.bisection import hypervolume

    # One point at (0.5, 1.0) with reference (1.0, 0.9): a 0.5 × 0.1 rectangle.
    assert hypervolume([(0.5, 1.0)], (1.0, 0.9)) == pytest.approx(0.05)
    # A second, faster but less accurate point adds its own strip; a dominated point adds nothing.
    assert hypervolume([(0.5, 1.0), (0.25, 0.95), (0.6, 0.99)], (1.0, 0.9)) == pytest.approx(0.05 + 0.25 * 0.05)
    assert hypervolume([(1.5, 1.0), (0.5, 0.8)], (1.0, 0.9)) == 0.0


class ScriptedProbes(SearchDriver):
    """The real ``SearchDriver``, each probe's build, score and timing scripted by its k: the search loop is under test.

    ``script(k)`` is (accuracy, latency in ms), or None for a probe whose build fails. ``workers``: probes go to an
    in-process cluster of that many workers through the driver's own ``measure_on_cluster`` (0: the serial path).
    ``rounds`` counts the measuring rounds: one per batch sent to the cluster, one per probe measured alone.
    """

    def __init__(self, budget: Budget, script, workers: int = 0, frontier: int = 0) -> None:
        settings = ProbeSettings(frontier=frontier)
        cluster = (lambda: InProcessCluster(self, workers)) if workers else (lambda: None)
        journal = Journal(Path(":memory:"), "scripted")
        super().__init__(settings, _builder(), evaluation=None, journal=journal, cluster=cluster,
                         measure_many=measure_on_cluster)  # fmt: skip
        self.script, self.rounds = script, 0

    def measure(self, plan: PrecisionPlan) -> dict:
        if self.journal.get(plan.stable_hash()) is None:
            self.rounds += 1  # measured alone (a cluster's probes are journaled before the driver replays them)
        return super().measure(plan)

    def scored(self, plan: PrecisionPlan, scoring_threads: int | None = None) -> dict:
        k = len(plan.int8_units())
        if self.script(k) is None:
            return {"status": "failed", "error": f"scripted build failure at k={k}"}
        return {"status": "ok", "accuracy": self.script(k)[0], "artifact": f"k{k}.onnx"}

    def timed(self, plan: PrecisionPlan, artifact: Path) -> dict:
        return {"latency": {"median_ms": self.script(len(plan.int8_units()))[1]}}


class InProcessCluster:
    """``Cluster``'s interface in this process: each task runs at once, its context's driver is the scripted one."""

    def __init__(self, driver: ScriptedProbes, workers: int) -> None:
        self.owner, self.workers = driver, workers

    def put(self, value: object) -> InProcessCluster:
        return self  # the tasks' context: ``driver()`` below

    def driver(self) -> ScriptedProbes:
        return self.owner

    def map(self, function, calls, label, gpu_share=0.0) -> list:
        self.owner.rounds += 1
        return [function(*call) for call in calls]

    def timing_options(self, node_ids, gpu=False) -> list[dict]:
        return [{} for _ in node_ids]

    def submit(self, function, call, options) -> object:
        return function(*call)

    def gather(self, refs, label) -> list:
        return list(refs)


@functools.cache
def _builder() -> Builder:
    """A real builder (one MatMul) for the driver to hold; the scripted probes never build with it."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
                              [onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return Builder(model, find_units(model), None, "ort-cpu", OnnxRuntimeBackend(threads=1))


def driven(count: int, budget: Budget, script, workers: int = 0, frontier: int = 0):
    """(driver, search): ``SearchDriver.search`` run to its end over ``count`` units, measured by ``script``."""
    driver = ScriptedProbes(budget, script, workers, frontier)
    search = driver.search(units(count), "scripted", 1.0, budget)
    assert len(driver.journal.records()) == driver.measured == len(search.probes)  # each probe measured once
    return driver, search


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(2, 40),
    workers=st.integers(2, 6),
    accuracies=st.lists(st.floats(0.9, 1.0), min_size=41, max_size=41),
    latencies=st.lists(st.floats(1.0, 100.0), min_size=41, max_size=41),
    failing=st.sets(st.integers(0, 40), max_size=3),
    budget=st.sampled_from([("1%", None), ("5%", None), (None, "96:99"), (None, "99:99.9")]),
    frontier=st.integers(0, 3),
)
def test_k_section_never_chooses_a_slower_plan_than_the_serial_bisection(
    count, workers, accuracies, latencies, failing, budget, frontier
):
    """Same (scripted, possibly non-monotone) measurements: k-section measures a superset of the serial probes."""

    def script(k: int) -> tuple[float, float] | None:
        return None if k in failing else (accuracies[k], latencies[k])

    serial_driver, serial = driven(count, Budget.parse(*budget), script, frontier=frontier)
    parallel_driver, parallel = driven(count, Budget.parse(*budget), script, workers, frontier)
    assert set(serial.probes) <= set(parallel.probes)
    assert parallel.stop_reason == serial.stop_reason
    assert parallel_driver.rounds <= serial_driver.rounds == len(serial.probes)
    if serial.best() is not None:
        assert parallel.best().latency_ms <= serial.best().latency_ms


def test_k_section_takes_fewer_rounds_with_more_workers():
    rounds = {}
    for workers in (1, 3, 7):
        driver, search = driven(64, Budget.parse("1%"), lambda k: (1.0 - 0.0005 * k, 100.0 - k), workers)
        assert search.best().k == 20
        rounds[workers] = driver.rounds
    assert rounds[1] == 2 + 6 and rounds[3] == 2 + 3 and rounds[7] == 2 + 2


def test_k_section_stops_where_the_serial_bisection_lands_inside_the_range():
    # Serial: 16, 0, 8 (99.2%), 12 (98.8%: inside 98.5..99.0, stop). With 3 workers, 4 and 12 come with 8.
    budget = Budget.parse(accuracy_range="98.5:99.0")
    _, serial = driven(16, budget, lambda k: (1.0 - 0.001 * k, 100.0 - k))
    _, parallel = driven(16, budget, lambda k: (1.0 - 0.001 * k, 100.0 - k), workers=3)
    assert serial.stop_reason == parallel.stop_reason == "k=12 landed inside the accuracy range"
    assert sorted(serial.probes) == [0, 8, 12, 16] and sorted(parallel.probes) == [0, 4, 8, 12, 16]
