"""What each unit costs in each precision, from an engine's own per-layer profile of two builds.

The all-high and the all-INT8 builds are profiled layer by layer (OpenVINO's ``PERF_COUNT``, ONNX Runtime's
profiler, TensorRT's ``IProfiler``: each backend turns its profile into ``EngineLayer`` records with times). A
layer's time goes to the units whose ONNX nodes it computes: a unit's own nodes, plus the Q/DQ and Cast nodes that
exist because of it (those that feed it). A layer computing several units' nodes (OpenVINO's attention
``Subgraph``) splits its time evenly among them; a layer naming no unit node (graph I/O casts, layout transposes) is
the rest of the graph. A unit no layer names in one of the builds is ``unattributed``: its saving falls back to its
share of MACs in what the attributed units leave unexplained, and the job warns with its name.

The sum of savings predicts any plan's latency (``LatencyModel.predict``). That additive model is a guide for the
``gain`` ordering, never a measurement: the search ranks probes by measured latency only, and the report prints each
probe's prediction beside its measurement, with the error distribution.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from trtmix.ir.graph import GraphIndex
from trtmix.ir.units import Unit
from trtmix.runtime.engine_report import EngineLayer

PASS_THROUGH = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast"})
ENGINE_SUFFIX = re.compile(r"(_token_\d+|_nchwc)+$")  # ONNX Runtime: <node>_token_<n> for fusions, <tensor>_nchwc


@dataclass(frozen=True)
class UnitLatency:
    """One unit's profiled time in the all-high and the all-INT8 build (None: no layer named it there)."""

    high_ms: float | None
    int8_ms: float | None

    @property
    def attributed(self) -> bool:
        """True when both builds' profiles named the unit."""
        return self.high_ms is not None and self.int8_ms is not None


@dataclass
class LatencyModel:
    """Per-unit savings (ms, in profile time) and the profiled totals they are fractions of."""

    units: dict[str, UnitLatency]
    savings_ms: dict[str, float]
    high_total_ms: float
    int8_total_ms: float
    unattributed: list[str] = field(default_factory=list)

    def predict(self, int8_units: Iterable[str], measured_high_ms: float) -> float:
        """The latency the additive model predicts for a plan, scaled to the measured all-high latency."""
        saved = sum(self.savings_ms.get(name, 0.0) for name in int8_units)
        return measured_high_ms * (1.0 - saved / self.high_total_ms) if self.high_total_ms > 0 else measured_high_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the journal caches it)."""
        return {"units": {n: asdict(u) for n, u in self.units.items()}, "savings_ms": self.savings_ms,
                "high_total_ms": self.high_total_ms, "int8_total_ms": self.int8_total_ms,
                "unattributed": self.unattributed}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        """Inverse of ``to_dict``."""
        units = {name: UnitLatency(**value) for name, value in data["units"].items()}
        return cls(units, dict(data["savings_ms"]), data["high_total_ms"], data["int8_total_ms"],
                   list(data.get("unattributed", [])))  # fmt: skip


def node_owners(graph: onnx.ModelProto, units: list[Unit]) -> dict[str, tuple[str, ...]]:
    """ONNX node (and tensor) name → the units it exists for.

    A unit's own nodes; Q/DQ/Cast chains that feed units; a Cast chain after a unit that feeds none (the fp32 graph
    output). Engines name layers after nodes or after the tensors they produce (OpenVINO names the layer computing
    the graph output after it), so each owned node's output tensors are keys too.
    """
    owner_of = {node: unit.name for unit in units for node in unit.nodes}
    index = GraphIndex(graph)
    owners: dict[str, tuple[str, ...]] = {name: (unit,) for name, unit in owner_of.items()}
    for node in graph.graph.node:
        if node.op_type in PASS_THROUGH and node.name not in owners:
            found = _units_fed(node, index, owner_of) or _unit_before(node, index, owner_of)
            if found:
                owners[node.name] = found
    for node in graph.graph.node:
        for tensor in node.output:
            if node.name in owners and tensor not in owners:
                owners[tensor] = owners[node.name]
    return owners


def _unit_before(node: onnx.NodeProto, index: GraphIndex, owner_of: dict[str, str]) -> tuple[str, ...]:
    """The unit whose output reaches ``node`` through Q/DQ/Cast nodes only (none: empty)."""
    current: onnx.NodeProto | None = node
    while current is not None and current.input:
        producer = index.producer.get(current.input[0])
        if producer is None:
            return ()
        if producer.name in owner_of:
            return (owner_of[producer.name],)
        current = producer if producer.op_type in PASS_THROUGH else None
    return ()


def _units_fed(node: onnx.NodeProto, index: GraphIndex, owner_of: dict[str, str]) -> tuple[str, ...]:
    """The units reached from ``node`` through Q/DQ/Cast nodes only."""
    found: set[str] = set()
    frontier, seen = [node], set()
    while frontier:
        current = frontier.pop()
        for output in current.output:
            for reader in index.consumers.get(output, []):
                if reader.name in owner_of:
                    found.add(owner_of[reader.name])
                elif reader.op_type in PASS_THROUGH and reader.name not in seen:
                    seen.add(reader.name)
                    frontier.append(reader)
    return tuple(sorted(found))


def attribute(layers: list[EngineLayer], owners: dict[str, tuple[str, ...]]) -> tuple[dict[str, float], float, float]:
    """Each unit's share of the profiled time, the time of the rest of the graph, and the total."""
    per_unit: dict[str, float] = defaultdict(float)
    rest = total = 0.0
    for layer in layers:
        if layer.ms is None:
            continue
        total += layer.ms
        units = sorted({u for node in layer.onnx_nodes for u in owners.get(_graph_name(node, owners), ())})
        if not units:
            rest += layer.ms
            continue
        for unit in units:
            per_unit[unit] += layer.ms / len(units)
    return dict(per_unit), rest, total


def _graph_name(node: str, owners: dict[str, tuple[str, ...]]) -> str:
    """The compiled graph's name for an engine's node name.

    ONNX Runtime appends ``_token_<n>`` to the nodes its fusions make; OpenVINO appends path segments to the node it
    split (``/fc/Gemm/WithoutBiases/DequantizationMultiply``), so trailing segments are dropped until a known name is
    left.
    """
    if node in owners:
        return node
    candidate = ENGINE_SUFFIX.sub("", node)
    while candidate not in owners and "/" in candidate.strip("/"):
        candidate = candidate.rsplit("/", 1)[0]
    return candidate


def latency_model(
    high: tuple[list[EngineLayer], onnx.ModelProto], int8: tuple[list[EngineLayer], onnx.ModelProto], units: list[Unit]
) -> LatencyModel:
    """The per-unit model from the all-high and all-INT8 builds' (profiled layers, compiled graph)."""
    high_ms, _, high_total = attribute(high[0], node_owners(high[1], units))
    int8_ms, _, int8_total = attribute(int8[0], node_owners(int8[1], units))
    table = {u.name: UnitLatency(_rounded(high_ms.get(u.name)), _rounded(int8_ms.get(u.name))) for u in units}
    savings = {name: (lat.high_ms or 0.0) - (lat.int8_ms or 0.0) for name, lat in table.items() if lat.attributed}
    unattributed = [u for u in units if not table[u.name].attributed]
    unexplained = max(high_total - int8_total - sum(savings.values()), 0.0)
    macs = sum(u.macs for u in unattributed) or 1
    for unit in unattributed:  # the MAC share of what the attributed units do not explain
        savings[unit.name] = unexplained * unit.macs / macs
    return LatencyModel(table, savings, high_total, int8_total, [u.name for u in unattributed])


def prediction_errors(pairs: list[tuple[float, float]]) -> dict[str, float] | None:
    """Relative error of predicted vs measured latency over probes: median, max and the mean signed error."""
    if not pairs:
        return None
    errors = np.array([(predicted - measured) / measured for predicted, measured in pairs if measured > 0])
    if errors.size == 0:
        return None
    return {"median_abs": float(np.median(np.abs(errors))), "max_abs": float(np.abs(errors).max()),
            "mean": float(errors.mean()), "probes": int(errors.size)}  # fmt: skip


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
