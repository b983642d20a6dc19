"""The bisection with scripted measurements: visits, stopping, non-monotone accuracy, budgets, Pareto."""

import math

import pytest

from trtmix.errors import TrtmixError
from trtmix.search.bisection import BisectionSearch, Budget, pareto


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
