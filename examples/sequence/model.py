"""A tiny CTC text recognizer, seeded: a text-line image → per-position character logits."""

import torch
from torch import nn

ALPHABET = 12  # class 0 is the CTC blank


class TinyRecognizer(nn.Module):
    """Two convs that keep the width, the height pooled away, then a per-position linear classifier."""

    output_names = ("logits",)  # the ONNX output names trtmix's export gives (the metric reads them)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, (2, 1), 1),
                                  nn.ReLU())  # fmt: skip
        self.head = nn.Linear(32, ALPHABET)

    def forward(self, lines: torch.Tensor) -> torch.Tensor:
        features = self.body(lines).mean(dim=2).transpose(1, 2)  # [N, T, 32]
        return self.head(features)  # [N, T, ALPHABET]: logits


def tiny_recognizer() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """``(model, sample inputs)``, the factory contract of ``trtmix compile MODULE:FUNCTION``."""
    torch.manual_seed(0)
    return TinyRecognizer().eval(), (torch.rand(2, 1, 16, 32),)
