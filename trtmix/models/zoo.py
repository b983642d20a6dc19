"""Graphs trtmix did not write: ``transformers`` models exported the way their users export them.

Each entry builds a seeded, randomly initialised ``transformers`` model from a config (no hub download) at two sizes:
``small`` (2 layers, narrow, for the test suite) and ``real`` (the published architecture: BERT-base, DistilBERT-base,
GPT-2 small, ViT-B/16, ResNet-50, MobileNetV2 1.0); BERT also at ``large`` (BERT-large, for the scaling benchmark).
``export_as_user`` calls ``torch.onnx.export`` directly, as a user does, not trtmix's exporter: the graph keeps the
exporter's own node names, output names and (dynamo) external data.

Legacy exports of the text models go through a three-line wrapper that passes the inputs by keyword: ``transformers``
5 models cannot be traced with positional inputs (``forward() got multiple values for argument 'use_cache'``), and
that wrapper is what users write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TEXT_MODELS = ("bert", "distilbert", "gpt2")
IMAGE_MODELS = ("vit", "resnet", "mobilenetv2")
ZOO = TEXT_MODELS + IMAGE_MODELS
SIZES = ("small", "real", "large")
VOCAB = {"small": 1000, "real": 30522, "large": 30522}
SHAPES = {"small": {"batch": 2, "sequence": 16, "image": 32}, "real": {"batch": 1, "sequence": 128, "image": 224},
          "large": {"batch": 1, "sequence": 128, "image": 224}}  # fmt: skip
LARGE = {"bert": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}}


@dataclass
class ZooModel:
    """A model ready to export: the module, example inputs in ``forward`` order, their names, and its kind."""

    name: str
    size: str
    module: torch.nn.Module
    samples: tuple[torch.Tensor, ...]
    input_names: list[str]
    kind: str  # "text" or "image"


def zoo_model(name: str, size: str = "small", seed: int = 0, attention: str | None = None) -> ZooModel:
    """The ``transformers`` model ``name`` at ``size``, seeded random weights, in eval mode.

    ``attention="eager"`` selects the plain attention, which opsets below 14 need (they lack
    ``scaled_dot_product_attention``).
    """
    if name not in ZOO or size not in SIZES:
        raise ValueError(f"unknown zoo model {name!r} / size {size!r}: models {ZOO}, sizes {SIZES}")
    torch.manual_seed(seed)
    module = _build(name, size).eval()
    if attention is not None:
        module.set_attn_implementation(attention)
    shape = SHAPES[size]
    if name in TEXT_MODELS:
        ids = torch.randint(0, VOCAB[size], (shape["batch"], shape["sequence"]))
        mask = torch.ones_like(ids)
        mask[-1, shape["sequence"] // 2 :] = 0  # one padded row: the attention mask adds -inf there
        return ZooModel(name, size, module, (ids, mask), ["input_ids", "attention_mask"], "text")
    pixels = torch.randn(shape["batch"], 3, shape["image"], shape["image"])
    _settle_batchnorm(module, pixels)
    return ZooModel(name, size, module, (pixels,), ["pixel_values"], "image")


def _settle_batchnorm(module: torch.nn.Module, pixels: torch.Tensor, passes: int = 4) -> None:
    """Give BatchNorm layers the running statistics of the data, as training would.

    At random init the running statistics are mean 0, variance 1, so a deep CNN in eval mode shrinks its activations
    layer by layer (MobileNetV2's output was ~1e-26): a degenerate model whose INT8 error says nothing. A few
    forward passes in train mode with a cumulative average fix that; the model goes back to eval mode.
    """
    layers = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average over the passes
    module.train()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for _ in range(passes):
            module(torch.randn(pixels.shape, generator=generator))
    module.eval()


def _build(name: str, size: str) -> torch.nn.Module:
    """The model from its config; ``small`` shrinks depth and width, ``real`` is the published architecture."""
    import transformers as tf

    small = size == "small"
    text = {"vocab_size": VOCAB[size]}
    if size == "large":  # BERT-large only: the scaling benchmark's largest model
        if name not in LARGE:
            raise ValueError(f"size 'large' exists for {sorted(LARGE)} only, not {name!r}")
        return tf.BertModel(tf.BertConfig(**text, **LARGE[name]))
    if name == "bert":
        narrow = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
        return tf.BertModel(tf.BertConfig(**text, **(narrow if small else {})))
    if name == "distilbert":
        narrow = {"dim": 64, "n_layers": 2, "n_heads": 2, "hidden_dim": 128}
        return tf.DistilBertModel(tf.DistilBertConfig(**text, **(narrow if small else {})))
    if name == "gpt2":
        narrow = {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 64}
        return tf.GPT2Model(tf.GPT2Config(**text, use_cache=False, **(narrow if small else {})))
    if name == "vit":
        narrow = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
                  "image_size": 32, "patch_size": 8}  # fmt: skip
        return tf.ViTForImageClassification(tf.ViTConfig(num_labels=10 if small else 1000, **(narrow if small else {})))
    if name == "resnet":
        narrow = {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], "layer_type": "basic"}
        return tf.ResNetForImageClassification(tf.ResNetConfig(num_labels=10 if small else 1000,
                                                               **(narrow if small else {})))  # fmt: skip
    narrow = {"depth_multiplier": 0.35, "image_size": 32}
    return tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(num_labels=10 if small else 1000,
                                                                     **(narrow if small else {})))  # fmt: skip


class KeywordInputs(torch.nn.Module):
    """What a user wraps a ``transformers`` text model in for the legacy exporter: inputs by keyword, tuple out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)


def export_as_user(
    model: ZooModel,
    path: str | Path,
    exporter: str = "dynamo",
    opset: int | None = None,
    dynamic: bool = False,
) -> Path:
    """``torch.onnx.export`` as a user calls it; ``dynamic`` makes batch (and sequence) axes symbolic (legacy only).

    The dynamo exporter writes weights to ``<path>.data`` (external data); the legacy one writes one file.
    """
    path = Path(path)
    opset = opset or (18 if exporter == "dynamo" else 17)
    if exporter == "dynamo":
        samples: tuple[Any, ...] = model.samples
        if model.kind == "text":  # keyword inputs, as one calls a transformers model
            samples = (model.samples[0], {"attention_mask": model.samples[1]})
        torch.onnx.export(model.module, samples, str(path), dynamo=True, opset_version=opset,
                          input_names=model.input_names, verbose=False)  # fmt: skip
        return path
    module = KeywordInputs(model.module) if model.kind == "text" else model.module
    axes = None
    if dynamic:
        names = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                 "pixel_values": {0: "batch"}}  # fmt: skip
        axes = {name: names[name] for name in model.input_names}
    torch.onnx.export(module, model.samples, str(path), dynamo=False, opset_version=opset,
                      input_names=model.input_names, dynamic_axes=axes)  # fmt: skip
    return path
