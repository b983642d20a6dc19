"""Input feeds for timing: the first batch of a data recipe, or seeded random tensors shaped like the inputs."""

from __future__ import annotations

import numpy as np
import onnx

from trtmix.data.recipe import Recipe
from trtmix.data.recipes import model_input_specs
from trtmix.errors import TrtmixError


def parse_profiles(items: list[str] | None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``["input:1x3x8x8:2x3x8x8:4x3x8x8"]`` → ``{"input": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))}``."""
    profiles = {}
    for item in items or []:
        parts = item.split(":")
        try:
            shapes = [tuple(int(d) for d in part.split("x")) for part in parts[1:]]
        except ValueError:
            shapes = []
        if len(parts) != 4 or len(shapes) != 3:
            raise TrtmixError(
                f"Bad --trt-shapes {item!r}.",
                expected="NAME:MIN:OPT:MAX, e.g. input:1x3x224x224:8x3x224x224:32x3x224x224",
            )
        profiles[parts[0]] = (shapes[0], shapes[1], shapes[2])
    return profiles


def tensorrt_settings(args: object) -> dict[str, object]:
    """BuildSettings fields from the --trt-shapes / --workspace-mb / --builder-optimization-level flags."""
    return {
        "profiles": parse_profiles(getattr(args, "trt_shapes", None)),
        "workspace_mb": getattr(args, "workspace_mb", None),
        "optimization_level": getattr(args, "builder_optimization_level", None),
        "tf32": not getattr(args, "no_tf32", False),
    }


def parse_dims(items: list[str] | None) -> dict[str, int]:
    """``["batch=8", "seq=128"]`` → ``{"batch": 8, "seq": 128}``."""
    dims = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit() or int(value) < 1:
            raise TrtmixError(f"Bad --dim {item!r}.", expected="NAME=POSITIVE_INT, e.g. batch=8")
        dims[name] = int(value)
    return dims


def timing_feeds(
    model: onnx.ModelProto,
    data: str | None,
    dims: dict[str, int],
    seed: int = 0,
    data_args: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """One feed: the first batch of ``data`` if given, else random normal floats / 0-1 integers.

    Without data, every symbolic dimension needs a value from ``dims`` (``--dim``): a guessed sequence length or
    batch would time a shape the user never runs, so a missing one is an error that lists them all.
    """
    if data:
        return Recipe.of(data, data_args or {}).batches(model, "calibration", 1)[0]
    specs = model_input_specs(model)
    _require_dims(specs, dims)
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (dtype, shape) in specs.items():
        concrete = [dim if isinstance(dim, int) else dims[_dim_key(name, axis, dim)] for axis, dim in enumerate(shape)]
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 2, size=concrete).astype(dtype)
    return feeds


def _dim_key(input_name: str, axis: int, dim: str) -> str:
    """What ``--dim`` calls a symbolic dimension: its name, or ``INPUT:AXIS`` when the graph left it unnamed."""
    return f"{input_name}:{axis}" if dim == "?" else dim


def _require_dims(specs: dict[str, tuple[type, tuple[int | str, ...]]], dims: dict[str, int]) -> None:
    """An error naming every symbolic dimension that ``dims`` leaves open, with the flag that fills it."""
    missing: dict[str, list[str]] = {}
    for name, (_, shape) in specs.items():
        for axis, dim in enumerate(shape):
            if isinstance(dim, str) and _dim_key(name, axis, dim) not in dims:
                missing.setdefault(_dim_key(name, axis, dim), []).append(f"{name}[{axis}]")
    if missing:
        listed = "; ".join(f"{dim!r} ({', '.join(where)})" for dim, where in missing.items())
        example = "--dim " + " ".join(f"{dim}=N" for dim in missing)
        raise TrtmixError(
            f"The model's inputs have symbolic dimensions with no value: {listed}.",
            expected="a value for each, or a data recipe whose batches give the shapes",
            fix=f"pass {example} (e.g. batch=1, sequence=128), or --data recipe.py",
        )
