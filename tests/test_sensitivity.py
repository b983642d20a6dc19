"""Hessian sensitivity against exact Hessians on small models; mapping coverage; determinism; the orderings."""

import numpy as np
import pytest
import torch

from trtmix.errors import CalibrationError
from trtmix.ir.graph import load_onnx
from trtmix.ir.units import find_units
from trtmix.models import tiny
from trtmix.sensitivity.hessian import SensitivityError, TorchProblem, hutchinson_traces
from trtmix.sensitivity.interlayer import combine_by_rank, cross_layer_terms, graph_neighbours
from trtmix.sensitivity.mapping import map_units
from trtmix.sensitivity.run import METHODS, SensitivitySettings, compute_sensitivity

from .conftest import batches_for


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Linear(4, 6)
        self.second = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


def _problem(loss_kind="kl"):
    model = MLP()
    batch = (torch.randn(16, 4, generator=torch.Generator().manual_seed(1)),)
    params = {"first": model.first.weight, "second": model.second.weight}
    return model, TorchProblem(model, params, [batch], loss_kind)


def _exact_hessian(model, problem):
    """The full Hessian over (first.weight, second.weight), flattened in that order."""
    shapes = [model.first.weight.shape, model.second.weight.shape]
    sizes = [int(np.prod(s)) for s in shapes]
    base = {k: v.detach() for k, v in model.named_parameters()}

    def loss_of(flat):
        first, second = flat[: sizes[0]].reshape(shapes[0]), flat[sizes[0] :].reshape(shapes[1])
        params = {**base, "first.weight": first, "second.weight": second}
        output = torch.func.functional_call(model, params, problem.batches[0])
        log_p = torch.log_softmax(output, dim=-1)
        p0 = torch.softmax(problem.references[0], dim=-1)
        return (p0 * (torch.log(p0) - log_p)).sum(-1).mean()

    flat = torch.cat([model.first.weight.detach().reshape(-1), model.second.weight.detach().reshape(-1)])
    return torch.autograd.functional.hessian(loss_of, flat), sizes


def test_hutchinson_matches_exact_trace():
    model, problem = _problem()
    hessian, sizes = _exact_hessian(model, problem)
    exact = {
        "first": float(torch.diagonal(hessian)[: sizes[0]].sum()),
        "second": float(torch.diagonal(hessian)[sizes[0] :].sum()),
    }
    traces = hutchinson_traces(problem, torch.Generator().manual_seed(0), max_probes=3000, tol=0.0)
    for name in exact:
        assert traces[name].mean == pytest.approx(exact[name], rel=0.05), (name, traces[name], exact[name])
        assert abs(traces[name].mean - exact[name]) < 4 * traces[name].stderr + 1e-9


def test_variant_a_sums_to_exact_quadratic_form():
    model, problem = _problem()
    hessian, sizes = _exact_hessian(model, problem)
    generator = torch.Generator().manual_seed(3)
    deltas = {
        "first": torch.randn(6, 4, generator=generator) * 0.01,
        "second": torch.randn(3, 6, generator=generator) * 0.01,
    }
    terms = cross_layer_terms(problem, deltas, [0])
    flat = torch.cat([deltas["first"].reshape(-1), deltas["second"].reshape(-1)]).double()
    exact = 0.5 * float(flat @ hessian.double() @ flat)
    assert sum(terms.values()) == pytest.approx(exact, rel=1e-4)
    assert terms["first"] != pytest.approx(0.5 * float(flat[:24] @ hessian.double()[:24, :24] @ flat[:24]), rel=1e-3)


def test_traces_are_identical_with_one_seed():
    _, problem = _problem("mse")
    first = hutchinson_traces(problem, torch.Generator().manual_seed(7), max_probes=10, tol=0.0)
    second = hutchinson_traces(problem, torch.Generator().manual_seed(7), max_probes=10, tol=0.0)
    assert first == second


@pytest.mark.parametrize("name", ["convnet", "transformer"])
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_mapping_covers_every_weighted_unit(exported, name, exporter):
    model = load_onnx(exported[(name, exporter)])
    units = find_units(model)
    torch_model, _ = getattr(tiny, name)()
    mapping = map_units(units, model, torch_model)
    weighted = {u.name for u in units if u.weight is not None}
    assert set(mapping.maps) == weighted
    assert set(mapping.unmapped) == {u.name for u in units if u.weight is None}  # reported, never dropped
    if name == "convnet":  # BatchNorm folded: a per-channel scale, found and checked numerically
        assert not np.allclose(mapping.maps["/stem/Conv"].channel_scale, 1.0)
    else:  # both exporters store nn.Linear weights transposed for MatMul
        assert all(mapping.maps[u].transposed for u in weighted)


def test_compute_sensitivity_all_methods_and_errors(calibrated):
    model, ranges = calibrated["transformer"]
    units = find_units(model)
    torch_model, _ = tiny.transformer()
    feeds = batches_for("transformer", 2, seed=4)
    settings = SensitivitySettings(methods=METHODS, metric="agreement", batches=2, max_probes=8)
    result = compute_sensitivity(model, units, ranges, feeds, settings, torch_model, progress=False)
    assert set(result["orderings"]) == set(METHODS)
    for order in result["orderings"].values():
        assert sorted(order) == sorted(u.name for u in units)  # every unit placed, attention included
    assert set(result["unscored_by_hessian"]) == {u.name for u in units if u.kind == "attention"}
    again = compute_sensitivity(model, units, ranges, feeds, settings, tiny.transformer()[0], progress=False)
    assert again["orderings"] == result["orderings"]
    kl_scores = {name: unit["scores"]["kl"] for name, unit in result["units"].items()}
    reused = compute_sensitivity(
        model, units, ranges, feeds, settings, tiny.transformer()[0], progress=False, kl_scores=kl_scores
    )
    assert reused["orderings"] == result["orderings"] and "kl" not in reused["timings_seconds"]
    with pytest.raises(SensitivityError, match="need the torch model"):
        compute_sensitivity(
            model, units, ranges, feeds, SensitivitySettings(methods=("hessian",)), None, progress=False
        )
    bad = [{"input": np.zeros((2, 8, 5), np.float32)}]
    with pytest.raises(CalibrationError, match=r"Batch 0, input 'input': shape"):
        compute_sensitivity(
            model, units, ranges, bad, SensitivitySettings(methods=("hessian",)), torch_model, progress=False
        )
    with pytest.raises(SensitivityError, match="cannot take calibration batch 0"):
        TorchProblem(torch_model, {"w": torch_model.proj.weight}, [(torch.zeros(2, 8, 5),)], "kl")


def test_neighbours_and_rank_combination(exported):
    model = load_onnx(exported[("convnet", "dynamo")])
    units = find_units(model)
    neighbours = graph_neighbours(model, units)
    assert neighbours["/stem/Conv"] == {"/block_conv1/Conv", "/down/Conv"}  # via ReLU, and via the residual Add
    assert "/fc/Gemm" in neighbours["/down/Conv"]
    combined = combine_by_rank({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 30.0, "b": 20.0, "c": 10.0, "d": 0.0})
    assert combined["b"] == pytest.approx(0.5 * 0.5 + 0.5 * (2 / 3))
    assert combined["d"] == 0.0  # only the variant scored it


RECIPE = """
import numpy as np
def load_data(split="calibration"):
    rng = np.random.default_rng(["calibration", "search", "holdout"].index(split))
    for _ in range(4):
        yield {"input": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
"""


def test_sensitivity_cli_writes_scores_ranks_timings_and_caches(tmp_path, capsys):
    from trtmix.cli import main

    (tmp_path / "recipe.py").write_text(RECIPE)
    out = tmp_path / "sensitivity.json"
    args = ["sensitivity", "trtmix.models.tiny:convnet", "--data", str(tmp_path / "recipe.py"), "--method", *METHODS,
            "--max-probes", "6", "-o", str(out)]  # fmt: skip
    assert main(["-q", *args]) == 0
    import json

    result = json.loads(out.read_text())
    assert set(result["orderings"]) == set(METHODS)
    unit = result["units"]["/stem/Conv"]
    assert {"hessian", "augmented-a", "kl", "a", "b", "c"} <= set(unit["scores"]) and set(unit["ranks"]) == set(METHODS)
    assert result["timings_seconds"]["hessian"] > 0
    printed = capsys.readouterr().out
    assert "most sensitive" in printed
    # the quantizer every method scored, and that compile may choose another
    assert result["quantizers"]["bias_correction"]["enabled"] and result["quantizers"]["summary"] in printed
    assert not result["quantizers"]["smoothing"]["enabled"]  # as build: no smoothing unless --smooth-alpha
    assert "`trtmix compile` measures" in printed
    out.unlink()
    assert main(["-q", *args]) == 0  # cache hit: same result, written again
    assert json.loads(out.read_text())["orderings"] == result["orderings"]
    onnx_args = ["sensitivity", str(tmp_path / "sensitivity.model.onnx"), "--data", str(tmp_path / "recipe.py")]
    assert main(["-q", *onnx_args, "--method", "hessian", "-o", str(tmp_path / "x.json")]) == 2
    assert "need the torch model" in capsys.readouterr().err
    chosen = ["--smooth-alpha", "0.5", "--no-bias-correction"]
    assert main(["-q", *onnx_args, "--method", "kl", "noise", *chosen, "-o", str(tmp_path / "y.json")]) == 0
    quantizers = json.loads((tmp_path / "y.json").read_text())["quantizers"]
    assert quantizers["smoothing"]["enabled"] and not quantizers["bias_correction"]["enabled"]


def test_compile_with_augmented_ordering(tmp_path, capsys):
    from trtmix.cli import main

    (tmp_path / "recipe.py").write_text(RECIPE)
    args = ["compile", "trtmix.models.tiny:convnet", "--data", str(tmp_path / "recipe.py"), "--metric", "cosine",
            "--ordering", "augmented-a", "--compare-orderings", "hessian", "--max-drop", "0.01%", "--frontier", "1",
            "--runs", "3", "-o", str(tmp_path / "out")]  # fmt: skip
    # --frontier 1 probes a k between 0 and U, which needs the orderings even when all-INT8 meets the budget.
    assert main(["-q", *args]) in (0, 2)
    import json

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["orderings"]) == {"augmented-a", "hessian"}
    # One computation serves both: hessian's cost is kl + traces, augmented-a's adds variant A on top.
    seconds = report["ordering_seconds"]
    assert seconds["augmented-a"] > seconds["hessian"] > 0
    unit_ranks = [unit["ranks"] for unit in report["units"]]
    assert sorted(r["hessian"] for r in unit_ranks) == list(range(1, len(unit_ranks) + 1))
