"""Ranges for a model file and a data spec (or feeds), through the calibration cache: what every command calls."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from trtmix.calibration.calibrate import CalibrationConfig, calibrate, calibrate_cached
from trtmix.calibration.ranges import Ranges
from trtmix.data.recipe import Recipe
from trtmix.ir.fold import load_float_model
from trtmix.ir.units import require_units


def default_cache_dir() -> Path:
    """The calibration cache folder: ``$TRTMIX_CACHE``, else ``$XDG_CACHE_HOME/trtmix`` or ``~/.cache/trtmix``."""
    if os.environ.get("TRTMIX_CACHE"):
        return Path(os.environ["TRTMIX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trtmix"


def collect_ranges(
    model_path: str | Path,
    data: str | Iterable[dict[str, np.ndarray]],
    split: str = "calibration",
    config: CalibrationConfig | None = None,
    *,
    data_args: dict[str, str] | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Ranges:
    """Activation (and optionally weight) ranges of every tensor a plan may quantize.

    Args:
        model_path: the float ONNX model.
        data: a recipe spec (``recipe.py[:func]``, ``module:func``, ``data.npz``, an image folder) or feeds.
        split: the split a recipe is asked for.
        config: method, percentile, batch count, weight method (default: max over 8 batches).
        data_args: keyword arguments for the recipe or loader.
        cache_dir: cache folder (a recipe spec only); None disables the cache.
        progress: show a progress bar.
    """
    model = load_float_model(model_path)
    units = require_units(model, str(model_path))
    config = config or CalibrationConfig()
    if not isinstance(data, str):
        return calibrate(model, units, data, config, progress=progress)
    spec_id = data + "".join(f" {k}={v}" for k, v in sorted((data_args or {}).items()))

    recipe = Recipe.of(data, data_args or {})
    return calibrate_cached(model, units, spec_id, lambda: recipe.raw_batches(split), split, config, cache_dir,
                            progress=progress)  # fmt: skip
