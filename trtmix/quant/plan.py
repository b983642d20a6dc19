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
    """A default precision plus per-unit overrides, plus float nodes kept in FP32.

    Attributes:
        default: precision of every unit not named in ``units`` (and of the graph around the units).
        units: unit name → precision.
        fp32_nodes: graph nodes outside INT8 units that run in FP32 whatever ``default`` says: the regions float16
            cannot hold (observed magnitudes, measured losses).  Written in the plan file, so a plan says exactly
            which graph it compiles to.
    """

    default: Precision = Precision.FP16
    units: Mapping[str, Precision] = field(default_factory=dict)
    fp32_nodes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", MappingProxyType(dict(sorted(self.units.items()))))
        object.__setattr__(self, "fp32_nodes", frozenset(self.fp32_nodes))

    @classmethod
    def with_int8(
        cls, unit_names: Iterable[str], default: Precision = Precision.FP16, fp32_nodes: Iterable[str] = ()
    ) -> PrecisionPlan:
        """The named units in INT8, everything else in ``default`` (``fp32_nodes`` in FP32)."""
        units = {name: Precision.INT8 for name in unit_names}
        return cls(default=default, units=units, fp32_nodes=frozenset(fp32_nodes))

    def with_units(self, unit_names: Iterable[str]) -> PrecisionPlan:
        """The plan with the named units in INT8 as well (its default and FP32 nodes kept)."""
        return PrecisionPlan(self.default, {**self.units, **{n: Precision.INT8 for n in unit_names}}, self.fp32_nodes)

    def precision_of(self, unit_name: str) -> Precision:
        """The precision this plan gives ``unit_name``."""
        return self.units.get(unit_name, self.default)

    def int8_units(self) -> list[str]:
        """Names of the units this plan puts in INT8, sorted."""
        return [name for name, precision in self.units.items() if precision is Precision.INT8]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"default": "fp16", "units": {"<unit name>": "int8", ...}}`` (+ ``"fp32_nodes"``)."""
        data: dict[str, Any] = {"default": self.default.value, "units": {n: p.value for n, p in self.units.items()}}
        if self.fp32_nodes:  # absent when empty, so plans without FP32 nodes hash as they always did
            data["fp32_nodes"] = sorted(self.fp32_nodes)
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> PrecisionPlan:
        """Parse the JSON form, rejecting anything malformed with a message that points at the problem."""
        if not isinstance(data, dict):
            raise PlanError(
                f"{source} is not a JSON object (got {type(data).__name__}).",
                expected='{"default": "fp16", "units": {"<unit name>": "int8"}}',
            )
        unknown_keys = sorted(set(data) - {"default", "units", "fp32_nodes"})
        if unknown_keys:
            raise PlanError(f"{source} has unknown keys {unknown_keys}.",
                            expected='only "default", "units" and "fp32_nodes"')  # fmt: skip
        fp32_nodes = data.get("fp32_nodes", [])
        if not isinstance(fp32_nodes, list) or not all(isinstance(n, str) for n in fp32_nodes):
            raise PlanError(f'{source}: "fp32_nodes" must be a list of node names.', expected='["/conv1/Conv", ...]')
        units = data.get("units", {})
        if not isinstance(units, dict):
            raise PlanError(f'{source}: "units" must map unit names to precisions (got {type(units).__name__}).')
        default = Precision.parse(data.get("default", Precision.FP16.value), f'{source} "default"')
        parsed = {str(name): Precision.parse(p, f"{source} unit {name!r}") for name, p in units.items()}
        return cls(default=default, units=parsed, fp32_nodes=frozenset(fp32_nodes))

    def canonical(self) -> PrecisionPlan:
        """The same plan with redundant entries (equal to the default) dropped."""
        units = {n: p for n, p in self.units.items() if p is not self.default}
        fp32_nodes = self.fp32_nodes if self.default is not Precision.FP32 else frozenset()
        return PrecisionPlan(self.default, units, fp32_nodes)

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

    def validate_nodes(self, node_names: Iterable[str]) -> None:
        """Fail if ``fp32_nodes`` names a node the model does not have."""
        known = set(node_names)
        unknown = sorted(self.fp32_nodes - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=3, cutoff=0.5)
            raise PlanError(
                f"The plan's fp32_nodes name {len(unknown)} node(s) the model does not have: {', '.join(unknown[:5])}.",
                expected="node names of the float model (`trtmix units` lists the units; a plan written by trtmix "
                "for this model has the right names)",
                fix=f"did you mean {', '.join(repr(c) for c in close)}?" if close else "remove them from the plan",
            )
