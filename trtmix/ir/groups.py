"""Unit groups: units whose precision is decided together because splitting them keeps a quantize boundary alive.

Two patterns, both from how an engine lays out INT8 kernels:

* **shared input**: units that read the same activation tensor (a transformer's Q/K/V projections read one
  LayerNorm output).  With all of them INT8 the tensor is quantized once; with only some, the engine keeps both the
  quantized and the float copy and a conversion between them.
* **chain**: a unit whose output is read by nothing but the next unit's anchor (conv → conv in a bottleneck, with
  the activation fused into the first).  With both INT8 the first writes int8 straight into the second; split, the
  tensor leaves one kernel in one type and is converted for the next.

A group is one step of the bisection: its members flip together.  Groups are capped at ``MAX_GROUP`` members, so a
long chain (a network with no residual adds) does not become one step that takes away the bisection's resolution.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx

from trtmix.ir.graph import GraphIndex
from trtmix.ir.units import KIND_ATTENTION, Unit

MAX_GROUP = 4
SHARED_INPUT = "shared input"
CHAIN = "chain"


@dataclass(frozen=True)
class UnitGroup:
    """Units flipped together.

    Attributes:
        name: the first member's unit name (in graph order); a group of one is named as its unit.
        members: unit names in graph order.
        reasons: which patterns joined them (``shared input``, ``chain``); empty for a group of one.
    """

    name: str
    members: tuple[str, ...]
    reasons: tuple[str, ...] = ()


def find_groups(units: list[Unit], model: onnx.ModelProto, max_group: int = MAX_GROUP) -> list[UnitGroup]:
    """Every unit in exactly one group, groups in the graph order of their first member."""
    position = {unit.name: i for i, unit in enumerate(units)}
    parent = list(range(len(units)))
    reasons: dict[int, set[str]] = defaultdict(set)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    size = [1] * len(units)
    for a, b, reason in _links(units, model):
        first, second = root(position[a]), root(position[b])
        if first == second or size[first] + size[second] > max_group:
            continue
        low, high = sorted((first, second))
        parent[high], size[low] = low, size[low] + size[high]
        reasons[low] |= reasons.pop(high, set()) | {reason}
    members: dict[int, list[str]] = defaultdict(list)
    for i, unit in enumerate(units):
        members[root(i)].append(unit.name)
    return [UnitGroup(names[0], tuple(names), tuple(sorted(reasons.get(r, ())))) for r, names in members.items()]


def _links(units: list[Unit], model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """Pairs of units that share an input, then pairs that form a chain, each in graph order."""
    index = GraphIndex(model)
    by_input: dict[str, list[str]] = defaultdict(list)
    anchors = {}
    for unit in units:
        if unit.kind != KIND_ATTENTION:
            by_input[unit.inputs[0]].append(unit.name)
            anchors[unit.nodes[0]] = unit
    shared = [(names[0], other, SHARED_INPUT) for names in by_input.values() for other in names[1:]]
    chains = []
    for unit in units:
        follower = index.sole_consumer(unit.output)
        successor = anchors.get(follower.name) if follower is not None else None
        if successor is not None and successor.inputs[0] == unit.output:
            chains.append((unit.name, successor.name, CHAIN))
    return shared + chains


def describe_groups(groups: list[UnitGroup]) -> str:
    """One line: how many groups, how many of them hold several units, and why."""
    multi = [g for g in groups if len(g.members) > 1]
    units = sum(len(g.members) for g in groups)
    by_reason = defaultdict(int)
    for group in multi:
        by_reason[" + ".join(group.reasons)] += 1
    why = ", ".join(f"{count} by {reason}" for reason, count in sorted(by_reason.items()))
    return f"{units} units in {len(groups)} steps: {len(multi)} groups of several units" + (f" ({why})" if why else "")
