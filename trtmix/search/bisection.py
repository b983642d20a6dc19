"""Bisection over the sensitivity order, as an ask/tell object.

The plan with ``k`` INT8 steps puts the first ``k`` steps of the order (least sensitive first) in INT8 and the rest in
high precision.  A step is one unit, or a group of units flipped together (``trtmix.ir.groups``).
``ask()`` names the next ``k`` to measure, ``tell()`` takes its accuracy (relative to the float model) and latency.
The search probes all-INT8 first (a budget it already meets ends the search after one build), then all-high
precision, then bisects: at most ⌈log2 U⌉ + 3 builds for U steps, plus any frontier probes.

Accuracy is not assumed monotone in k: every probe is kept, the fastest feasible probe wins, and each pair of probes
where more INT8 gave *higher* accuracy is reported.  The object holds no I/O; the pipeline drives it, so tests can
drive it with scripted numbers, and a resumed run replays its journal through the same ``tell`` calls.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

from trtmix.errors import TrtmixError
from trtmix.quant.plan import Precision, PrecisionPlan


@dataclass(frozen=True)
class Budget:
    """Accuracy target as fractions of the float model's accuracy.

    ``lower`` is the least acceptable relative accuracy; with ``upper`` set, a probe landing in [lower, upper] ends
    the search at once (good enough, no need to bisect further).
    """

    lower: float
    upper: float | None = None

    @classmethod
    def parse(cls, max_drop: str | None = None, accuracy_range: str | None = None) -> Budget:
        """From ``--max-drop 0.1%`` (or ``0.001``) or ``--accuracy-range 99.9:99.99`` (percent of the float model)."""
        if (max_drop is None) == (accuracy_range is None):
            raise TrtmixError("Give exactly one of --max-drop and --accuracy-range.", expected="e.g. --max-drop 0.1%")
        if max_drop is not None:
            drop = parse_fraction(max_drop, "--max-drop")
            if not 0 <= drop < 1:
                raise TrtmixError(f"--max-drop {max_drop} is out of range.", expected="a drop between 0% and 100%")
            return cls(lower=1.0 - drop)
        low_text, sep, high_text = str(accuracy_range).partition(":")
        if not sep:
            raise TrtmixError(
                f"Bad --accuracy-range {accuracy_range!r}.", expected="LOW:HIGH in percent, e.g. 99.9:99.99"
            )
        low, high = _percent(low_text), _percent(high_text)
        if not 0 < low <= high:
            raise TrtmixError(f"--accuracy-range {accuracy_range}: need 0 < LOW <= HIGH.")
        if low > 1.0:
            raise TrtmixError(
                f"--accuracy-range {accuracy_range} asks for more than the float model's own accuracy.",
                expected="LOW at most 100 (percent of the float model)",
                fix="lower the range; no quantized plan can beat the float model it is measured against",
            )
        return cls(lower=low, upper=high)

    def feasible(self, relative: float | None) -> bool:
        """True when a measured relative accuracy meets the budget."""
        return relative is not None and relative >= self.lower

    def inside(self, relative: float | None) -> bool:
        """True when it lands inside the [lower, upper] range (only with an explicit range)."""
        return self.upper is not None and relative is not None and self.lower <= relative <= self.upper

    def describe(self, reference: str = "float") -> str:
        """Human form, e.g. ``>= 99.900% of float`` (``reference`` names what the percentages are of)."""
        if self.upper is None:
            return f">= {self.lower * 100:.3f}% of {reference}"
        return f"{self.lower * 100:.3f}%–{self.upper * 100:.3f}% of {reference}"


def parse_fraction(text: str, flag: str) -> float:
    """``0.1%`` or ``0.001`` as a fraction, with an error naming ``flag``."""
    text = str(text).strip()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+|[0-9]+\.)\s*(%?)", text)
    if not match:
        raise TrtmixError(f"Bad {flag} {text!r}.", expected="a number, optionally with %, e.g. 0.1%")
    value = float(match[1])
    return value / 100.0 if match[2] else value


def _percent(text: str) -> float:
    try:
        return float(text.strip().rstrip("%")) / 100.0
    except ValueError:
        raise TrtmixError(f"Bad percentage {text!r} in --accuracy-range.") from None


class LazyOrder(Sequence[str]):
    """An ordering computed only when the bisection first needs it.

    The search measures all-INT8 and all-high first, and neither depends on the order; when all-INT8 meets the
    budget (common for large transformers), the ordering, which costs one compile per unit, is never computed.
    """

    def __init__(self, names: list[str], compute: Callable[[], list[str]]) -> None:
        self.names, self._compute = list(names), compute
        self._order: list[str] | None = None

    @property
    def computed(self) -> bool:
        """True once the order was needed (and so computed)."""
        return self._order is not None

    def resolved(self) -> list[str]:
        """The order, computing it now if needed."""
        if self._order is None:
            self._order = list(self._compute())
        return self._order

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self.resolved()[index]


def order_computed(order: Sequence[str]) -> bool:
    """False only for a lazy order the search never needed."""
    return order.computed if isinstance(order, LazyOrder) else True


@dataclass
class Probe:
    """One measured plan.  ``relative`` is accuracy ÷ the float model's; None when the probe failed."""

    k: int
    relative: float | None
    latency_ms: float | None
    status: str = "ok"

    @property
    def ok(self) -> bool:
        """Measured successfully."""
        return self.status == "ok" and self.relative is not None and self.latency_ms is not None


@dataclass
class BisectionSearch:
    """Bisection of k (number of INT8 steps from the front of ``order``) against ``budget``.

    ``members`` maps a step (a group's name) to the units it flips; a step it does not name is one unit.
    """

    order: Sequence[str]
    budget: Budget
    default: Precision = Precision.FP16
    frontier: int = 0
    members: Mapping[str, Sequence[str]] = field(default_factory=dict)
    probes: dict[int, Probe] = field(default_factory=dict)
    fp32_nodes: frozenset[str] = frozenset()  # float nodes every plan keeps in FP32 (the job's all-high plan's)
    _low: int = 0
    _high: int = 0
    _stage: str = "all-int8"
    _frontier_queue: list[int] = field(default_factory=list)
    stop_reason: str = ""

    def __post_init__(self) -> None:
        self._high = len(self.order)

    @property
    def units(self) -> int:
        """U, the number of steps being ordered (units, or groups of units)."""
        return len(self.order)

    @property
    def max_builds(self) -> int:
        """The bound on bisection builds: ⌈log2 U⌉ + 3 (frontier probes come on top)."""
        return math.ceil(math.log2(max(self.units, 1))) + 3

    def plan_for(self, k: int) -> PrecisionPlan:
        """The plan with the first ``k`` steps of the order in INT8 (k = 0 and k = U need no order)."""
        if k == 0:
            return PrecisionPlan(default=self.default, fp32_nodes=self.fp32_nodes)
        steps = self.order.names if k == self.units and isinstance(self.order, LazyOrder) else self.order[:k]
        return PrecisionPlan.with_int8(self.expand(steps), default=self.default, fp32_nodes=self.fp32_nodes)

    def expand(self, steps: Sequence[str]) -> list[str]:
        """The unit names of ``steps``, in order."""
        return [unit for step in steps for unit in self.members.get(step, (step,))]

    def ask(self) -> int | None:
        """The next k to measure, or None when the search is over."""
        if self._stage == "all-int8":
            return self.units
        if self._stage == "all-high":
            return 0
        if self._stage == "bisect":
            return (self._low + self._high) // 2
        if self._stage == "frontier" and self._frontier_queue:
            return self._frontier_queue[0]
        return None

    def speculate(self, count: int) -> list[int]:
        """Up to ``count`` ks to measure at once, ``ask()``'s first (k-section along the bisection's own tree).

        In the bisection stage the others are the midpoints of the intervals each answer would leave, breadth first.
        ``record`` keeps them and ``tell`` walks the bisection through them as it would through its own probes, so
        given the same measurements the search takes the serial bisection's every step, measures a superset of its
        probes, and ``best`` cannot come out slower.  Outside the bisection stage: ``ask()`` alone.
        """
        first = self.ask()
        if first is None:
            return []
        if self._stage != "bisect" or count <= 1:
            return [first]
        chosen: list[int] = []
        intervals = [(self._low, self._high)]
        while intervals and len(chosen) < count:
            low, high = intervals.pop(0)
            if high - low <= 1:
                continue
            middle = (low + high) // 2
            if middle not in self.probes:
                chosen.append(middle)
            intervals += [(low, middle), (middle, high)]
        return chosen

    def record(self, k: int, relative: float | None, latency_ms: float | None, status: str = "ok") -> None:
        """A measurement the search did not ask for yet (``speculate``); the bisection uses it when it gets there."""
        self.probes[k] = Probe(k, relative if status == "ok" else None, latency_ms, status)

    def pending_frontier(self) -> list[int]:
        """The frontier probes still to measure (they are independent: a cluster measures them together)."""
        return list(self._frontier_queue) if self._stage == "frontier" else []

    def tell(self, k: int, relative: float | None, latency_ms: float | None, status: str = "ok") -> None:
        """Record the measurement of the plan ``ask()`` proposed."""
        expected = self.ask()
        if k != expected:
            raise TrtmixError(f"Internal error: told k={k} but the search asked for k={expected}.")
        self.probes[k] = Probe(k, relative if status == "ok" else None, latency_ms, status)
        feasible = self.budget.feasible(self.probes[k].relative)
        if self._stage == "all-int8":
            self._after_all_int8(feasible)
        elif self._stage == "all-high":
            self._after_all_high(feasible)
        elif self._stage == "bisect":
            self._after_bisect(k, feasible)
        else:
            self._frontier_queue.pop(0)
            if not self._frontier_queue:
                self._stage = "done"

    def _after_all_int8(self, feasible: bool) -> None:
        if feasible or self.units <= 1:
            self._finish("all-INT8 already meets the budget" if feasible else "only one unit")
        else:
            self._stage = "all-high"

    def _after_all_high(self, feasible: bool) -> None:
        if not feasible:
            self._finish("even the all-high-precision plan misses the budget")
        else:
            self._stage = "bisect"
            self._advance_bisection()

    def _after_bisect(self, k: int, feasible: bool) -> None:
        if feasible and self.budget.inside(self.probes[k].relative):
            self._finish(f"k={k} landed inside the accuracy range")
            return
        if feasible:
            self._low = k
        else:
            self._high = k  # a failed build counts as infeasible: the search backs off
        self._advance_bisection()

    def _advance_bisection(self) -> None:
        while self._high - self._low > 1:
            middle = (self._low + self._high) // 2
            if middle not in self.probes:
                return
            probe = self.probes[middle]
            if self.budget.feasible(probe.relative) and self.budget.inside(probe.relative):
                self._finish(f"k={middle} landed inside the accuracy range")  # as if it had just been asked
                return
            self._low, self._high = (
                (middle, self._high) if self.budget.feasible(probe.relative) else (self._low, middle)
            )
        self._finish(f"interval closed at k={self._low}")

    def _finish(self, reason: str) -> None:
        self.stop_reason = reason
        spread = np.linspace(0, self.units, self.frontier + 2)[1:-1] if self.frontier else []
        self._frontier_queue = sorted({int(round(k)) for k in spread} - set(self.probes))
        self._stage = "frontier" if self._frontier_queue else "done"

    def best(self) -> Probe | None:
        """The fastest feasible probe (ties: more INT8 units), or None when no probe meets the budget."""
        feasible = [p for p in self.probes.values() if p.ok and self.budget.feasible(p.relative)]
        return min(feasible, key=lambda p: (p.latency_ms, -p.k)) if feasible else None

    def violations(self, tolerance: float = 1e-6) -> list[tuple[int, int]]:
        """Pairs (k1, k2), k1 < k2, where more INT8 units measured *higher* accuracy: monotonicity broken."""
        measured = sorted((p for p in self.probes.values() if p.ok), key=lambda p: p.k)
        return [
            (a.k, b.k)
            for i, a in enumerate(measured)
            for b in measured[i + 1 :]
            if b.relative > a.relative + tolerance  # type: ignore[operator]
        ]


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Pareto flags of (latency, accuracy) points: True where no other point is as fast and as accurate or better."""
    flags = []
    for i, (latency, accuracy) in enumerate(points):
        dominated = any(
            other_latency <= latency
            and other_accuracy >= accuracy
            and (other_latency, other_accuracy) != (latency, accuracy)
            for j, (other_latency, other_accuracy) in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by (latency, accuracy) points up to ``reference`` = (worst latency, worst accuracy).

    Lower latency and higher accuracy are better.  With latency normalised by the float model's and accuracy relative
    to it, this is the normalised frontier area used to compare orderings: larger is a better frontier.
    """
    worst_latency, worst_accuracy = reference
    useful = sorted((lat, acc) for lat, acc in points if lat < worst_latency and acc > worst_accuracy)
    area, best_accuracy = 0.0, worst_accuracy
    for index, (latency, accuracy) in enumerate(useful):
        best_accuracy = max(best_accuracy, accuracy)
        next_latency = useful[index + 1][0] if index + 1 < len(useful) else worst_latency
        area += (next_latency - latency) * (best_accuracy - worst_accuracy)
    return area
