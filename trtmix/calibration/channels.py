"""Per-channel statistics of unit inputs, gathered in the calibration pass beside the histograms.

Outlier-aware scaling (``trtmix.quant.smooth``) needs each input channel's largest magnitude and mean square; bias
correction needs each channel's mean.  The channel is the axis a unit's weight reduces over: the last axis for a
MatMul/Gemm input, axis 1 for a Conv input.  The sums are kept in float64 so that batches merge exactly enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trtmix.ir.units import KIND_CONV, KIND_LINEAR, Unit


@dataclass
class ChannelStats:
    """Per-channel min, max, sum and sum of squares along ``axis`` over every value seen, and the count per channel."""

    axis: int
    minimum: np.ndarray | None = None
    maximum: np.ndarray | None = None
    total: np.ndarray | None = None
    square_total: np.ndarray | None = None
    count: int = 0

    def add(self, value: np.ndarray) -> None:
        """Fold one batch in."""
        rows = np.moveaxis(np.asarray(value, dtype=np.float64), self.axis, -1).reshape(-1, value.shape[self.axis])
        if rows.shape[0] == 0:
            return
        low, high = rows.min(axis=0), rows.max(axis=0)
        if self.minimum is None:
            self.minimum, self.maximum = low, high
            self.total, self.square_total = rows.sum(axis=0), np.square(rows).sum(axis=0)
        else:
            self.minimum, self.maximum = np.minimum(self.minimum, low), np.maximum(self.maximum, high)
            self.total = self.total + rows.sum(axis=0)  # type: ignore[operator]
            self.square_total = self.square_total + np.square(rows).sum(axis=0)  # type: ignore[operator]
        self.count += rows.shape[0]

    def summary(self) -> ChannelSummary:
        """What the ranges keep: per-channel min, max, mean and mean square."""
        count = max(self.count, 1)
        assert self.minimum is not None and self.maximum is not None
        return ChannelSummary(self.axis, tuple(map(float, self.minimum)), tuple(map(float, self.maximum)),
                              tuple(float(v) / count for v in self.total),  # type: ignore[union-attr]
                              tuple(float(v) / count for v in self.square_total))  # type: ignore[union-attr]  # fmt: skip


@dataclass(frozen=True)
class ChannelSummary:
    """Per-channel statistics of one tensor, as stored in the ranges file."""

    axis: int
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]
    mean: tuple[float, ...]
    mean_square: tuple[float, ...]

    @property
    def amax(self) -> np.ndarray:
        """Largest magnitude per channel."""
        return np.maximum(np.abs(np.asarray(self.minimum)), np.abs(np.asarray(self.maximum)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"axis": self.axis, "min": list(self.minimum), "max": list(self.maximum), "mean": list(self.mean),
                "mean_square": list(self.mean_square)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelSummary:
        """Inverse of ``to_dict``."""
        return cls(int(data["axis"]), tuple(data["min"]), tuple(data["max"]), tuple(data["mean"]),
                   tuple(data["mean_square"]))  # fmt: skip


def channel_axis(unit: Unit) -> int | None:
    """The axis of the unit's activation input its weight reduces over, or None when there is none to track.

    Conv: axis 1 (NCHW).  A MatMul/Gemm with a 2-D weight: the last axis (exports write Gemm without ``transA``).
    """
    if unit.kind == KIND_CONV:
        return 1
    if unit.kind == KIND_LINEAR and unit.weight_shape is not None and len(unit.weight_shape) == 2:
        return -1
    return None


def tracked_tensors(units: list[Unit]) -> dict[str, int]:
    """Unit input tensor → the channel axis to track (a tensor read as input by several units is tracked once)."""
    tracked: dict[str, int] = {}
    for unit in units:
        axis = channel_axis(unit)
        if axis is not None:
            tracked.setdefault(unit.inputs[0], axis)
    return tracked
