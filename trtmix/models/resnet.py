"""A ResNet built in code (no torchvision): ResNet-18/50-shaped networks for latency scaling runs.

The weights are random (seeded) and BatchNorm statistics are set from a forward pass over random data, so
activations have realistic ranges; use these for latency only, never for accuracy claims.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 Conv+BN, an identity or 1×1 projection shortcut, ReLU after the Add."""

    expansion = 1

    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = _shortcut(inputs, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4), with a projection shortcut where shapes change."""

    expansion = 4

    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.shortcut = _shortcut(inputs, width * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


def _shortcut(inputs: int, outputs: int, stride: int) -> nn.Module:
    if stride == 1 and inputs == outputs:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))


class ResNet(nn.Module):
    """Stem, four stages, global pooling and a classifier."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: list[int], classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        stages, channels = [], 64
        for index, depth in enumerate(depths):
            width = 64 * 2**index
            blocks = []
            for position in range(depth):
                blocks.append(block(channels, width, 2 if position == 0 and index > 0 else 1))
                channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, classes)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the graph input's name, as in torch.nn
        return self.fc(self.stages(self.stem(input)).mean(dim=(2, 3)))


def _prepared(model: ResNet, batch: int, size: int, seed: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Set BatchNorm statistics from random data, switch to eval, and return a seeded sample input."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size, generator=generator))
    return model.eval(), (torch.randn(batch, 3, size, size, generator=generator),)


def resnet18(batch: int = 8, size: int = 224, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """ResNet-18 shape, random weights: for latency only."""
    torch.manual_seed(seed)
    return _prepared(ResNet(BasicBlock, [2, 2, 2, 2]), batch, size, seed)


def resnet50(batch: int = 8, size: int = 224, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """ResNet-50 shape, random weights: for latency only."""
    torch.manual_seed(seed)
    return _prepared(ResNet(Bottleneck, [3, 4, 6, 3]), batch, size, seed)
