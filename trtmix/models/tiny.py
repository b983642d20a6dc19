"""Tiny seeded models for tests, examples and smoke runs.

Each factory returns ``(model, sample_inputs)``, the contract ``trtmix export MODULE:FUNCTION`` expects, so
``trtmix export trtmix.models.tiny:convnet -o convnet.onnx`` works out of the box.  The weights are random but
seeded, and BatchNorm statistics are set to non-trivial values so that folding them is a real test.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _seeded_batchnorm(channels: int, generator: torch.Generator) -> nn.BatchNorm2d:
    """A BatchNorm whose running statistics are not the identity, so folding it changes the conv weights."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
        bn.running_var.copy_(torch.rand(channels, generator=generator) * 0.5 + 0.75)
        bn.weight.copy_(torch.rand(channels, generator=generator) * 0.5 + 0.75)
        bn.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
    return bn


class TinyConvNet(nn.Module):
    """Conv+BN+ReLU stem, one residual block (with an Add), a strided Conv+BN+ReLU6, global pooling and a Linear."""

    def __init__(self, generator: torch.Generator, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = _seeded_batchnorm(8, generator)
        self.block_conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.block_bn1 = _seeded_batchnorm(8, generator)
        self.block_conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.block_bn2 = _seeded_batchnorm(8, generator)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.down_bn = _seeded_batchnorm(16, generator)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the graph input's name, as in torch.nn
        x = input
        y = torch.relu(self.stem_bn(self.stem(x)))
        z = torch.relu(self.block_bn1(self.block_conv1(y)))
        z = self.block_bn2(self.block_conv2(z))
        y = torch.relu(z + y)
        y = torch.clamp(self.down_bn(self.down(y)), 0.0, 6.0)
        return self.fc(y.mean(dim=(2, 3)))


class TinyEncoderLayer(nn.Module):
    """A BERT-style encoder layer: separate q/k/v projections, softmax attention, GELU feed-forward, post-norm."""

    def __init__(self, width: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.attn_out = nn.Linear(width, width)
        self.norm1 = nn.LayerNorm(width)
        self.ffn_in = nn.Linear(width, ffn)
        self.ffn_out = nn.Linear(ffn, width)
        self.norm2 = nn.LayerNorm(width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        return x.reshape(batch, seq, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(width // self.heads)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        context = context.transpose(1, 2).reshape(batch, seq, width)
        x = self.norm1(x + self.attn_out(context))
        return self.norm2(x + self.ffn_out(nn.functional.gelu(self.ffn_in(x))))


class TinyTransformer(nn.Module):
    """An input projection, ``layers`` encoder layers and mean pooling: a float-input stand-in for BERT."""

    def __init__(self, features: int = 16, width: int = 32, heads: int = 4, ffn: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.proj = nn.Linear(features, width)
        self.layers = nn.ModuleList(TinyEncoderLayer(width, heads, ffn) for _ in range(layers))

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the graph input's name, as in torch.nn
        x = self.proj(input)
        for layer in self.layers:
            x = layer(x)
        return x.mean(dim=1)


def convnet(seed: int = 0, batch: int = 2, size: int = 16) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The tiny residual conv net in eval mode and one seeded ``(batch, 3, size, size)`` sample input."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyConvNet(generator).eval()
    return model, (torch.randn(batch, 3, size, size, generator=generator),)


def transformer(seed: int = 0, batch: int = 2, seq: int = 8) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The tiny 2-layer transformer encoder in eval mode and one seeded ``(batch, seq, 16)`` sample input."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyTransformer().eval()
    return model, (torch.randn(batch, seq, 16, generator=generator),)
