"""The inter-layer augmentation of the Hessian score, as named variants, and how scores combine.

* A — cross-layer second-order term: one extra HVP with the whole-model quantization perturbation ΔW gives
  s_u = ½ ⟨ΔW_u, (H ΔW)_u⟩ = ½ (ΔW_uᵀ H_uu ΔW_u + Σ_{j≠u} ΔW_uᵀ H_uj ΔW_j); summed over units it is exactly
  ½ ΔWᵀ H ΔW, the second-order loss change of quantizing everything.
* B — measured context sensitivity on compiled graphs (``trtmix.sensitivity.measured``).
* C — pairwise interaction with graph neighbours: one HVP per unit v with ΔW_v alone gives ⟨ΔW_u, (H ΔW_v)_u⟩ for
  every u; s_u = ½ (ΔW_uᵀ H_uu ΔW_u + Σ_{v ∈ N(u)} ΔW_uᵀ H_uv ΔW_v), N(u) the units directly up- or downstream of u
  (connected through non-unit nodes only).

Each variant is combined with the Hessian score by rank (``combine_by_rank``): the augmented score of a unit is
``weight × rank_hessian + (1 − weight) × rank_variant`` with ranks scaled to [0, 1]; a unit scored by only one of
the two (an attention MatMul has no weight, so no Hessian score) takes that one's rank.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import onnx
import torch

from trtmix.ir.graph import GraphIndex
from trtmix.ir.units import Unit
from trtmix.sensitivity.hessian import TorchProblem


def cross_layer_terms(problem: TorchProblem, deltas: dict[str, torch.Tensor], batches: list[int]) -> dict[str, float]:
    """Variant A: ½ ⟨ΔW_u, (H ΔW)_u⟩ for every unit."""
    product = problem.hvp(deltas, batches)
    return {name: 0.5 * float((deltas[name].double() * product[name].double()).sum()) for name in deltas}


def neighbour_terms(
    problem: TorchProblem,
    deltas: dict[str, torch.Tensor],
    neighbours: dict[str, set[str]],
    batches: list[int],
    tick: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Variant C: ½ (diagonal block + interactions with graph neighbours), one HVP per unit."""
    scores: dict[str, float] = defaultdict(float)
    for source in deltas:
        product = problem.hvp({source: deltas[source]}, batches)
        for target in {source} | (neighbours.get(source, set()) & set(deltas)):
            scores[target] += 0.5 * float((deltas[target].double() * product[target].double()).sum())
        tick()
    return dict(scores)


def graph_neighbours(model: onnx.ModelProto, units: list[Unit]) -> dict[str, set[str]]:
    """Units reachable from each unit's output through non-unit nodes only, made symmetric."""
    index = GraphIndex(model)
    anchor_of = {unit.name: unit for unit in units}
    node_unit = {node: unit.name for unit in units for node in unit.nodes}
    found: dict[str, set[str]] = defaultdict(set)
    for unit in units:
        frontier, seen = [unit.output], set()
        while frontier:
            tensor = frontier.pop()
            for reader in index.consumers.get(tensor, []):
                owner = node_unit.get(reader.name)
                if owner is not None and owner != unit.name and reader.name == anchor_of[owner].name:
                    found[unit.name].add(owner)
                elif owner is None and reader.name not in seen:
                    seen.add(reader.name)
                    frontier.extend(reader.output)
    for unit, others in list(found.items()):
        for other in others:
            found[other].add(unit)
    return dict(found)


def ranks(scores: dict[str, float]) -> dict[str, float]:
    """Ranks scaled to [0, 1] (0 = least sensitive); ties keep their input order."""
    order = sorted(scores, key=lambda name: scores[name])
    top = max(len(order) - 1, 1)
    return {name: position / top for position, name in enumerate(order)}


def combine_by_rank(hessian: dict[str, float], variant: dict[str, float], weight: float = 0.5) -> dict[str, float]:
    """The augmented score: a weighted mean of the two rank vectors (see the module docstring)."""
    hessian_ranks, variant_ranks = ranks(hessian), ranks(variant)
    combined = {}
    for name in dict.fromkeys([*hessian, *variant]):
        if name in hessian_ranks and name in variant_ranks:
            combined[name] = weight * hessian_ranks[name] + (1 - weight) * variant_ranks[name]
        else:
            combined[name] = hessian_ranks.get(name, variant_ranks.get(name, 0.5))
    return combined
