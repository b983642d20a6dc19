"""The plan against the engine: for each unit, the precision the engine really runs, beside the plan's.

An engine reports its layers as ``EngineLayer`` records (``trtmix.runtime.engine_report``); this module finds, for
each unit, the layer that computes its anchor node and compares precisions.  It lives above both the engines and the
plans, as Polygraphy keeps its comparator outside its backends: engines know nothing of plans.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx

from trtmix.ir.graph import GraphIndex
from trtmix.ir.units import Unit
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime.engine_report import EngineLayer, computes, engine_layers


@dataclass(frozen=True)
class UnitCheck:
    """A unit's planned precision against what the engine runs (``unknown`` when no layer names its anchor)."""

    unit: str
    planned: str
    engine: str
    layer: str | None
    exact_float: bool = True
    fused_with: tuple[str, ...] = ()  # units of another planned precision computed by the same engine layer
    primitive: str = ""  # the engine's kernel for the layer, where it says
    ms: float | None = None  # the layer's time per inference, where it was profiled

    @property
    def verified(self) -> bool:
        """True when the engine's own report shows this unit running its planned precision."""
        return self.matches and not self.fused_with

    @property
    def matches(self) -> bool:
        """True when the engine runs the planned precision (or cannot say, for a layer fusing mixed units).

        A strongly typed engine (TensorRT) keeps the graph's float types, so fp16 must run fp16.  An engine that
        chooses its own float type (OpenVINO's precision hint) is checked for INT8 against float only.  One layer
        that computes units of different planned precisions (OpenVINO's fused attention ``Subgraph``) reports one
        precision for all of them: not a mismatch, but not verified either (``fused_with`` names the others).
        """
        if self.fused_with:
            return True
        if self.exact_float:
            return self.planned == self.engine
        return (self.planned == "int8") == (self.engine == "int8") and self.engine != "unknown"


def check_plan(information: Mapping[str, Any], units: list[Unit], plan: PrecisionPlan) -> list[UnitCheck]:
    """For every unit: planned precision vs the TensorRT layer that contains its anchor node."""
    return check_layers(engine_layers(information), units, plan)


def unit_layer(layers: list[EngineLayer], anchor: str, fused: tuple[str, ...] = ()) -> EngineLayer | None:
    """The layer that computes ``anchor``: one naming it (or a node ``fused`` into its unit) or a derived name.

    A derived name is ``anchor/...``; names of trtmix's own Q/DQ nodes (``anchor/weight/...``) do not count.  Among
    several layers, a conv or matmul layer decides, so a bias add, a reorder or a weight transpose split off the same
    node does not: OpenVINO names MiniLM's dense layers after their bias Add, and a ``MatMul/transpose_b`` layer
    after the MatMul.
    """
    names = (anchor, *fused)

    def names_it(node: str) -> bool:
        return node in names or (node.startswith(f"{anchor}/") and "Linear" not in node and "/weight" not in node)

    candidates = [layer for layer in layers if any(names_it(node) for node in layer.onnx_nodes)]
    compute = [layer for layer in candidates if computes(layer.kind)]
    return (compute or candidates or [None])[0]


def _named_after(layers: list[EngineLayer], tensor: str) -> EngineLayer | None:
    """A compute layer named after ``tensor`` (OpenVINO names a graph's last layer after its output tensor)."""
    return next((layer for layer in layers if tensor in layer.onnx_nodes and computes(layer.kind)), None)


def check_layers(
    layers: list[EngineLayer],
    units: list[Unit],
    plan: PrecisionPlan,
    exact_float: bool = True,
    consumers: Mapping[str, list[str]] | None = None,
    node_outputs: Mapping[str, list[str]] | None = None,
) -> list[UnitCheck]:
    """For every unit: planned precision vs the precision of the engine layer that computes its anchor node.

    An engine may fuse a node away under another name: OpenVINO names a graph's last layer after its output tensor,
    its attention ``Subgraph`` drops the Q·Kᵀ MatMul's name, and a conv fused with the Mul/Add chain after it
    (Paddle2ONNX's unfolded scale and shift) takes the name of a node down that chain.  The unit is then located by a
    compute layer named after its output tensor, or through ``consumers`` (tensor → reading node names) and
    ``node_outputs`` (node → its output tensors) by the compute layer of a node up to ``FUSION_DEPTH`` steps
    downstream, through nodes that are no other unit's anchor.  A unit found nowhere is ``not found``, never a
    mismatch.
    """
    anchors = {unit.name for unit in units}
    located = {}
    for unit in units:
        layer = unit_layer(layers, unit.name, tuple(unit.nodes)) or _named_after(layers, unit.output)
        if layer is None and consumers:
            layer = _downstream_layer(layers, unit.output, anchors, consumers, node_outputs or {})
        located[unit.name] = layer
    checks = []
    for unit in units:
        layer, planned = located[unit.name], plan.precision_of(unit.name)
        fused = tuple(other for other, at in located.items() if layer is not None and at is layer
                      and other != unit.name and plan.precision_of(other) is not planned)  # fmt: skip
        checks.append(UnitCheck(unit.name, planned.value, layer.precision if layer else "unknown",
                                layer.name if layer else None, exact_float, fused,
                                layer.primitive if layer else "", layer.ms if layer else None))  # fmt: skip
    return checks


FUSION_DEPTH = 4


def _downstream_layer(
    layers: list[EngineLayer], tensor: str, anchors: set[str], consumers: Mapping[str, list[str]],
    node_outputs: Mapping[str, list[str]],
) -> EngineLayer | None:  # fmt: skip
    """The layer computing the first non-anchor node downstream of ``tensor`` that an engine layer names.

    The direct reader may be named by any layer (a bias add split off); further down only a compute layer counts.
    """
    frontier = [tensor]
    for depth in range(FUSION_DEPTH):
        readers = [n for t in frontier for n in consumers.get(t, []) if n not in anchors]
        for reader in readers:
            found = unit_layer(layers, reader)
            if found is not None and (depth == 0 or computes(found.kind)):
                return found
        frontier = [t for reader in readers for t in node_outputs.get(reader, [])]
    return None


def mismatches(checks: list[UnitCheck]) -> list[UnitCheck]:
    """The units whose engine layer runs another precision than the plan's (units not found are not among them)."""
    return [check for check in checks if check.layer is not None and not check.matches]


def not_found(checks: list[UnitCheck]) -> list[UnitCheck]:
    """The units no engine layer could be traced to: neither verified nor a mismatch."""
    return [check for check in checks if check.layer is None]


def describe(checks: list[UnitCheck]) -> str:
    """One line per mismatching unit, naming the ONNX node, the plan and the engine layer."""
    return "\n".join(
        f"{c.unit}: planned {c.planned}, engine runs {c.engine} (layer {c.layer!r})" for c in mismatches(checks)
    )


def topology(model: onnx.ModelProto) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Tensor → the nodes reading it, and node → its outputs: what ``check_layers`` follows downstream of a unit."""
    index = GraphIndex(model)
    consumers = {tensor: [node.name for node in nodes] for tensor, nodes in index.consumers.items()}
    return consumers, {node.name: list(node.output) for node in model.graph.node}
