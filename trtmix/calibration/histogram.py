"""Streaming histograms of |x| that merge exactly, and the clipping thresholds computed from them.

A histogram covers [0, 2**exponent) with ``BINS`` equal bins.  When a batch holds a larger magnitude the range
doubles as often as needed and each group of adjacent bins is summed: with power-of-two ranges the bin edges nest, so
the merged histogram is bit-identical to one computed in a single pass over all the data, and memory stays at
``BINS`` counts per tensor however many batches there are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BINS = 2048
QUANT_LEVELS = 128  # int8 magnitudes 0..127, as TensorRT's entropy calibrator bins them


@dataclass
class TensorHistogram:
    """Counts of |x| in ``BINS`` bins over [0, 2**exponent), plus the exact min, max and element count."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))
    exponent: int | None = None
    minimum: float = math.inf
    maximum: float = -math.inf

    @property
    def amax(self) -> float:
        """Largest magnitude seen."""
        return max(abs(self.minimum), abs(self.maximum))

    @property
    def bin_width(self) -> float:
        """Width of one bin (0 before any non-zero value was seen)."""
        return 0.0 if self.exponent is None else 2.0**self.exponent / BINS

    def add(self, values: np.ndarray) -> None:
        """Fold one batch of values in."""
        flat = np.abs(np.asarray(values, dtype=np.float32).ravel())
        if flat.size == 0:
            return
        self.minimum = min(self.minimum, float(np.min(values)))
        self.maximum = max(self.maximum, float(np.max(values)))
        largest = float(flat.max())
        if largest == 0.0 and self.exponent is None:
            self.counts[0] += flat.size
            return
        self._grow_to(_exponent_for(largest))
        assert self.exponent is not None
        index = np.floor(flat.astype(np.float64) * (BINS / 2.0**self.exponent)).astype(np.int64)
        self.counts += np.bincount(np.minimum(index, BINS - 1), minlength=BINS)

    def merge(self, other: TensorHistogram) -> None:
        """Fold another histogram in (exactly, see the module docstring)."""
        if other.exponent is not None:
            self._grow_to(other.exponent)
            assert self.exponent is not None
            self.counts += _regrid(other.counts, self.exponent - other.exponent)
        else:
            self.counts[0] += other.counts[0]
        self.minimum, self.maximum = min(self.minimum, other.minimum), max(self.maximum, other.maximum)

    def _grow_to(self, exponent: int) -> None:
        if self.exponent is None:
            self.exponent = exponent
        elif exponent > self.exponent:
            self.counts = _regrid(self.counts, exponent - self.exponent)
            self.exponent = exponent


def _exponent_for(value: float) -> int:
    """Smallest e with value < 2**e."""
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, 0.5 <= mantissa < 1
    return exponent


def _regrid(counts: np.ndarray, doublings: int) -> np.ndarray:
    """Counts on a range 2**doublings times wider: sum groups of 2**doublings bins, pad with empty bins."""
    if doublings <= 0:
        return counts.copy()
    group = 2 ** min(doublings, int(math.log2(BINS)))
    merged = counts.reshape(-1, group).sum(axis=1)
    out = np.zeros(BINS, dtype=np.int64)
    out[: merged.size] = merged
    return out


def percentile_threshold(hist: TensorHistogram, percentile: float) -> float:
    """The upper edge of the bin where the cumulative share of |x| first reaches ``percentile`` %."""
    total = hist.counts.sum()
    if total == 0 or hist.exponent is None:
        return hist.amax
    cumulative = np.cumsum(hist.counts)
    index = int(np.searchsorted(cumulative, total * percentile / 100.0))
    return min((index + 1) * hist.bin_width, hist.amax)


def entropy_threshold(hist: TensorHistogram) -> float:
    """The KL-minimising threshold, as TensorRT's entropy calibrator computes it.

    For each candidate bin count i ≥ 128: P is the histogram up to i with the outliers beyond folded into its last
    bin; Q is P merged into 128 levels and spread back over the non-empty bins; the i with the smallest KL(P‖Q) wins
    (the first of equals).  As in NVIDIA's pytorch-quantization, the zero bin takes its neighbour's count first: ReLU
    outputs put ~40% of their values at exactly 0, and that single bin otherwise drags the threshold down to ~15% of
    the range (measured on EfficientNet-Lite0's ReLU6 outputs, which then lost all top-1 agreement).
    """
    counts = hist.counts.astype(np.float64)
    counts[0] = counts[1]
    if hist.exponent is None or counts.sum() == 0:
        return hist.amax
    last_nonzero = int(np.nonzero(counts)[0][-1]) + 1
    if last_nonzero <= QUANT_LEVELS:
        return min(last_nonzero * hist.bin_width, hist.amax)
    sizes = np.arange(QUANT_LEVELS, last_nonzero + 1)
    best_i = int(sizes[int(np.argmin(_kl_per_size(counts, sizes)))])
    return min(best_i * hist.bin_width, hist.amax)


def _kl_per_size(counts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """KL(P‖Q) of ``entropy_threshold`` for every candidate bin count in ``sizes`` at once, from prefix sums.

    Q is constant over the non-empty bins of each of the 128 levels (its mass over their number), so with
    R_k = P's mass in level k, KL = Σ P log P − Σ_k R_k log(mass_k / support_k / Σ clipped), every sum a difference
    of prefix sums.  One pass instead of a loop over up to 1,920 sizes: it was 10 of a MobileNetV2 job's 60 s.
    P's last bin holds the folded tail, so the last level's mass in P, and its support, differ from the clipped
    histogram's; where that level has support but no clipped mass, Q is 0 where P is not and KL is infinite.
    """
    total = counts.sum()
    mass_before = np.concatenate([[0.0], np.cumsum(counts)])
    nonzero_before = np.concatenate([[0], np.cumsum(counts > 0)])
    xlogx = np.where(counts > 0, counts * np.log(np.where(counts > 0, counts, 1.0)), 0.0)
    xlogx_before = np.concatenate([[0.0], np.cumsum(xlogx)])
    edges = np.floor(np.arange(QUANT_LEVELS + 1)[None, :] * sizes[:, None] / QUANT_LEVELS).astype(np.int64)
    mass = np.diff(mass_before[edges], axis=1)  # [sizes, levels]: the clipped histogram's mass per level
    support = np.diff(nonzero_before[edges], axis=1).astype(np.float64)
    tail = total - mass_before[sizes]
    last = counts[sizes - 1] + tail  # P's last bin
    support[:, -1] += (last > 0).astype(np.float64) - (counts[sizes - 1] > 0)
    in_p = mass.copy()
    in_p[:, -1] += tail
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.log(mass) - np.log(support) - np.log(mass_before[sizes])[:, None]
        cross = np.where(in_p > 0, in_p * log_q, 0.0).sum(axis=1)
        last_xlogx = np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0)
        kl = (xlogx_before[sizes - 1] + last_xlogx - cross) / total - np.log(total)
    impossible = ((in_p > 0) & (mass == 0)).any(axis=1) | (mass_before[sizes] == 0)
    return np.where(impossible, np.inf, kl)


def mse_threshold(hist: TensorHistogram, candidates: int = 256, levels: int = 127) -> float:
    """The threshold minimising expected squared error of symmetric int8 quantization over the histogram.

    Inside the threshold the error is rounding noise, step²/12; beyond it, the clipping error (|x| − T)².
    """
    if hist.exponent is None or hist.counts.sum() == 0:
        return hist.amax
    centers = (np.arange(BINS) + 0.5) * hist.bin_width
    counts = hist.counts.astype(np.float64)
    thresholds = hist.amax * np.arange(1, candidates + 1) / candidates
    step = thresholds / levels
    inside = centers[None, :] <= thresholds[:, None]
    clipped = np.where(inside, 0.0, (centers[None, :] - thresholds[:, None]) ** 2)
    error = (clipped + np.where(inside, (step**2 / 12.0)[:, None], 0.0)) @ counts
    return float(thresholds[int(np.argmin(error))])


def mse_weight_amax(weight: np.ndarray, axis: int, levels: int = 127, candidates: int = 64) -> np.ndarray:
    """Per-channel clipping amax minimising ‖Q(W) − W‖², searched over fractions 0.5–1 of the channel's max."""
    moved = np.moveaxis(np.asarray(weight, dtype=np.float64), axis, 0).reshape(weight.shape[axis], -1)
    amax = np.abs(moved).max(axis=1)
    fractions = np.linspace(0.5, 1.0, candidates)
    best = amax.copy()
    best_error = np.full(amax.shape, np.inf)
    for fraction in fractions:
        clip = np.maximum(amax * fraction, 1e-12)
        scale = (clip / levels)[:, None]
        error = ((np.clip(np.rint(moved / scale), -levels - 1, levels) * scale - moved) ** 2).sum(axis=1)
        better = error < best_error
        best[better], best_error[better] = clip[better], error[better]
    return best.astype(np.float32)
