"""Input feeds for timing: the first batch of a data recipe, or seeded random tensors shaped like the inputs."""

from __future__ import annotations

import logging

import numpy as np
import onnx

from trtmix.data import checked_batches, load_batches, model_input_specs
from trtmix.errors import TrtmixError

LOG = logging.getLogger(__name__)


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
    model: onnx.ModelProto, data: str | None, dims: dict[str, int], seed: int = 0
) -> dict[str, np.ndarray]:
    """One feed: the first batch of ``data`` if given, else random normal floats / 0-1 integers.

    Symbolic dimensions take their value from ``dims`` and default to 1.
    """
    if data:
        return next(iter(checked_batches(load_batches(data, "calibration"), model, limit=1)))
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (dtype, shape) in model_input_specs(model).items():
        concrete = []
        for dim in shape:
            if isinstance(dim, int):
                concrete.append(dim)
            else:
                concrete.append(dims.get(dim, 1))
                if dim not in dims:
                    LOG.info("input %s: dimension %r set to 1 (use --dim %s=N)", name, dim, dim)
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 2, size=concrete).astype(dtype)
    return feeds
