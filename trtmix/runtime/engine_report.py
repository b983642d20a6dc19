"""What precision a built TensorRT engine really runs each unit in, compared with the plan.

Input: the engine inspector's JSON (``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` on an
engine built with ``ProfilingVerbosity.DETAILED``).  Its documented layout (TensorRT developer guide, "Engine
Inspector"): ``{"Layers": [{"Name": ..., "LayerType": ..., "Inputs": [{"Name", "Dimensions", "Format/Datatype"}],
"Outputs": [...], ...}], "Bindings": [...]}``.  A fused layer's ``Name`` joins the ONNX node names with " + ";
TensorRT 10+ also lists them in ``Metadata`` as ``[ONNX Layer: <name>]`` entries.  ``Format/Datatype`` is text such as
"Thirty-two wide channel vectorized row major Int8 format.", "Row major linear FP16 format" or "Float"; the layout
changed across versions, so the parser only relies on these keys.  Pure Python: it never imports TensorRT.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trtmix.ir.units import Unit
from trtmix.quant.plan import PrecisionPlan

BOOKKEEPING = frozenset({"Reformat", "NoOp", "Constant", "Shuffle", "Identity"})
ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
DATATYPES = (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("bfloat", "bf16"), ("half", "fp16"),
             ("fp16", "fp16"), ("float", "fp32"), ("fp32", "fp32"))  # fmt: skip


@dataclass(frozen=True)
class EngineLayer:
    """One engine layer: its name, type, the ONNX nodes fused into it, and the precision of its first input."""

    name: str
    kind: str
    onnx_nodes: tuple[str, ...]
    precision: str


@dataclass(frozen=True)
class UnitCheck:
    """A unit's planned precision against what the engine runs (``unknown`` when no layer names its anchor)."""

    unit: str
    planned: str
    engine: str
    layer: str | None

    @property
    def matches(self) -> bool:
        """True when the engine runs exactly the planned precision (a strongly typed engine keeps graph types)."""
        return self.planned == self.engine


def datatype(text: str) -> str:
    """``int8`` / ``fp16`` / ``fp32`` / ``bf16`` / ``fp8`` from a ``Format/Datatype`` string, else ``unknown``."""
    lowered = text.lower()
    for needle, name in DATATYPES:
        if needle in lowered:
            return name
    return "unknown"


def engine_layers(information: Mapping[str, Any]) -> list[EngineLayer]:
    """The compute layers of an engine (reformats, no-ops and constants left out)."""
    layers = information.get("Layers", [])
    result = []
    for layer in layers:
        if not isinstance(layer, Mapping) or layer.get("LayerType") in BOOKKEEPING:
            continue
        name = str(layer.get("Name", ""))
        nodes = ONNX_LAYER.findall(str(layer.get("Metadata", ""))) or [n.strip() for n in name.split(" + ")]
        inputs = layer.get("Inputs") or []
        first = inputs[0] if inputs and isinstance(inputs[0], Mapping) else {}
        result.append(
            EngineLayer(
                name, str(layer.get("LayerType", "")), tuple(nodes), datatype(str(first.get("Format/Datatype", "")))
            )
        )
    return result


def check_plan(information: Mapping[str, Any], units: list[Unit], plan: PrecisionPlan) -> list[UnitCheck]:
    """For every unit: planned precision vs the precision of the engine layer that contains its anchor node."""
    by_node = {node: layer for layer in engine_layers(information) for node in layer.onnx_nodes}
    checks = []
    for unit in units:
        layer = by_node.get(unit.name)
        planned = plan.precision_of(unit.name)
        checks.append(
            UnitCheck(unit.name, planned.value, layer.precision if layer else "unknown", layer.name if layer else None)
        )
    return checks


def mismatches(checks: list[UnitCheck]) -> list[UnitCheck]:
    """The units whose engine precision differs from the plan (including units the engine does not name)."""
    return [check for check in checks if not check.matches]


def describe(checks: list[UnitCheck]) -> str:
    """One line per mismatching unit, naming the ONNX node, the plan and the engine layer."""
    return "\n".join(
        f"{c.unit}: planned {c.planned}, engine runs {c.engine}"
        + (f" (layer {c.layer!r})" if c.layer else " (no engine layer names it)")
        for c in mismatches(checks)
    )
