"""The one-graph kl scorer: each switch reproduces its unit's single-unit graph, and the orderings agree."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest

from trtmix.ir.units import find_units
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import PrecisionPlan
from trtmix.quant.switched import compile_switched, switch_feeds
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner
from trtmix.sensitivity.measured import ScoringJob, single_unit_scores

from .conftest import batches_for


def _spearman(a: list[float], b: list[float]) -> float:
    ranks = [np.argsort(np.argsort(values)) for values in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


@pytest.mark.parametrize("flavour", ["tensorrt", "ort-cpu"])
@pytest.mark.parametrize("name", ["convnet", "transformer"])
def test_each_switch_computes_its_single_unit_graph(calibrated: dict, name: str, flavour: str) -> None:
    model, ranges = calibrated[name]
    units = find_units(model)
    graph, switches = compile_switched(model, units, ranges, flavour)
    onnx.checker.check_model(graph)
    assert len(switches) == len(units)
    feed = batches_for(name, 1, seed=5)[0]
    with OnnxRuntimeRunner(graph, threads=1, optimize=True) as runner:
        switched = {u.name: runner.infer({**feed, **switch_feeds(switches, u.name)})[0] for u in units}
        all_off = runner.infer({**feed, **switch_feeds(switches, None)})[0]
    high = compile_plan(model, PrecisionPlan(), ranges, flavour)
    with OnnxRuntimeRunner(high, threads=1, optimize=False) as runner:
        np.testing.assert_allclose(all_off, runner.infer(feed)[0], rtol=0, atol=1e-3 * np.abs(all_off).max())
    for unit in units:
        exact = compile_plan(model, PrecisionPlan.with_int8([unit.name]), ranges, flavour)
        with OnnxRuntimeRunner(exact, threads=1, optimize=False) as runner:
            expected = runner.infer(feed)[0]
        assert not np.allclose(expected, all_off), f"{unit.name}: INT8 must change the output for this test to bite"
        error = np.abs(switched[unit.name] - expected).max() / np.abs(expected).max()
        assert error < 2e-3, f"{flavour} {unit.name}: switched differs from its single-unit graph by {error:.2e}"


@pytest.mark.parametrize("flavour", ["tensorrt", "ort-cpu"])
def test_switched_kl_scores_rank_units_as_the_exact_ones(calibrated: dict, flavour: str) -> None:
    model, ranges = calibrated["transformer"]
    units = find_units(model)
    job = ScoringJob(model, units, ranges, flavour, "cosine", batches_for("transformer", 2, seed=9))
    exact = single_unit_scores(replace(job, exact=True), units)
    one_graph = single_unit_scores(job, units)
    names = [u.name for u in units]
    assert _spearman([exact[n] for n in names], [one_graph[n] for n in names]) >= 0.95
    largest = max(exact.values())
    for name in names:  # the exact path runs ORT's fused int8 kernels, whose rounding differs slightly
        assert one_graph[name] == pytest.approx(exact[name], rel=0.05, abs=0.05 * largest)
