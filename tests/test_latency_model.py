"""Per-unit latency from the engine's per-layer profile, the additive model's check, and the ``gain`` ordering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtmix.cli import main
from trtmix.quant.compile import compile_plan
from trtmix.quant.flavours import get_flavour
from trtmix.quant.plan import PrecisionPlan
from trtmix.runtime.attribution import attribute, latency_model, node_owners
from trtmix.runtime.engine_report import EngineLayer
from trtmix.search.orderings import gain_order

from .conftest import TINY_RECIPE as RECIPE
from .conftest import journal_cached


def _compiled(calibrated: dict, plan: PrecisionPlan):
    model, ranges = calibrated["convnet"]
    return compile_plan(model, plan, ranges, get_flavour("tensorrt"))


def test_qdq_and_casts_belong_to_the_unit_they_feed(calibrated: dict) -> None:
    from trtmix.ir.units import find_units

    model, _ = calibrated["convnet"]
    units = find_units(model)
    graph = _compiled(calibrated, PrecisionPlan.with_int8([u.name for u in units]))
    owners = node_owners(graph, units)
    stem = units[0]
    anchor = next(node for node in graph.graph.node if node.name == stem.name)
    dequantizers = [n for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in anchor.input]
    assert len(dequantizers) == 2  # activation and weight
    quantizers = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"
                  and n.output[0] in {d.input[0] for d in dequantizers}]  # fmt: skip
    assert len(quantizers) == 2 and all(owners[n.name] == (stem.name,) for n in dequantizers + quantizers)
    output_cast = next(n for n in graph.graph.node if n.op_type == "Cast" and n.output[0] == graph.graph.output[0].name)
    assert owners[output_cast.name] == (units[-1].name,)  # the fp32 output cast after the classifier


def test_attribution_splits_fused_layers_and_keeps_the_rest_apart() -> None:
    owners = {"a": ("u1",), "b": ("u2",), "qa": ("u1",)}
    layers = [EngineLayer("L1", "Conv", ("a", "qa"), "int8", ms=2.0),
              EngineLayer("L2", "Subgraph", ("a", "b"), "int8", ms=1.0),
              EngineLayer("L3", "Reorder", (), "fp32", ms=0.5),
              EngineLayer("L4", "Conv", ("b/WithoutBiases/DequantizationMultiply",), "int8", ms=0.25),
              EngineLayer("L5", "QLinearConv", ("b_token_7",), "int8", ms=0.125)]  # fmt: skip
    per_unit, rest, total = attribute(layers, owners)
    assert per_unit == {"u1": 2.5, "u2": 0.875} and rest == 0.5 and total == 3.875


def test_unattributed_units_take_their_mac_share_and_predictions_hold_at_the_ends(calibrated: dict) -> None:
    from trtmix.ir.units import find_units

    model, _ = calibrated["convnet"]
    units = find_units(model)
    names = [u.name for u in units]
    high = _compiled(calibrated, PrecisionPlan())
    int8 = _compiled(calibrated, PrecisionPlan.with_int8(names))
    reorder = EngineLayer("x", "Reorder", (), "", ms=1.0)
    high_layers = [EngineLayer(n, "Conv", (n,), "fp16", ms=1.0) for n in names] + [reorder]
    int8_layers = [EngineLayer(n, "Conv", (n,), "int8", ms=0.5) for n in names[1:]] + [reorder]
    lat = latency_model((high_layers, high), (int8_layers, int8), units)
    assert lat.unattributed == [names[0]]
    assert lat.units[names[1]].high_ms == 1.0 and lat.units[names[1]].int8_ms == 0.5
    # what the attributed units leave unexplained (profiled totals 6.0 vs 3.0, they explain 4 x 0.5) is the stem's
    assert lat.savings_ms[names[0]] == pytest.approx(1.0)
    assert lat.predict([], 10.0) == 10.0
    assert lat.predict(names, 10.0) == pytest.approx(10.0 * 3.0 / 6.0)  # exact at all-INT8 by construction


def test_gain_puts_most_latency_per_accuracy_first() -> None:
    divergence = {"cheap_slow": 0.01, "cheap_fast": 0.01, "costly_slow": 0.5, "costs_time": 0.001}
    savings = {"cheap_slow": 0.1, "cheap_fast": 5.0, "costly_slow": 10.0, "costs_time": -0.3}
    order, scores = gain_order(divergence, savings, list(divergence))
    assert order == ["cheap_fast", "costly_slow", "cheap_slow", "costs_time"]
    assert scores["cheap_fast"] == pytest.approx(0.002)


@pytest.mark.parametrize("flavour,backend", [("tensorrt", "openvino"), ("ort-cpu", "onnxruntime")])
def test_compile_reports_unit_latency_and_predictions(flavour: str, backend: str, tmp_path: Path) -> None:
    (tmp_path / "recipe.py").write_text(RECIPE)
    out = tmp_path / "out"
    args = ["-q", "compile", "trtmix.models.tiny:convnet", "--data", str(tmp_path / "recipe.py"), "--metric",
            "cosine", "--max-drop", "0.01%", "--frontier", "2", "--runs", "5", "--ordering", "gain",
            "--compare-orderings", "kl", "--flavour", flavour, "--backend", backend, "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    model = report["latency_model"]
    assert model["unattributed"] == [], "every unit of the conv net is named by the engine's profile"
    for unit in report["units"]:
        latency = unit["latency_ms"]
        assert latency["attributed"] and latency["high"] > 0 and latency["int8"] > 0
        assert latency["saving"] == pytest.approx(latency["high"] - latency["int8"], abs=1e-3)
    measured = [p for p in report["probes"] if p["status"] == "ok"]
    assert all(p["predicted_ms"] > 0 for p in measured)
    assert model["errors"]["probes"] == len(measured) and model["errors"]["max_abs"] >= model["errors"]["median_abs"]
    assert report["orderings_computed"] == {"gain": True, "kl": True}  # the frontier needs both orders
    kl, gain_scores = journal_cached(out, "ordering:kl")["scores"], journal_cached(out, "ordering:gain")["scores"]
    saving = journal_cached(out, "latency-model")["savings_ms"]
    for name, score in gain_scores.items():
        assert score == pytest.approx(kl[name] / max(saving[name], 1e-6), rel=1e-3)
    page = (out / "report.html").read_text()
    assert "predicted ms" in page and "profiled ms high / INT8" in page
