"""Activation range collection with ONNX Runtime.

One pass of the float model over the data, with the tensors of interest exposed as extra graph outputs; the
running min/max is all that is kept, so memory stays bounded however many batches there are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from tqdm import tqdm

from trtmix.data import checked_batches
from trtmix.errors import CalibrationError
from trtmix.graph import model_sha256
from trtmix.ranges import Ranges, TensorRange
from trtmix.units import Unit

LOG = logging.getLogger(__name__)


def tensors_to_calibrate(model: onnx.ModelProto, units: list[Unit]) -> list[str]:
    """Every tensor some plan may quantize: unit inputs and outputs, and the activation inputs of Add nodes."""
    initializers = {init.name for init in model.graph.initializer}
    names = {t for unit in units for t in (*unit.inputs, unit.output)}
    for node in model.graph.node:
        if node.op_type == "Add":
            names.update(i for i in node.input if i and i not in initializers)
    return sorted(names)


def calibrate_max(
    model: onnx.ModelProto,
    batches: Iterable[object],
    tensors: list[str],
    *,
    limit: int | None = None,
    progress: bool = True,
) -> Ranges:
    """Min/max of ``tensors`` over the float model run on ``batches``."""
    import onnxruntime as ort

    probed = _with_outputs(model, tensors)
    session = ort.InferenceSession(probed.SerializeToString(), providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    low = {name: np.inf for name in tensors}
    high = {name: -np.inf for name in tensors}
    count = 0
    for index, feed in enumerate(
        tqdm(checked_batches(batches, model, limit), desc="calibrate", disable=not progress, unit="batch")
    ):
        for name, value in zip(output_names, session.run(output_names, feed), strict=False):
            if name not in low or value.size == 0:
                continue
            if not np.isfinite(value).all():
                raise CalibrationError(
                    f"Batch {index}: tensor {name!r} holds NaN or Inf.", fix="check the model and data"
                )
            low[name] = min(low[name], float(value.min()))
            high[name] = max(high[name], float(value.max()))
        count += 1
    ranges = {name: TensorRange(low[name], high[name]) for name in tensors if np.isfinite(low[name])}
    LOG.info("calibrated %d tensors on %d batches", len(ranges), count)
    meta = {"model_sha256": model_sha256(model), "method": "max", "batches": count}
    return Ranges(tensors=ranges, meta=meta)


def _with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``tensors`` (typed where shape inference knows them)."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    existing = {o.name for o in probed.graph.output}
    for name in tensors:
        if name not in existing:
            probed.graph.output.append(inferred.get(name, onnx.ValueInfoProto(name=name)))
    return probed
