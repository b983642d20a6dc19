"""Activation ranges: the calibration result every compile reuses.

Stored as JSON keyed by tensor name, with the hash of the model they were measured on, so a ranges file is never
applied to the wrong model by accident.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtmix.calibration.channels import ChannelSummary
from trtmix.errors import CalibrationError, CompileError
from trtmix.io import atomic_write_text, read_json

FORMAT = "trtmix-ranges/1"


@dataclass(frozen=True)
class TensorRange:
    """Observed (or clipped) range of one tensor.  ``amax`` drives symmetric scales, min/max asymmetric ones."""

    min: float
    max: float

    @property
    def amax(self) -> float:
        """Largest magnitude: the symmetric quantization threshold."""
        return max(abs(self.min), abs(self.max))


@dataclass(frozen=True)
class Ranges:
    """Ranges of activation tensors, plus where they came from (``meta``: model hash, method, data, batches).

    ``weights`` optionally overrides the per-output-channel amax of weight tensors (MSE clipping); weights not named
    there are quantized at their own max.  ``channels`` holds per-channel statistics of unit inputs; ``smoothing``
    (tensor → per-channel divisor s), ``shifts`` (tensor → per-channel centre z) and ``bias_correction`` are what
    ``trtmix.quant.smooth`` decided from them, so every artifact key, which holds the ranges' hash, changes with them.
    """

    tensors: Mapping[str, TensorRange]
    meta: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    channels: Mapping[str, ChannelSummary] = field(default_factory=dict)
    smoothing: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    shifts: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    bias_correction: bool = False

    def require(self, names: Iterable[str], model_hash: str | None = None) -> None:
        """Fail clearly if ranges are missing for tensors the plan quantizes, or were measured on another model."""
        recorded_hash = self.meta.get("model_sha256")
        if model_hash and recorded_hash and recorded_hash != model_hash:
            raise CompileError(
                "The ranges were calibrated on a different model (its hash does not match).",
                fix="recalibrate on this model with `trtmix calibrate`, or pass --data to calibrate during the build",
            )
        missing = sorted(set(names) - set(self.tensors))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise CompileError(
                f"No activation range for {len(missing)} tensor(s) the plan quantizes: {shown}.",
                expected="ranges calibrated on this exact ONNX model",
                fix="recalibrate with `trtmix calibrate` on this model, or pass --data",
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        tensors = {name: {"min": r.min, "max": r.max} for name, r in sorted(self.tensors.items())}
        weights = {name: list(amax) for name, amax in sorted(self.weights.items())}
        return {"format": FORMAT, "meta": dict(self.meta), "tensors": tensors, "weights": weights,
                "channels": {name: c.to_dict() for name, c in sorted(self.channels.items())},
                "smoothing": {name: list(s) for name, s in sorted(self.smoothing.items())},
                "shifts": {name: list(z) for name, z in sorted(self.shifts.items())},
                "bias_correction": self.bias_correction}  # fmt: skip

    @functools.cached_property
    def _hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def stable_hash(self) -> str:
        """A hash of everything in the ranges (values, weight overrides, channel statistics, smoothing, settings)."""
        return self._hash

    def save(self, path: str | Path) -> None:
        """Write atomically as JSON."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Ranges:
        """Read a ranges file written by ``save``."""
        data = read_json(path, "Ranges file", CalibrationError, "run `trtmix calibrate` first")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CalibrationError(f"{path} is not a trtmix ranges file.", expected=f'"format": "{FORMAT}"')
        tensors = {}
        for name, entry in data.get("tensors", {}).items():
            low, high = float(entry["min"]), float(entry["max"])
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise CalibrationError(f"{path}: tensor {name!r} has an invalid range [{low}, {high}].")
            tensors[name] = TensorRange(low, high)
        weights = {name: tuple(float(v) for v in amax) for name, amax in data.get("weights", {}).items()}
        channels = {name: ChannelSummary.from_dict(c) for name, c in data.get("channels", {}).items()}
        smoothing = {name: tuple(float(v) for v in s) for name, s in data.get("smoothing", {}).items()}
        shifts = {name: tuple(float(v) for v in z) for name, z in data.get("shifts", {}).items()}
        return cls(tensors=tensors, meta=data.get("meta", {}), weights=weights, channels=channels,
                   smoothing=smoothing, shifts=shifts,
                   bias_correction=bool(data.get("bias_correction", False)))  # fmt: skip
