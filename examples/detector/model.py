"""A tiny anchor-free detector, seeded: an image → per-location boxes and class scores (two outputs)."""

import torch
from torch import nn

CLASSES = 3


class TinyDetector(nn.Module):
    """Three strided convs, then a box head (cx, cy, w, h in pixels) and a class head (sigmoid) per location."""

    output_names = ("boxes", "scores")  # the ONNX output names trtmix's export gives (the metric reads them)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())  # fmt: skip
        self.box = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, CLASSES, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)
        n, _, h, w = features.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=images.dtype), torch.arange(w, dtype=images.dtype),
                                indexing="ij")  # fmt: skip
        offsets = self.box(features)
        centres = torch.stack([(xs + 0.5 + torch.tanh(offsets[:, 0])) * 8, (ys + 0.5 + torch.tanh(offsets[:, 1])) * 8])
        sizes = torch.exp(offsets[:, 2:4].clamp(-3, 3)) * 12
        boxes = torch.cat([centres.permute(1, 0, 2, 3), sizes], dim=1).flatten(2).transpose(1, 2)  # [N, A, 4]
        scores = torch.sigmoid(self.cls(features)).flatten(2).transpose(1, 2)  # [N, A, C]
        return boxes, scores


def tiny_detector() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """``(model, sample inputs)``, the factory contract of ``trtmix compile MODULE:FUNCTION``."""
    torch.manual_seed(0)
    model = TinyDetector().eval()
    with torch.no_grad():
        model.cls.bias.fill_(-1.0)  # most locations empty, a few confident, as a trained detector's
    return model, (torch.rand(2, 3, 64, 64),)
