"""Activation ranges: the calibration result every compile reuses.

Stored as JSON keyed by tensor name, with the hash of the model they were measured on, so a ranges file is never
applied to the wrong model by accident.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtmix.calibration.channels import ChannelSummary
from trtmix.errors import CalibrationError, CompileError
from trtmix.io import atomic_write_bytes, atomic_write_text, read_json

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


@dataclass(frozen=True, eq=False)
class LearnedRounding:
    """One weight's int8 values learned on calibration data (``trtmix.quant.rounding``), and what they were learned for.

    ``scale`` (per output channel, float32) and ``guard`` (a digest of how the unit reads its input: smoothing,
    centring, bias correction; ``trtmix.quant.weights.input_guard``) say when the values still apply: a unit whose
    scales or input transform changed since (another smoothing option, other weight ranges) rounds to nearest again
    rather than use values learned for another quantizer.
    """

    values: np.ndarray  # int8, the weight's shape
    scale: np.ndarray  # float32, one per output channel
    levels: int  # the largest |q| they were clamped to
    guard: str

    def digest(self) -> str:
        """A hash of everything here: what the ranges' hash holds for this weight (the arrays are not in the JSON)."""
        hasher = hashlib.sha256()
        for array in (np.ascontiguousarray(self.values, np.int8), np.ascontiguousarray(self.scale, np.float32)):
            hasher.update(str(array.shape).encode())
            hasher.update(array.tobytes())
        hasher.update(f"{self.levels}/{self.guard}".encode())
        return hasher.hexdigest()[:24]


def rounding_path(path: str | Path) -> Path:
    """Where ``Ranges.save`` writes the learned int8 weights of a ranges file: ``NAME.rounding.npz`` beside it."""
    target = Path(path)
    return target.with_name(f"{target.stem}.rounding.npz")


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
    rounding: Mapping[str, LearnedRounding] = field(default_factory=dict)  # weight name → learned int8 values

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
                "bias_correction": self.bias_correction,
                **({"rounding": {name: learned.digest() for name, learned in sorted(self.rounding.items())}}
                   if self.rounding else {})}  # fmt: skip

    @functools.cached_property
    def _hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def stable_hash(self) -> str:
        """A hash of everything in the ranges (values, weight overrides, channel statistics, smoothing, settings)."""
        return self._hash

    def save(self, path: str | Path) -> None:
        """Write atomically as JSON, and learned rounding (if any) as ``rounding_path(path)`` first.

        The arrays go first, so a JSON that names learned weights never points at a missing or older ``.npz``
        (``load`` checks each weight's digest against the JSON either way).
        """
        if self.rounding:
            atomic_write_bytes(rounding_path(path), _rounding_npz(self.rounding))
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
        rounding = _load_rounding(path, data.get("rounding", {}))
        return cls(tensors=tensors, meta=data.get("meta", {}), weights=weights, channels=channels,
                   smoothing=smoothing, shifts=shifts, bias_correction=bool(data.get("bias_correction", False)),
                   rounding=rounding)  # fmt: skip


def _rounding_npz(rounding: Mapping[str, LearnedRounding]) -> bytes:
    """The learned weights as one ``.npz`` (arrays by position in name order; names and guards sit in its index)."""
    arrays: dict[str, np.ndarray] = {}
    index = []
    for position, (name, learned) in enumerate(sorted(rounding.items())):
        arrays[f"values_{position}"] = np.asarray(learned.values, np.int8)
        arrays[f"scale_{position}"] = np.asarray(learned.scale, np.float32)
        index.append({"name": name, "levels": learned.levels, "guard": learned.guard})
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types the keywords as allow_pickle
    return buffer.getvalue()


def _load_rounding(path: str | Path, digests: Mapping[str, str]) -> dict[str, LearnedRounding]:
    """The learned weights the JSON names, from the ``.npz`` beside it, each checked against its digest."""
    if not digests:
        return {}  # a file written before learned rounding, or without it
    source = rounding_path(path)
    try:
        with np.load(source, allow_pickle=False) as stored:
            index = json.loads(bytes(stored["index"]).decode())
            rounding = {entry["name"]: LearnedRounding(stored[f"values_{i}"], stored[f"scale_{i}"],
                                                       int(entry["levels"]), str(entry["guard"]))
                        for i, entry in enumerate(index)}  # fmt: skip
    except (OSError, KeyError, ValueError) as err:
        raise CalibrationError(f"{path} names learned weight rounding, but {source} cannot be read ({err}).",
                               fix="copy the .rounding.npz written beside the ranges file with it") from err
    wrong = sorted(name for name, digest in digests.items()
                   if name not in rounding or rounding[name].digest() != digest)  # fmt: skip
    if wrong:
        raise CalibrationError(f"{source} does not hold the learned weights {path} names ({', '.join(wrong[:3])}).",
                               fix="write the ranges file and its .rounding.npz together (Ranges.save)")
    return {name: rounding[name] for name in digests}
