"""The final choice under noise, driven by a scripted noisy backend: seeded noise around known true latencies.

No wall clock is involved: ``measure`` returns a number drawn around the true latency of the plan it is asked for,
with lognormal noise (8%) and occasional 2x spikes (5% of calls), like a shared CPU.
"""

import numpy as np

from trtmix.runtime.timing import median_interval, relative_half_width
from trtmix.search.choose import Candidate, choose, contenders, latency_violations, wins_needed

TRIALS = 100
ROUND_RUNS = 5  # the job times each contender 5 runs per interleaved round (trtmix.job.run)


def _noisy(true_ms, seed, sigma=0.08, spikes=0.05, runs=1):
    """One timed run of a plan (``runs`` > 1: the median of that many, as the job measures each round)."""
    rng = np.random.default_rng(seed)

    def run(key):
        value = true_ms[key] * rng.lognormal(0.0, sigma)
        return value * 2 if rng.random() < spikes else value

    return lambda key: float(np.median([run(key) for _ in range(runs)]))


def _measured(true_ms, measure, runs=20):
    """What the search leaves: one median per plan with its 95% interval, each plan timed once."""
    result = []
    for k, key in enumerate(true_ms):
        samples = [measure(key) for _ in range(runs)]
        low, high = median_interval(samples)
        result.append(Candidate(key, k, float(np.median(samples)), low, high))
    return result


def _trials(true_ms):
    chosen = []
    for seed in range(TRIALS):
        candidates = _measured(true_ms, _noisy(true_ms, seed))
        chosen.append(choose(candidates, "baseline", _noisy(true_ms, seed + 1000, runs=ROUND_RUNS)).key)
    return chosen


def test_a_ten_percent_gap_between_the_two_best_is_found():
    true_ms = {"baseline": 50.0, "k12": 44.0, "k24": 40.0, "k36": 47.0}  # k24 is 10% faster than k12
    chosen = _trials(true_ms)
    assert chosen.count("k24") >= 95, {key: chosen.count(key) for key in true_ms}


def test_when_nothing_beats_the_baseline_the_baseline_is_kept():
    ties = _trials({"baseline": 40.0, "k12": 40.0, "k24": 40.8, "k36": 42.0})
    assert ties.count("baseline") >= 95
    slower = _trials({"baseline": 40.0, "k12": 44.0, "k24": 46.0, "k48": 48.0})
    assert slower.count("baseline") == TRIALS


def test_the_single_median_protocol_is_worse_on_the_same_data():
    """Today's protocol (the fastest single median wins) on the tie case picks an INT8 plan most of the time."""
    true_ms = {"baseline": 40.0, "k12": 40.0, "k24": 40.8, "k36": 42.0}
    picks = [min(_measured(true_ms, _noisy(true_ms, seed)), key=lambda c: c.median_ms).key for seed in range(TRIALS)]
    assert picks.count("baseline") < 80  # no confidence asked: a tie is decided by noise


def test_contenders_keep_overlapping_intervals_and_the_baseline():
    candidates = [Candidate("baseline", 0, 60.0, 58.0, 62.0), Candidate("a", 10, 40.0, 38.0, 42.0),
                  Candidate("b", 20, 41.0, 39.5, 43.0), Candidate("c", 30, 50.0, 48.0, 52.0)]  # fmt: skip
    assert [c.key for c in contenders(candidates, "baseline")] == ["baseline", "a", "b"]
    assert choose(candidates[:1], "baseline", lambda key: 1.0).reason.startswith("no other feasible plan")


def test_sign_test_threshold_and_latency_violations():
    assert wins_needed(12) == 10 and wins_needed(6) == 6
    points = [(0, 40.0, 39.0, 41.0), (10, 45.0, 44.0, 46.0), (20, 30.0, 29.0, 31.0)]
    assert latency_violations(points) == [(0, 10)]


def test_relative_half_width_shrinks_with_more_samples():
    rng = np.random.default_rng(0)
    few, many = list(rng.lognormal(0, 0.1, 10)), list(rng.lognormal(0, 0.1, 400))
    assert relative_half_width(many) < relative_half_width(few) and relative_half_width(many) < 0.03


def _trials_with_original(true_ms, original_ms):
    chosen = []
    for seed in range(TRIALS):
        candidates = _measured(true_ms, _noisy(true_ms, seed))
        timings = {**true_ms, "original": original_ms}
        measure = _noisy(timings, seed + 1000, runs=ROUND_RUNS)
        chosen.append(choose(candidates, "baseline", measure, original="original").key)
    return chosen


def test_the_users_original_graph_wins_when_no_plan_is_faster():
    """No plan is shipped that is slower than the graph the user brought (all-high 30 ms against FP32 15 ms)."""
    true_ms = {"baseline": 30.0, "k12": 28.0, "k24": 26.0}
    chosen = _trials_with_original(true_ms, 15.0)
    assert chosen.count("original") == TRIALS


def test_a_faster_plan_beats_the_original():
    true_ms = {"baseline": 30.0, "k12": 25.0, "k24": 20.0}
    chosen = _trials_with_original(true_ms, 40.0)
    assert chosen.count("k24") >= 95, {key: chosen.count(key) for key in [*true_ms, "original"]}


def test_the_original_is_timed_in_the_same_rounds():
    calls = []

    def measure(key):
        calls.append(key)
        return {"baseline": 10.0, "original": 12.0}[key]

    choice = choose([Candidate("baseline", 0, 10.0, 9.5, 10.5)], "baseline", measure, rounds=4, original="original")
    assert choice.key == "baseline" and calls.count("original") == 4 and calls.count("baseline") == 4
    assert choice.medians_ms == {"baseline": 10.0, "original": 12.0}
