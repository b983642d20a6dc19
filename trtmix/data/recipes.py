"""Calibration and evaluation data: loading recipes and checking every batch before it is used.

A recipe is a Python file (or module) whose function (``load_data`` by default) yields feeds, ``{input name: numpy
array}``, as Polygraphy's data-loader scripts do.  Recipes that accept a ``split`` argument get ``calibration``,
``search`` or ``holdout``; other keyword arguments come from ``--data-arg KEY=VALUE``.  Two generic sources need no
recipe: an ``.npz`` file (arrays keyed by input name, first axis the samples) and a folder of images; both are cut
into three disjoint, seeded parts, one per split.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtmix.data.user_code import USER_FIX, guarded, load_function, user_error
from trtmix.errors import CalibrationError, TrtmixError

Feed = dict[str, np.ndarray]
SPLITS = ("calibration", "search", "holdout")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.DOUBLE: np.float64,
}


def parse_data_args(items: list[str] | None) -> dict[str, str]:
    """``["size=224", "mean=0.5,0.5,0.5"]`` → ``{"size": "224", "mean": "0.5,0.5,0.5"}``."""
    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CalibrationError(f"Bad --data-arg {item!r}.", expected="KEY=VALUE, e.g. size=224")
        parsed[key] = value
    return parsed


IN_MEMORY = "trtmix-data:"  # the spec prefix of data a Python caller handed over (``register_splits``)
REGISTERED: dict[str, dict[str, list[Feed]]] = {}


def register_splits(splits: Mapping[str, Iterable[Feed]]) -> str:
    """A data spec for feeds given in memory, split name → feeds (``api.compile(model, out, data={...})``).

    The spec holds a hash of every array, so the journal and the calibration cache notice changed data.
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise CalibrationError(f"Unknown split(s) {', '.join(unknown)} in the data given.",
                               expected=f"keys among {', '.join(SPLITS)}")  # fmt: skip
    materialised = {split: [dict(feed) for feed in feeds] for split, feeds in splits.items()}
    digest = hashlib.sha256()
    for split in sorted(materialised):
        for feed in materialised[split]:
            for name in sorted(feed):
                array = np.ascontiguousarray(feed[name])
                digest.update(f"{split}/{name}/{array.dtype}/{array.shape}".encode())
                digest.update(array.tobytes())
    spec = f"{IN_MEMORY}{digest.hexdigest()[:24]}"
    REGISTERED[spec] = materialised
    return spec


def is_in_memory(spec: str) -> bool:
    """True for data handed over in memory (no recipe module to ask for labels or extras)."""
    return spec.startswith(IN_MEMORY)


def load_batches(spec: str, split: str = "calibration", batch_size: int = 8, **options: str) -> Iterable[Feed]:
    """The feeds of ``split`` from a recipe spec, an ``.npz`` file, an image folder or data given in memory."""
    if split not in SPLITS:
        raise CalibrationError(f"Unknown split {split!r}.", expected=f"one of {', '.join(SPLITS)}")
    if is_in_memory(spec):
        if spec not in REGISTERED:
            raise CalibrationError("Data given in memory is gone (another process?).",
                                   fix="pass a recipe file for jobs on Ray workers")  # fmt: skip
        if split not in REGISTERED[spec]:
            raise CalibrationError(f"The data given has no {split!r} split.",
                                   expected=f"a dict with {', '.join(SPLITS)} → lists of feeds")  # fmt: skip
        return iter(REGISTERED[spec][split])
    if spec.endswith(".npz"):
        return _npz_batches(Path(spec), split, int(options.pop("batch_size", batch_size)), options)
    if Path(spec).is_dir():
        return image_folder_batches(Path(spec), split, batch_size=int(options.pop("batch_size", batch_size)), **options)
    function = load_function(spec, default_function="load_data")
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [key for key in options if key not in parameters and not accepts_any]
    if unknown:
        raise CalibrationError(
            f"Data recipe {spec} takes no argument {', '.join(unknown)}.",
            expected=f"one of {', '.join(p for p in parameters if p != 'split') or '(none)'}",
        )
    kwargs: dict[str, Any] = dict(options)
    if "split" in parameters or accepts_any:
        kwargs["split"] = split
    what = f"data recipe {spec} ({split} split)"
    try:
        batches = function(**kwargs)
    except TrtmixError:
        raise
    except Exception as err:
        raise CalibrationError(user_error(err, what), fix=USER_FIX) from err
    return guarded(batches, what, CalibrationError)


def split_indices(count: int, split: str, seed: int = 0) -> np.ndarray:
    """Indices of one split: a seeded permutation of ``range(count)`` cut into three disjoint parts."""
    order = np.random.default_rng(seed).permutation(count)
    parts = np.array_split(order, len(SPLITS))
    return np.sort(parts[SPLITS.index(split)])


def _npz_batches(path: Path, split: str, batch_size: int, options: dict[str, str]) -> Iterator[Feed]:
    if options:
        raise CalibrationError(f"An .npz source takes only batch_size (got {sorted(options)}).")
    if not path.is_file():
        raise CalibrationError(f"Data file {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as err:  # object arrays: loading them needs pickle, which can run code
        raise CalibrationError(
            f"{path} holds object arrays ({err}).",
            expected="numeric arrays (trtmix loads .npz without pickle, which could run code from the file)",
            fix="save plain numeric arrays, e.g. np.savez(path, input=np.stack(rows).astype(np.float32))",
        ) from err
    except (OSError, EOFError) as err:
        raise CalibrationError(f"{path} is not a readable .npz file ({err}).") from err
    if not arrays:
        raise CalibrationError(f"{path} holds no arrays.", expected="one array per model input, keyed by input name")
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
        raise CalibrationError(
            f"{path}: arrays have different first-axis lengths {sorted(lengths)}.",
            expected="one sample per row in every array",
        )
    rows = split_indices(lengths.pop(), split)
    for start in range(0, len(rows), batch_size):
        chosen = rows[start : start + batch_size]
        yield {name: array[chosen] for name, array in arrays.items()}


def image_folder_batches(
    folder: Path,
    split: str,
    batch_size: int = 8,
    input_name: str = "input",
    size: str | int = 224,
    resize: str | int = 256,
    mean: str = "0.485,0.456,0.406",
    std: str = "0.229,0.224,0.225",
    scale: str | float = 255.0,
    layout: str = "NCHW",
) -> Iterator[Feed]:
    """RGB images of a folder: shorter side resized to ``resize``, centre crop ``size``, (x/scale − mean)/std."""
    try:
        from PIL import Image
    except ImportError as err:
        raise CalibrationError("Reading an image folder needs Pillow.", fix="pip install pillow") from err
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"{folder} holds no images.", expected=f"files ending in {', '.join(IMAGE_SUFFIXES)}")
    mean_values = np.array([float(v) for v in str(mean).split(",")], np.float32)
    std_values = np.array([float(v) for v in str(std).split(",")], np.float32)
    chosen = [files[i] for i in split_indices(len(files), split)]
    crop, short = int(size), int(resize)
    for start in range(0, len(chosen), batch_size):
        images = []
        for path in chosen[start : start + batch_size]:
            rgb = _open_rgb(path, Image)
            ratio = short / min(rgb.size)
            rgb = rgb.resize((max(crop, round(rgb.width * ratio)), max(crop, round(rgb.height * ratio))))
            left, top = (rgb.width - crop) // 2, (rgb.height - crop) // 2
            array = np.asarray(rgb.crop((left, top, left + crop, top + crop)), np.float32)
            images.append((array / float(scale) - mean_values) / std_values)
        batch = np.stack(images)
        yield {input_name: np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if layout == "NCHW" else batch)}


def _open_rgb(path: Path, image_module: Any) -> Any:
    """An image file as RGB, or a clear error naming the file that cannot be read."""
    try:
        with image_module.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds (OSError, SyntaxError, AttributeError ...)
        raise CalibrationError(
            f"cannot read image {path}: {type(err).__name__}: {err}", fix="remove or replace the damaged file"
        ) from err


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


def checked_batches(
    batches: Iterable[object], model: onnx.ModelProto, limit: int | None = None, split: str | None = None
) -> Iterator[Feed]:
    """Validated feeds from ``batches`` (of ``split``, named in errors), at most ``limit``; none is an error."""
    specs = model_input_specs(model)
    count = 0
    for index, feed in enumerate(batches):
        if limit is not None and index >= limit:
            break
        count += 1
        yield check_feed(feed, specs, index)
    if count == 0:
        raise CalibrationError(
            f"The data recipe yielded no batches{f' for the {split} split' if split else ''}.",
            expected="at least one feed",
            fix="check the recipe's split and file paths",
        )
