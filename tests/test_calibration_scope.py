"""Calibration observes only what a plan can quantize: an attention mask holding -inf passes, a NaN in a unit's
input is an error naming the unit (graphs made elsewhere, e.g. a legacy-exported transformer, carry such masks)."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from trtmix.calibration.calibrate import calibrate_max, collect_histograms, tensor_owners, tensors_to_calibrate
from trtmix.errors import CalibrationError
from trtmix.export import export_onnx
from trtmix.ir.graph import load_onnx
from trtmix.ir.units import find_units
from trtmix.quant.builder import Builder
from trtmix.quant.plan import PrecisionPlan


class MaskedAttention(nn.Module):
    """One attention head whose padding positions get -inf added to their scores, as transformer exports do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.query, self.key, self.value = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.query(hidden) @ self.key(hidden).transpose(1, 2)
        scores = scores + torch.where(mask[:, None, :] > 0, 0.0, float("-inf"))
        return torch.softmax(scores, dim=-1) @ self.value(hidden)


def _feeds(count, nan=False):
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(count):
        hidden = rng.standard_normal((2, 5, 8)).astype(np.float32)
        if nan:
            hidden[0, 0, 0] = np.nan
        feeds.append({"hidden": hidden, "mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], np.float32)})
    return feeds


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_attention_mask_with_minus_inf_calibrates(tmp_path, exporter):
    model = MaskedAttention()
    samples = tuple(torch.from_numpy(v) for v in _feeds(1)[0].values())
    path = tmp_path / "attention.onnx"
    export_onnx(model, samples, path, exporter=exporter)
    graph = load_onnx(path)
    units = find_units(graph)
    ranges = calibrate_max(graph, _feeds(2), tensors_to_calibrate(graph, units), progress=False)
    assert all(np.isfinite([r.min, r.max]).all() for r in ranges.tensors.values())
    compiled = Builder(graph, units, ranges, "tensorrt").compile(PrecisionPlan.with_int8(u.name for u in units))
    assert any(node.op_type == "QuantizeLinear" for node in compiled.graph.node)


def test_nan_in_a_quantized_tensor_names_the_unit(exported):
    graph = load_onnx(exported[("transformer", "dynamo")])
    units = find_units(graph)
    owners = tensor_owners(graph, units)
    feeds = [{"input": np.full((2, 8, 16), 3e38, np.float32)}]  # finite, but /proj/MatMul's output overflows
    with pytest.raises(CalibrationError, match=r"tensor '([^']+)', which (\S+) would quantize, holds NaN") as caught:
        collect_histograms(graph, feeds, sorted(owners), progress=False, owners=owners)
    tensor, unit = re.search(r"tensor '([^']+)', which (\S+) would", str(caught.value)).groups()
    assert unit in owners[tensor] and unit in {u.name for u in units}
