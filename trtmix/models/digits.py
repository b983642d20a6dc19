"""scikit-learn's labelled digits (1,797 real 8×8 images, 10 classes) as 16×16 inputs, with disjoint splits.

Half the images are for training (``train``); the other half is cut into ``calibration``, ``search`` and
``holdout``.  Labels come from ``load_labels``, in the same order as ``load_data`` yields the images.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

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
    """Full batches ``{"input": (batch, 1, 16, 16) float32}`` of one split, in a fixed order.

    A static-batch export takes no partial batch, so the remainder is left out; ``load_labels`` covers every row
    and callers cut it to the rows they evaluated.
    """
    images, _ = _digits()
    rows = split_rows(split)
    for start in range(0, len(rows) - batch + 1, batch):
        yield {"input": images[rows[start : start + batch]]}


def load_labels(split: str = "calibration") -> np.ndarray:
    """The labels of ``split`` in ``load_data`` order."""
    return _digits()[1][split_rows(split)]


def small_resnet(seed: int = 0, epochs: int = 15, batch: int = 32) -> tuple[Any, tuple[Any, ...]]:
    """A ResNet (16-32-64 channels, two BasicBlocks per stage) trained on the ``train`` split, in eval mode.

    Trains in a few seconds on 2 cores (AdamW, one-cycle schedule, ±1 pixel random shifts); real labels, so its
    test accuracy is a real accuracy.  Returns ``(model, (sample batch,))`` like every factory.  The trained model
    is kept for the process (a copy is returned), so the export and the Hessian see the very same weights.
    """
    import copy

    import torch

    images, _ = _digits()
    sample = torch.from_numpy(images[split_rows("calibration", seed)[:batch]])
    return copy.deepcopy(_trained_resnet(seed, epochs, batch)), (sample,)


@functools.lru_cache(maxsize=2)
def _trained_resnet(seed: int, epochs: int, batch: int) -> Any:
    import torch

    from trtmix.models.resnet import BasicBlock

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        BasicBlock(16, 16, 1), BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1),
        BasicBlock(32, 64, 2), BasicBlock(64, 64, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    )  # fmt: skip
    images, labels = _digits()
    rows = split_rows("train", seed)
    x, y = torch.from_numpy(images[rows]), torch.from_numpy(labels[rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(rows) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=generator)
        for start in range(0, len(rows), batch):
            index = order[start : start + batch]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            inputs = torch.roll(x[index], shifts=shift, dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(inputs), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()
