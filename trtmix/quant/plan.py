"""Precision plans: which unit runs in which precision.

A plan is plain data.  It is written into a graph by ``trtmix.quant.compile`` and keys every cache by its stable
hash, so two plans that say the same thing hash the same whatever their key order or redundant entries.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from trtmix.errors import PlanError
from trtmix.io import atomic_write_text, read_json


class Precision(str, enum.Enum):
    """The precision a unit runs in.  ``int8`` means Q/DQ on its inputs; the others set the float type."""

    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"

    @classmethod
    def parse(cls, value: str, where: str) -> Precision:
        """Parse a precision name, with an error that names ``where`` it was found."""
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise PlanError(
                f"Unknown precision {value!r} at {where}.", expected=f"one of {choices}", fix="correct the plan file"
            ) from None


@dataclass(frozen=True)
class PrecisionPlan:
    """A default precision plus per-unit overrides.

    Attributes:
        default: precision of every unit not named in ``units`` (and of the graph around the units).
        units: unit name → precision.
    """

    default: Precision = Precision.FP16
    units: Mapping[str, Precision] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", MappingProxyType(dict(sorted(self.units.items()))))

    @classmethod
    def with_int8(cls, unit_names: Iterable[str], default: Precision = Precision.FP16) -> PrecisionPlan:
        """The named units in INT8, everything else in ``default``."""
        return cls(default=default, units={name: Precision.INT8 for name in unit_names})

    def precision_of(self, unit_name: str) -> Precision:
        """The precision this plan gives ``unit_name``."""
        return self.units.get(unit_name, self.default)

    def int8_units(self) -> list[str]:
        """Names of the units this plan puts in INT8, sorted."""
        return [name for name, precision in self.units.items() if precision is Precision.INT8]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"default": "fp16", "units": {"<unit name>": "int8", ...}}``."""
        return {"default": self.default.value, "units": {name: p.value for name, p in self.units.items()}}

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> PrecisionPlan:
        """Parse the JSON form, rejecting anything malformed with a message that points at the problem."""
        if not isinstance(data, dict):
            raise PlanError(
                f"{source} is not a JSON object (got {type(data).__name__}).",
                expected='{"default": "fp16", "units": {"<unit name>": "int8"}}',
            )
        unknown_keys = sorted(set(data) - {"default", "units"})
        if unknown_keys:
            raise PlanError(f"{source} has unknown keys {unknown_keys}.", expected='only "default" and "units"')
        units = data.get("units", {})
        if not isinstance(units, dict):
            raise PlanError(f'{source}: "units" must map unit names to precisions (got {type(units).__name__}).')
        default = Precision.parse(data.get("default", Precision.FP16.value), f'{source} "default"')
        parsed = {str(name): Precision.parse(p, f"{source} unit {name!r}") for name, p in units.items()}
        return cls(default=default, units=parsed)

    def canonical(self) -> PrecisionPlan:
        """The same plan with redundant entries (equal to the default) dropped."""
        return PrecisionPlan(self.default, {n: p for n, p in self.units.items() if p is not self.default})

    def stable_hash(self) -> str:
        """A 16-hex-digit hash of the canonical plan: equal for plans that mean the same."""
        text = json.dumps(self.canonical().to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PrecisionPlan:
        """Read a plan file written by ``save`` or by hand."""
        data = read_json(path, "Plan file", PlanError, "check the path passed to --plan")
        return cls.from_dict(data, source=f"plan file {path}")

    def validate(self, unit_names: Iterable[str]) -> None:
        """Fail if the plan names a unit the model does not have, suggesting the closest real names."""
        known = list(unit_names)
        known_set = set(known)
        for name in self.units:
            if name not in known_set:
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
                hint = (
                    f"did you mean {', '.join(repr(c) for c in close)}?" if close else "run `trtmix units` to list them"
                )
                raise PlanError(
                    f"The plan names unit {name!r}, which this model does not have.",
                    expected=f"one of the model's {len(known)} unit names",
                    fix=hint,
                )
