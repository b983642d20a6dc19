"""scikit-learn's labelled digits (1,797 real 8×8 images, 10 classes) as 16×16 inputs, with disjoint splits.

Half the images are for training (``train``); the other half is cut into ``calibration``, ``search`` and
``holdout``.  Labels come from ``load_labels``, in the same order as ``load_data`` yields the images.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from trtmix.errors import ModelLoadError

SPLITS = ("train", "calibration", "search", "holdout")


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ModelLoadError("The digits data needs scikit-learn.", fix="pip install 'trtmix[demo]'") from err
    import torch

    data = load_digits()
    images = torch.from_numpy((data.images / 16.0).astype(np.float32)).unsqueeze(1)
    upscaled = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    return ((upscaled.numpy() - 0.5) / 0.5).astype(np.float32), data.target.astype(np.int64)


def split_rows(split: str, seed: int = 0) -> np.ndarray:
    """Row indices of ``split``: a seeded permutation, half for training, the rest in thirds."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    order = np.random.default_rng(seed).permutation(len(_digits()[1]))
    half = len(order) // 2
    parts = [order[:half], *np.array_split(order[half:], 3)]
    return parts[SPLITS.index(split)]


def load_data(split: str = "calibration", batch: int = 32) -> Iterator[dict[str, np.ndarray]]:
    """Feeds ``{"input": (batch, 1, 16, 16) float32}`` of one split, in a fixed order."""
    images, _ = _digits()
    rows = split_rows(split)
    for start in range(0, len(rows), batch):
        yield {"input": images[rows[start : start + batch]]}


def load_labels(split: str = "calibration") -> np.ndarray:
    """The labels of ``split`` in ``load_data`` order."""
    return _digits()[1][split_rows(split)]
