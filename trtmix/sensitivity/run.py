"""Compute sensitivities by any of the named methods, and the orderings (least sensitive first) they imply.

Methods: ``hessian`` (HAWQ-V2 style: trace × weight noise + activation term), ``augmented-a`` / ``augmented-b`` /
``augmented-c`` (the Hessian score combined by rank with inter-layer variant A, B or C), and the ablation baselines
``kl`` (single unit measured), ``noise`` (weight noise only) and ``random``.

Units the Hessian cannot score (attention MatMuls have no weight; a weight that cannot be mapped to torch) are
placed by the measured ``kl`` score: their percentile among all units' ``kl`` scores sits beside the percentile of
the others' Hessian-based score.  They are listed, never dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import onnx
import torch

from trtmix import registry
from trtmix.calibration.ranges import Ranges
from trtmix.data.recipes import checked_batches, model_input_specs
from trtmix.ir.units import Unit
from trtmix.progress import bar as progress_bar
from trtmix.quant.flavours import get_flavour
from trtmix.quant.weights import WeightQuantizer
from trtmix.search.orderings import order_units
from trtmix.sensitivity.hessian import (
    SensitivityError,
    TorchProblem,
    activation_term,
    activation_traces,
    hutchinson_traces,
    weight_term,
)
from trtmix.sensitivity.interlayer import combine_by_rank, cross_layer_terms, graph_neighbours, neighbour_terms, ranks
from trtmix.sensitivity.mapping import map_units
from trtmix.sensitivity.measured import ScoringJob, TaskRunner, context_scores, single_unit_scores

LOG = logging.getLogger(__name__)
METHODS = tuple(registry.SENSITIVITY_METHODS)
TORCH_METHODS = frozenset(registry.TORCH_SENSITIVITY)
LOSS_FOR_METRIC = {"agreement": "kl", "cosine": "mse", "sample-cosine": "mse", "accuracy": "ce", "sequence": "kl",
                   "iou": "mse", "psnr": "mse", "mse": "mse"}  # fmt: skip


@dataclass(frozen=True)
class SensitivitySettings:
    """What to compute and how.

    Methods, the metric (which picks the loss), the flavour of the measured variants, calibration batches used,
    the Hutchinson probe limit and tolerance, the seed, and the rank-combination weight.
    """

    methods: tuple[str, ...] = ("augmented-a",)
    metric: str = "auto"
    flavour: str = "tensorrt"
    batches: int = 4
    max_probes: int = 20
    tol: float = 0.05
    seed: int = 0
    augment_weight: float = 0.5

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise SensitivityError(f"Unknown sensitivity method(s) {', '.join(unknown)}.", expected=", ".join(METHODS))
        if not 0.0 <= self.augment_weight <= 1.0:
            raise SensitivityError(f"--augment-weight must be within [0, 1] (got {self.augment_weight}).")


def compute_sensitivity(
    model: onnx.ModelProto,
    units: list[Unit],
    ranges: Ranges,
    feeds: list[dict[str, np.ndarray]],
    settings: SensitivitySettings,
    torch_model: torch.nn.Module | None = None,
    labels: list[np.ndarray] | None = None,
    progress: bool = True,
    kl_scores: dict[str, float] | None = None,
    cluster: TaskRunner | None = None,
    quantizer: WeightQuantizer | None = None,
) -> dict[str, Any]:
    """Scores, ranks and orderings of every requested method, with timings and the units the Hessian could not score.

    ``kl_scores``, when the caller already measured them on the same feeds (``trtmix compile`` does for its ``kl``
    ordering), are used instead of measuring every unit again; ``timings_seconds`` then has no ``kl`` entry.
    ``quantizer``: the INT8 quantizer every method scores, as ``compile`` writes it (the job's flavour object,
    default precision and FP32 nodes over these same ``ranges``); default: ``settings.flavour``'s over ``ranges``.
    The Hessian's ΔW and ``noise`` take their weights from it, and the measured methods compile with its flavour.
    """
    quantizer = quantizer or WeightQuantizer(ranges, get_flavour(settings.flavour))
    scores: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    feeds = list(checked_batches(feeds, model, limit=settings.batches))
    if settings.metric == "auto":  # the metric the float model's first output fits
        settings = replace(settings, metric=_auto_metric(model, feeds))
    wanted = set(settings.methods)
    needs_torch = bool(wanted & TORCH_METHODS)
    needs_measured = (("kl" in wanted or needs_torch) and kl_scores is None) or "augmented-b" in wanted
    if needs_torch and torch_model is None:
        raise SensitivityError(
            "The Hessian-based methods need the torch model, but only an ONNX file was given.",
            fix="pass MODULE:FUNCTION instead of the .onnx, or use --method kl, noise or random",
        )
    # kl: one switched graph, with the quantizer's flavour object (its weight bits), default and FP32 nodes
    job = ScoringJob(model, units, ranges, quantizer.flavour, settings.metric, feeds, quantizer.default,
                     fp32_nodes=quantizer.fp32_nodes)  # fmt: skip
    if kl_scores is not None:
        scores["kl"] = dict(kl_scores)
    elif needs_measured:
        scores["kl"] = _timed(timings, "kl", lambda: single_unit_scores(job, units, cluster, progress))
    unmapped: dict[str, str] = {}
    if needs_torch:
        unmapped = _torch_methods(model, units, ranges, feeds, settings, torch_model, labels, scores, timings, progress,
                                  quantizer)  # fmt: skip
    if "augmented-b" in wanted:
        exact = replace(job, exact=True)  # B scores whole-graph plans: a compile per plan
        scores["b"] = _timed(timings, "b", lambda: context_scores(exact, units, cluster, progress))
        scores["augmented-b"] = combine_by_rank(scores["hessian"], scores["b"], settings.augment_weight)
    for name in ("noise", "random"):
        if name in wanted:
            scores[name] = _timed(
                timings, name, lambda n=name: order_units(n, units, model, seed=settings.seed, quantizer=quantizer)[1]
            )
    orderings = {method: _ordering(scores[method], scores.get("kl"), units) for method in settings.methods}
    return {
        "settings": asdict(settings),
        "units": {
            unit.name: {
                "kind": unit.kind,
                "module": unit.module,
                "scores": {method: values[unit.name] for method, values in scores.items() if unit.name in values},
                "ranks": {method: orderings[method].index(unit.name) + 1 for method in orderings},
            }
            for unit in units
        },
        "orderings": orderings,
        "timings_seconds": timings,
        "unscored_by_hessian": unmapped,
    }


def _torch_methods(
    model: onnx.ModelProto,
    units: list[Unit],
    ranges: Ranges,
    feeds: list[dict[str, np.ndarray]],
    settings: SensitivitySettings,
    torch_model: torch.nn.Module | None,
    labels: list[np.ndarray] | None,
    scores: dict[str, dict[str, float]],
    timings: dict[str, float],
    progress: bool,
    quantizer: WeightQuantizer,
) -> dict[str, str]:
    """The Hessian-based scores into ``scores`` (ΔW from ``quantizer``); returns the units they could not score."""
    if torch_model is None:
        raise SensitivityError(
            "The Hessian-based methods need the torch model, but only an ONNX file was given.",
            fix="pass MODULE:FUNCTION instead of the .onnx, or use --method kl, noise or random",
        )
    mapping = map_units(units, model, torch_model)
    if not mapping.maps:
        raise SensitivityError("No unit's weight could be mapped to a torch parameter.", expected=str(mapping.unmapped))
    for name, reason in mapping.unmapped.items():
        LOG.info("unit %s is placed by its measured score: %s", name, reason)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_model = torch_model.to(device)
    problem = _problem(model, torch_model, mapping, feeds, settings, labels, device)
    deltas = {name: torch.from_numpy(delta).to(device)
              for name, delta in weight_deltas(model, units, mapping, quantizer).items()}  # fmt: skip
    generator = torch.Generator().manual_seed(settings.seed)
    bar = progress_bar(total=settings.max_probes, desc="hessian probes", disable=not progress, unit="HVP")
    start = time.perf_counter()
    traces = hutchinson_traces(problem, generator, settings.max_probes, settings.tol, progress=lambda n: bar.update(1))
    bar.close()
    modules = dict(torch_model.named_modules())
    unit_modules = {name: modules[weight_map.parameter.rpartition(".")[0]] for name, weight_map in mapping.maps.items()}
    act_traces = activation_traces(problem, unit_modules, generator)
    unit_by_name = {u.name: u for u in units}
    act = {
        name: activation_term(act_traces[name], ranges.tensors[unit_by_name[name].inputs[0]].amax) for name in deltas
    }
    scores["hessian"] = {name: weight_term(traces[name], deltas[name]) + act[name] for name in deltas}
    timings["hessian"] = time.perf_counter() - start
    scores["hessian_trace"] = {name: traces[name].mean for name in deltas}
    scores["hessian_trace_stderr"] = {name: traces[name].stderr for name in deltas}
    timings["hessian_probes"] = float(max(trace.probes for trace in traces.values()))
    wanted = set(settings.methods)
    batch_indices = list(range(len(problem.batches)))
    if "augmented-a" in wanted:
        a = _timed(timings, "a", lambda: cross_layer_terms(problem, deltas, batch_indices))
        scores["a"] = {name: a[name] + act[name] for name in a}
        scores["augmented-a"] = combine_by_rank(scores["hessian"], scores["a"], settings.augment_weight)
    if "augmented-c" in wanted:
        neighbours = graph_neighbours(model, units)
        tick = _ticker(progress, len(deltas), "C")
        c = _timed(timings, "c", lambda: neighbour_terms(problem, deltas, neighbours, batch_indices, tick))
        scores["c"] = {name: c[name] + act[name] for name in c}
        scores["augmented-c"] = combine_by_rank(scores["hessian"], scores["c"], settings.augment_weight)
    return {name: reason for name, reason in mapping.unmapped.items()}


def _auto_metric(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> str:
    """``--metric auto``: the built-in metric the float model's first output fits (on the first feed)."""
    from trtmix.evaluate import choose_metric
    from trtmix.runtime.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(model, optimize=True) as runner:
        output = runner.infer(feeds[0])[0]
    metric, why = choose_metric(output, model.graph.output[0].name)
    LOG.info("metric auto: %s, for %s", metric, why)
    return metric


def _problem(model, torch_model, mapping, feeds, settings, labels, device) -> TorchProblem:  # type: ignore[no-untyped-def]
    names = list(model_input_specs(model))
    batches = [tuple(torch.from_numpy(np.asarray(feed[n])).to(device) for n in names) for feed in feeds]
    parameters = dict(torch_model.named_parameters())
    unit_parameters = {unit: parameters[m.parameter] for unit, m in mapping.maps.items()}
    torch_labels = [torch.from_numpy(np.asarray(y)).to(device) for y in labels] if labels is not None else None
    loss = LOSS_FOR_METRIC[settings.metric] if settings.metric != "accuracy" or labels is not None else "kl"
    return TorchProblem(torch_model, unit_parameters, batches, loss, torch_labels)


def weight_deltas(
    model: onnx.ModelProto, units: list[Unit], mapping: Any, quantizer: WeightQuantizer
) -> dict[str, np.ndarray]:
    """ΔW = Q(W) − W per mapped unit, from the quantizer ``compile`` writes, in each torch parameter's coordinates.

    Where the unit is smoothed, ΔW is DQ(Q(W·s))/s − W: the change of the weight the unit applies to X.
    """
    from trtmix.ir.graph import GraphIndex

    index = GraphIndex(model)
    deltas = {}
    for unit in units:
        if unit.name not in mapping.maps or unit.weight_axis is None:
            continue
        weight = index.constant_value(unit.weight)  # type: ignore[arg-type]
        delta = mapping.maps[unit.name].to_torch(quantizer.quantize(unit, weight).effective_delta())  # type: ignore[arg-type]
        deltas[unit.name] = np.ascontiguousarray(delta, dtype=np.float32)
    return deltas


def _ordering(scores: dict[str, float], fallback: dict[str, float] | None, units: list[Unit]) -> list[str]:
    """Least sensitive first; units missing from ``scores`` are placed by their ``fallback`` percentile."""
    primary = ranks(scores)
    secondary = ranks(fallback) if fallback else {}
    position = {unit.name: i for i, unit in enumerate(units)}
    key = {u.name: primary.get(u.name, secondary.get(u.name, 1.0)) for u in units}
    return sorted(key, key=lambda name: (key[name], scores.get(name, np.inf), position[name]))


def _timed(timings: dict[str, float], name: str, action: Callable[[], dict[str, float]]) -> dict[str, float]:
    start = time.perf_counter()
    result = action()
    timings[name] = time.perf_counter() - start
    return result


def _ticker(enabled: bool, total: int, label: str) -> Callable[[], None]:
    bar = progress_bar(total=total, desc=f"sensitivity {label}", disable=not enabled, unit="unit", leave=False)
    return lambda: bar.update(1)
