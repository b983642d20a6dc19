"""What precision a built engine really runs each unit in, compared with the plan: one path for every engine.

Each engine turns its own report into ``EngineLayer`` records (name, type, the ONNX nodes fused into it, precision):
TensorRT from its inspector JSON (below), OpenVINO from its runtime model (``trtmix.runtime.openvino``).
``check_layers`` then finds, for each unit, the layer that computes its anchor node and compares precisions.

TensorRT input: the engine inspector's JSON
(``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` on an engine built with
``ProfilingVerbosity.DETAILED``).  Its documented layout (TensorRT developer guide, "Engine Inspector"):
``{"Layers": [{"Name": ..., "LayerType": ..., "Inputs": [{"Name", "Dimensions", "Format/Datatype"}],
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
# Layer types that compute a unit's conv or matmul (OpenVINO's and TensorRT's names, matched case-insensitively by
# substring: CaskConvolution, CaskGemmMatrixMultiply, gemm, FullyConnected, Subgraph, ...); among several layers that
# name a unit's anchor (a Gemm split into a matmul and a bias add), one of these decides.
COMPUTE_WORDS = ("conv", "gemm", "matrix", "matmul", "fullyconnected", "subgraph", "myelin")
# ``[ONNX Layer: <name>]``, or ``[ONNX Layer: <name> | Local Function: <function>]`` for nodes inside ONNX functions
ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]|]+?)\s*(?:\|\s*Local Function:[^\]]*)?\]")
DATATYPES = (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("bfloat", "bf16"), ("half", "fp16"),
             ("fp16", "fp16"), ("float", "fp32"), ("fp32", "fp32"))  # fmt: skip


@dataclass(frozen=True)
class EngineLayer:
    """One engine layer: its name, type, the ONNX nodes fused into it, and the precision of its first input."""

    name: str
    kind: str
    onnx_nodes: tuple[str, ...]
    precision: str
    primitive: str = ""  # the kernel, where the engine says (OpenVINO: e.g. brgconv_avx512_I8)
    ms: float | None = None  # time per inference, where the engine was profiled


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
        result.append(EngineLayer(name, str(layer.get("LayerType", "")), tuple(nodes), datatype(_format_text(first))))
    return result


def _format_text(tensor: Mapping[str, Any]) -> str:
    """The text that names a tensor's type: TensorRT 10's ``Format/Datatype``, or TensorRT 11's ``Datatype``.

    TensorRT 11 split the field in two (Polygraphy's inspector reads both layouts); its ``Format`` alone can name
    another type's layout, so ``Datatype`` decides when it is there.
    """
    if "Format/Datatype" in tensor:
        return str(tensor["Format/Datatype"])
    return str(tensor.get("Datatype") or tensor.get("Format") or "")


def computes(kind: str) -> bool:
    """True for a layer type that runs a conv or matmul (see ``COMPUTE_WORDS``)."""
    lowered = kind.lower()
    return any(word in lowered for word in COMPUTE_WORDS)


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
