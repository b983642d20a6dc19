"""Unit groups: found in real exports, scored together from one switched graph, flipped as one bisection step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trtmix.cli import main
from trtmix.ir.groups import CHAIN, SHARED_INPUT, find_groups
from trtmix.ir.units import find_units
from trtmix.quant.compile import compile_plan
from trtmix.quant.plan import PrecisionPlan
from trtmix.quant.switched import compile_switched, switch_feeds
from trtmix.runtime.onnxruntime import OnnxRuntimeRunner
from trtmix.search.bisection import BisectionSearch, Budget, LazyOrder
from trtmix.search.orderings import order_groups

from .conftest import TINY_RECIPE, batches_for, journal_cached


def _several(groups: list) -> list:
    return [g for g in groups if len(g.members) > 1]


def test_qkv_projections_share_their_input_and_a_conv_chain_is_one_group(calibrated: dict) -> None:
    model, _ = calibrated["transformer"]
    units = find_units(model)
    groups = find_groups(units, model)
    assert sorted(u for g in groups for u in g.members) == sorted(u.name for u in units), "each unit exactly once"
    several = _several(groups)
    assert len(several) == 2 and all(g.reasons == (SHARED_INPUT,) for g in several)
    for group in several:
        assert [m.rsplit("/", 2)[-2].rsplit(".", 1)[-1] for m in group.members] == ["query", "key", "value"]
    model, _ = calibrated["convnet"]
    (chain,) = _several(find_groups(find_units(model), model))
    assert chain.reasons == (CHAIN,) and [m.split("/")[1] for m in chain.members] == ["block_conv1", "block_conv2"]


def test_groups_are_capped(calibrated: dict) -> None:
    model, _ = calibrated["transformer"]
    groups = find_groups(find_units(model), model, max_group=2)
    assert max(len(g.members) for g in groups) == 2 and len(_several(groups)) == 2


def test_a_group_is_one_step_of_the_bisection() -> None:
    members = {"g1": ("a", "b", "c"), "d": ("d",), "g2": ("e", "f")}
    search = BisectionSearch(LazyOrder(list(members), lambda: ["d", "g2", "g1"]), Budget.parse(max_drop="1%"),
                             members=members)  # fmt: skip
    assert search.units == 3
    assert search.plan_for(3).int8_units() == ["a", "b", "c", "d", "e", "f"] and not search.order.computed
    assert search.plan_for(2).int8_units() == ["d", "e", "f"]
    relative = {3: 0.9, 0: 1.0, 1: 0.995, 2: 0.98}
    while (k := search.ask()) is not None:
        search.tell(k, relative[k], 10.0 - k)
    assert search.best().k == 1 and sorted(search.probes) == [0, 1, 2, 3]


def test_group_order_puts_a_group_where_its_most_sensitive_member_stands() -> None:
    from trtmix.ir.groups import UnitGroup

    groups = [UnitGroup("a", ("a", "b")), UnitGroup("c", ("c",)), UnitGroup("d", ("d",))]
    order, scores = order_groups(["a", "c", "d", "b"], groups)
    assert order == ["c", "d", "a"] and scores["a"] == 3.0


@pytest.mark.parametrize("flavour", ["tensorrt", "ort-cpu"])
@pytest.mark.parametrize("name", ["convnet", "transformer"])
def test_switches_on_together_compute_the_group_plan(calibrated: dict, name: str, flavour: str) -> None:
    model, ranges = calibrated[name]
    units = find_units(model)
    graph, switches = compile_switched(model, units, ranges, flavour)
    feed = batches_for(name, 1, seed=3)[0]
    with OnnxRuntimeRunner(graph, threads=1, optimize=True) as runner:
        switched = {g.name: runner.infer({**feed, **switch_feeds(switches, g.members)})[0]
                    for g in _several(find_groups(units, model))}  # fmt: skip
    for group in _several(find_groups(units, model)):
        exact = compile_plan(model, PrecisionPlan.with_int8(group.members), ranges, flavour)
        with OnnxRuntimeRunner(exact, threads=1, optimize=False) as runner:
            expected = runner.infer(feed)[0]
        error = np.abs(switched[group.name] - expected).max() / np.abs(expected).max()
        assert error < 2e-3, f"{flavour} {group.members}: switched differs from the group's graph by {error:.2e}"


@pytest.mark.parametrize("flavour,backend", [("tensorrt", "openvino"), ("ort-cpu", "onnxruntime")])
def test_compile_with_groups_flips_groups_whole_and_reports_their_savings(
    tmp_path: Path, flavour: str, backend: str
) -> None:
    (tmp_path / "recipe.py").write_text(TINY_RECIPE)
    out = tmp_path / "out"
    args = ["-q", "compile", "trtmix.models.tiny:convnet", "--data", str(tmp_path / "recipe.py"), "--metric",
            "cosine", "--max-drop", "0.01%", "--frontier", "3", "--runs", "5", "--groups", "--ordering", "gain",
            "--compare-orderings", "kl", "--flavour", flavour, "--backend", backend, "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    section = report["groups"]
    assert section["steps"] == 4 and "5 units in 4 steps" in section["description"]
    (group,) = section["groups"]
    assert group["reasons"] == [CHAIN] and len(group["members"]) == 2
    assert group["together_ms"] is not None and group["members_alone_ms"] is not None
    for probe in report["probes"]:
        int8 = set(PrecisionPlan.from_dict(probe["plan"]).int8_units())
        assert len(int8 & set(group["members"])) in (0, 2), "a group is never split"
        assert probe["k"] == len(int8)
    assert {p["k"] for p in report["probes"]} >= {0, 5}
    cached = journal_cached(out, "ordering:kl:groups")
    assert len(cached["order"]) == 4
    together = journal_cached(out, "kl-group-scores")[group["group"]]
    unit_kl = journal_cached(out, "ordering:kl")["scores"]
    assert cached["scores"][group["group"]] == together and together > 0
    assert together != pytest.approx(sum(unit_kl[m] for m in group["members"]), rel=1e-6), "scored together, not summed"
    page = (out / "report.html").read_text()
    assert "Unit groups" in page and "members alone" in page
