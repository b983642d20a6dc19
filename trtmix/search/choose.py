"""The final choice under noise: the fastest feasible plan, decided by paired, interleaved timings.

The search ranks probes by their own medians, each measured once, minutes apart, under whatever else the machine
was doing.  Measured on a shared 2-core machine, the same graph differed by 23% between two such timings, and mixed
plans sat within noise of each other.  So the choice is made again at the end:

1. the contenders are every feasible candidate (the high-precision baseline and all-INT8 included) whose median's
   95% interval overlaps the best one's, plus the baseline always;
2. they are re-timed in rounds, interleaved (A B C, B C A, C A B, ...), so slow drifts of the machine hit all of them
   alike; the fastest median over the rounds wins;
3. the winner replaces the baseline only if it was faster than the baseline in the same round often enough that
   chance is unlikely (a one-sided sign test at 5%); otherwise the baseline is the result, and the report says so;
4. with ``original`` (the graph the user brought, as given), it is timed in the same rounds, and it replaces the
   choice when it was faster in enough of those rounds (the same sign test): no plan is shipped that is slower than
   the user's model beyond noise, and a tie keeps the choice.

Pure logic: ``measure(key)`` is given, so tests drive it with scripted noisy latencies.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """A measured feasible plan: its key (plan hash), INT8 count, and its median with the median's 95% interval."""

    key: str
    k: int
    median_ms: float
    ci_low_ms: float
    ci_high_ms: float


@dataclass
class Choice:
    """The chosen key, why, and the interleaved measurements behind it."""

    key: str
    reason: str
    contenders: list[str]
    rounds: int = 0
    medians_ms: dict[str, float] = field(default_factory=dict)
    wins_over_baseline: int | None = None
    wins_needed: int | None = None


def contenders(candidates: list[Candidate], baseline: str) -> list[Candidate]:
    """Candidates whose median's interval overlaps the fastest one's, and the baseline."""
    best = min(candidates, key=lambda c: c.median_ms)
    return [c for c in candidates
            if c.key == baseline or (c.ci_low_ms <= best.ci_high_ms and best.ci_low_ms <= c.ci_high_ms)]  # fmt: skip


def wins_needed(rounds: int, alpha: float = 0.05) -> int:
    """The fewest paired wins out of ``rounds`` that a coin would reach with probability at most ``alpha``."""
    for wins in range(rounds + 1):
        tail = sum(math.comb(rounds, w) for w in range(wins, rounds + 1)) / 2**rounds
        if tail <= alpha:
            return wins
    return rounds + 1


def choose(
    candidates: list[Candidate], baseline: str, measure: Callable[[str], float], rounds: int = 12,
    original: str | None = None,
) -> Choice:  # fmt: skip
    """The fastest feasible candidate under interleaved re-timing, or ``baseline`` unless beaten with confidence.

    ``original``: a key ``measure`` also times (the user's own graph); it wins when faster than the choice with
    confidence (step 4 of the module docstring).
    """
    pool = contenders(candidates, baseline)
    keys = [c.key for c in pool]
    if len(pool) == 1 and original is None:
        return Choice(keys[0], "no other feasible plan was within noise of the fastest", keys)
    timed = keys + ([original] if original is not None else [])
    samples: dict[str, list[float]] = {key: [] for key in timed}
    for round_index in range(rounds):
        shift = round_index % len(timed)
        for key in timed[shift:] + timed[:shift]:
            samples[key].append(measure(key))
    medians = {key: statistics.median(values) for key, values in samples.items()}
    choice = _decide(keys, baseline, samples, medians, rounds)
    if original is None:
        return choice
    choice.contenders = timed
    wins = sum(a < b for a, b in zip(samples[original], samples[choice.key], strict=True))
    if medians[original] < medians[choice.key] and wins >= wins_needed(rounds):
        return Choice(original, f"the original FP32 graph was faster than the best plan ({medians[original]:.3f} vs "
                      f"{medians[choice.key]:.3f} ms median, faster in {wins} of {rounds} interleaved rounds)",
                      timed, rounds, medians, wins, wins_needed(rounds))  # fmt: skip
    return choice


def _decide(
    keys: list[str], baseline: str, samples: dict[str, list[float]], medians: dict[str, float], rounds: int
) -> Choice:
    """Among ``keys``: the fastest median, if it beat ``baseline`` in enough paired rounds; else ``baseline``."""
    fastest = min(keys, key=lambda key: medians[key])
    needed = wins_needed(rounds)
    if fastest == baseline:
        return Choice(baseline, "the high-precision baseline was the fastest in the interleaved re-timing", keys,
                      rounds, medians)  # fmt: skip
    wins = sum(a < b for a, b in zip(samples[fastest], samples[baseline], strict=True))
    if wins >= needed:
        reason = f"faster than the high-precision baseline in {wins} of {rounds} interleaved rounds"
        return Choice(fastest, reason, keys, rounds, medians, wins, needed)
    reason = (f"no plan beat the high-precision baseline with confidence: the fastest won {wins} of {rounds} "
              f"interleaved rounds against it, {needed} needed")  # fmt: skip
    return Choice(baseline, reason, keys, rounds, medians, wins, needed)


def latency_violations(points: list[tuple[int, float, float, float]]) -> list[tuple[int, int]]:
    """Pairs (k1, k2), k1 < k2, where more INT8 was slower beyond doubt: k2's interval lies above k1's.

    ``points`` are (k, median, interval low, interval high).  The bisection assumes latency falls as k grows.
    """
    ordered = sorted(points)
    return [(a[0], b[0]) for i, a in enumerate(ordered) for b in ordered[i + 1:] if b[2] > a[3]]  # fmt: skip
