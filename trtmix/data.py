"""Calibration and evaluation data: loading recipes and checking every batch before it is used.

A recipe is a Python file (or module) whose function (``load_data`` by default) yields feeds, ``{input name: numpy
array}``, as Polygraphy's data-loader scripts do; an ``.npz`` file works too (arrays keyed by input name, first axis
the samples).  Recipes that accept a ``split`` argument get ``calibration``, ``search`` or ``holdout``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from trtmix.errors import CalibrationError
from trtmix.user_code import load_function

Feed = dict[str, np.ndarray]
ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.DOUBLE: np.float64,
}


def load_batches(spec: str, split: str = "calibration", batch_size: int = 8) -> Iterable[Feed]:
    """The feeds a recipe spec (``recipe.py[:func]``, ``module:func`` or ``data.npz``) yields for ``split``."""
    if spec.endswith(".npz"):
        return _npz_batches(Path(spec), batch_size)
    function = load_function(spec, default_function="load_data")
    try:
        accepts_split = "split" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        accepts_split = False
    try:
        batches = function(split=split) if accepts_split else function()
    except Exception as err:
        raise CalibrationError(f"Data recipe {spec} raised {type(err).__name__}: {err}", fix="fix the recipe") from err
    return batches


def _npz_batches(path: Path, batch_size: int) -> Iterator[Feed]:
    if not path.is_file():
        raise CalibrationError(f"Data file {path} does not exist.")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
        raise CalibrationError(
            f"{path}: arrays have different first-axis lengths {sorted(lengths)}.",
            expected="one sample per row in every array",
        )
    count = lengths.pop()
    for start in range(0, count, batch_size):
        yield {name: array[start : start + batch_size] for name, array in arrays.items()}


def model_input_specs(model: onnx.ModelProto) -> dict[str, tuple[type, tuple[int | str, ...]]]:
    """Input name → (numpy dtype, shape with symbolic dims as strings) for the graph's real inputs."""
    initializers = {init.name for init in model.graph.initializer}
    specs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in tensor_type.shape.dim)
        specs[value.name] = (ONNX_TO_NUMPY.get(tensor_type.elem_type, np.float32), dims)
    return specs


def check_feed(feed: object, specs: dict[str, tuple[type, tuple[int | str, ...]]], batch_index: int) -> Feed:
    """Validate one feed against the model inputs: names, dtypes, ranks, static dims, finiteness."""
    if not isinstance(feed, dict):
        raise CalibrationError(
            f"Batch {batch_index} is a {type(feed).__name__}.", expected="a dict {input name: numpy array}"
        )
    if set(feed) != set(specs):
        raise CalibrationError(
            f"Batch {batch_index} has inputs {sorted(feed)}.",
            expected=f"exactly {sorted(specs)}",
            fix="rename the keys your recipe yields to the model's input names",
        )
    checked = {}
    for name, (dtype, dims) in specs.items():
        array = np.asarray(feed[name])
        if array.dtype != np.dtype(dtype):
            raise CalibrationError(
                f"Batch {batch_index}, input {name!r}: dtype {array.dtype}.",
                expected=np.dtype(dtype).name,
                fix=f"convert with .astype(np.{np.dtype(dtype).name})",
            )
        if array.ndim != len(dims) or any(
            isinstance(d, int) and d != s for d, s in zip(dims, array.shape, strict=False)
        ):
            raise CalibrationError(
                f"Batch {batch_index}, input {name!r}: shape {array.shape}.", expected=f"shape {dims}"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise CalibrationError(f"Batch {batch_index}, input {name!r} holds NaN or Inf.", fix="clean the data")
        checked[name] = array
    return checked


def checked_batches(batches: Iterable[object], model: onnx.ModelProto, limit: int | None = None) -> Iterator[Feed]:
    """Validated feeds from ``batches``, at most ``limit`` of them; an empty source is an error."""
    specs = model_input_specs(model)
    count = 0
    for index, feed in enumerate(batches):
        if limit is not None and index >= limit:
            break
        count += 1
        yield check_feed(feed, specs, index)
    if count == 0:
        raise CalibrationError(
            "The data recipe yielded no batches.",
            expected="at least one feed",
            fix="check the recipe's split and file paths",
        )
