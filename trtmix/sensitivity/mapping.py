"""Which torch parameter each ONNX unit's weight came from, and how the two are related.

The export records each node's torch module (``trtmix.module``).  The ONNX weight can differ from the torch
parameter: dynamo stores ``nn.Linear`` weights transposed for MatMul, and both exporters fold BatchNorm into the conv
(a per-output-channel scale).  The relation is found and then *checked numerically*, so a unit is mapped only when
its ONNX weight really is that parameter; anything else is reported by name, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from trtmix.ir.graph import GraphIndex
from trtmix.ir.units import Unit


@dataclass(frozen=True)
class WeightMap:
    """How a unit's ONNX weight relates to its torch parameter: onnx = transform(param) × channel_scale.

    ``transposed``: the ONNX weight is the parameter's transpose (2-D).  ``channel_scale``: per-output-channel
    factors (BatchNorm folding), along the parameter's axis 0; ones when nothing was folded.
    """

    unit: str
    parameter: str
    transposed: bool
    channel_scale: np.ndarray

    def to_torch(self, onnx_tensor: np.ndarray) -> np.ndarray:
        """An ONNX-space weight tensor (e.g. a quantization error) in the torch parameter's coordinates."""
        tensor = onnx_tensor.T if self.transposed else onnx_tensor
        shape = [-1] + [1] * (tensor.ndim - 1)
        return tensor / self.channel_scale.reshape(shape)


@dataclass(frozen=True)
class Mapping:
    """Mapped units, and the units that could not be mapped with the reason."""

    maps: dict[str, WeightMap]
    unmapped: dict[str, str]


def map_units(units: list[Unit], model: onnx.ModelProto, torch_model: torch.nn.Module, rtol: float = 1e-3) -> Mapping:
    """Map every weighted unit to its torch parameter (see the module docstring)."""
    index = GraphIndex(model)
    modules = dict(torch_model.named_modules())
    maps, unmapped = {}, {}
    for unit in units:
        if unit.weight is None:
            unmapped[unit.name] = "no weight (activation x activation MatMul): scored by measured variants"
            continue
        module = modules.get(unit.module or "")
        parameter = getattr(module, "weight", None) if module is not None else None
        onnx_weight = index.constant_value(unit.weight)
        if not isinstance(parameter, torch.nn.Parameter) or onnx_weight is None:
            unmapped[unit.name] = f"no torch weight found for module {unit.module!r}"
            continue
        weight_map = _relate(unit.name, f"{unit.module}.weight", parameter.detach().cpu().numpy(), onnx_weight, rtol)
        if weight_map is None:
            unmapped[unit.name] = f"ONNX weight {unit.weight} {onnx_weight.shape} does not match {unit.module}.weight"
        else:
            maps[unit.name] = weight_map
    return Mapping(maps, unmapped)


def _relate(unit: str, name: str, param: np.ndarray, onnx_weight: np.ndarray, rtol: float) -> WeightMap | None:
    for transposed in (False, True):
        candidate = param.T if transposed else param
        if transposed and param.ndim != 2 or candidate.shape != onnx_weight.shape:
            continue
        flat_param = param.reshape(param.shape[0], -1).astype(np.float64)
        flat_onnx = (onnx_weight.T if transposed else onnx_weight).reshape(param.shape[0], -1).astype(np.float64)
        norms = (flat_param**2).sum(axis=1)
        scale = np.where(norms > 0, (flat_param * flat_onnx).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
        error = np.abs(flat_param * scale[:, None] - flat_onnx).max()
        if error <= rtol * max(np.abs(flat_onnx).max(), 1e-12):
            return WeightMap(unit, name, transposed, scale.astype(np.float64))
    return None
