"""Import of a TensorRT calibration cache file, for users who already calibrated with TensorRT.

The format (TensorRT's ``IInt8Calibrator::writeCalibrationCache``): a first line ``TRT-<version>-<Calibrator>``
(e.g. ``TRT-8601-EntropyCalibration2``), then one line per tensor, ``<tensor name>: <8 hex digits>``, the hex being
the IEEE-754 big-endian bits of the float32 scale; the threshold is scale × 127.  TensorRT's ONNX parser names
network tensors after the ONNX tensors, so names map directly.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import onnx

from trtmix.calibration.ranges import Ranges, TensorRange
from trtmix.errors import CalibrationError
from trtmix.ir.large import model_sha256

HEADER = re.compile(r"^TRT-\d+-\w+$")
LINE = re.compile(r"^(?P<name>.+):\s*(?P<hex>[0-9a-fA-F]{8})$")


def parse_tensorrt_cache(path: Path) -> tuple[str, dict[str, float]]:
    """The header and ``{tensor name: scale}`` of a TensorRT calibration cache file."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise CalibrationError(f"Cannot read TensorRT calibration cache {path}: {err}") from err
    if not lines or not HEADER.match(lines[0]):
        raise CalibrationError(
            f"{path} does not start with a TensorRT cache header.",
            expected="a first line like TRT-8601-EntropyCalibration2",
        )
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        match = LINE.match(line)
        if not match:
            raise CalibrationError(f"{path}, line {number}: {line!r} is not '<tensor name>: <8 hex digits>'.")
        scales[match["name"]] = struct.unpack(">f", bytes.fromhex(match["hex"]))[0]
    return lines[0], scales


def ranges_from_tensorrt_cache(path: Path, model: onnx.ModelProto) -> tuple[Ranges, list[str]]:
    """Symmetric ranges (±127 × scale) for the cache's tensors that exist in ``model``, and the names that do not."""
    header, scales = parse_tensorrt_cache(path)
    known = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}
    ranges, unmatched = {}, []
    for name, scale in scales.items():
        if name not in known:
            unmatched.append(name)
            continue
        amax = abs(scale) * 127.0
        ranges[name] = TensorRange(-amax, amax)
    if not ranges:
        raise CalibrationError(
            f"None of the {len(scales)} tensors in {path} is a tensor of this model.",
            fix="import the cache written for this exact ONNX model",
        )
    meta = {"model_sha256": model_sha256(model), "method": "tensorrt-cache", "source": str(path), "header": header}
    return Ranges(tensors=ranges, meta=meta), unmatched
