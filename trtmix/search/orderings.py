"""Orderings of units, least sensitive first: what the bisection walks along.

* ``kl`` — measured: each unit alone in INT8 (the search's flavour), the rest float, on calibration data; the
  distance of the outputs to the float model's (KL for classifiers, 1 − cosine for embeddings).  One compile and
  one short run per unit.  It sees activation quantization and fusion effects; it is ``compile``'s default, on the
  paper benchmark's evidence (README).
* ``noise`` — data-free: relative weight quantization noise ‖ΔW‖² / ‖W‖², ΔW from exactly the quantizer the
  job's ``compile`` writes (``trtmix.quant.weights``: its levels, smoothing and weight ranges); units without a
  weight (attention) are placed at the median.
* ``random`` — a seeded permutation, the baseline any real ordering must beat; ``random-N`` uses seed N.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from trtmix import registry
from trtmix.errors import TrtmixError
from trtmix.ir.graph import GraphIndex
from trtmix.ir.groups import UnitGroup
from trtmix.ir.units import Unit
from trtmix.quant.weights import WeightQuantizer
from trtmix.registry import is_random_ordering


def order_units(
    name: str,
    units: list[Unit],
    model: onnx.ModelProto,
    single_unit_divergence: Callable[[Unit], float] | None = None,
    seed: int = 0,
    quantizer: WeightQuantizer | None = None,
) -> tuple[list[str], dict[str, float]]:
    """Unit names least sensitive first, and the score of each (lower = less sensitive).

    ``quantizer``: the job's weight quantizer, which ``noise`` measures (required by it).
    """
    if name == "random" or is_random_ordering(name):
        seed = int(name.split("-", 1)[1]) if is_random_ordering(name) else seed
        permutation = np.random.default_rng(seed).permutation(len(units))
        scores = {units[i].name: float(rank) for rank, i in enumerate(permutation)}
    elif name == "noise":
        if quantizer is None:
            raise TrtmixError("The noise ordering needs the job's weight quantizer.")
        scores = _weight_noise(units, model, quantizer)
    elif name == "kl":
        if single_unit_divergence is None:
            raise TrtmixError("The kl ordering needs a way to measure single-unit divergence.")
        scores = {unit.name: single_unit_divergence(unit) for unit in units}
    else:
        raise TrtmixError(f"Unknown ordering {name!r}.", expected=f"one of {', '.join(registry.ONNX_ORDERINGS)}")
    return order_by_score(scores, [unit.name for unit in units]), scores


SAVING_FLOOR_MS = 1e-6  # a unit that saves nothing (or costs time) in INT8 goes after every unit that saves


def gain_order(
    divergence: dict[str, float], savings_ms: dict[str, float], names: list[str]
) -> tuple[list[str], dict[str, float]]:
    """``gain``: divergence per millisecond saved, lowest first, so k INT8 units are the best k by accuracy per ms.

    Units that save nothing get divergence / 1e-6 ms: after every unit that saves, among themselves by divergence.
    """
    scores = {name: divergence[name] / max(savings_ms.get(name, 0.0), SAVING_FLOOR_MS) for name in names}
    return order_by_score(scores, names), scores


def order_groups(unit_order: list[str], groups: list[UnitGroup]) -> tuple[list[str], dict[str, float]]:
    """Groups in the order of a unit ordering: each where its most sensitive member stands (score: that position).

    A group flips when its last member would have, so no unit goes INT8 earlier than its own ordering put it.
    """
    position = {name: i for i, name in enumerate(unit_order)}
    scores = {group.name: float(max(position[m] for m in group.members)) for group in groups}
    return sorted(scores, key=lambda name: scores[name]), scores


def order_by_score(scores: dict[str, float], names: list[str]) -> list[str]:
    """``names`` lowest score first, ties in the given order."""
    position = {name: i for i, name in enumerate(names)}
    return sorted(names, key=lambda n: (scores[n], position[n]))


def _weight_noise(units: list[Unit], model: onnx.ModelProto, quantizer: WeightQuantizer) -> dict[str, float]:
    """‖ΔW‖² / ‖W‖² per unit with the job's quantizer; units without a weight at the median."""
    index = GraphIndex(model)
    scores: dict[str, float] = {}
    for unit in units:
        weight = index.constant_value(unit.weight) if unit.weight else None
        if weight is None or unit.weight_axis is None:
            continue
        noise = float((quantizer.quantize(unit, weight).effective_delta() ** 2).sum())
        scores[unit.name] = noise / max(float((weight.astype(np.float64) ** 2).sum()), 1e-30)
    median = float(np.median(list(scores.values()))) if scores else 0.0
    return {unit.name: scores.get(unit.name, median) for unit in units}
