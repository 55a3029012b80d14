"""Small plain-torch CNNs for CPU inference (no timm/torchvision).

:class:`PatchNet` is a VGG-like stack of 3×3 convolutions with batch norm and ReLU, stride 2 at every stage, then
global average pooling and a linear layer giving two logits (normal, tumour). It is sized for speed on 2 CPU
cores: at 96 px input and ``width=16`` it costs ≈ 50 MFLOP per patch (0.29 M parameters).
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class PatchNet(nn.Module):
    """Patch classifier: (N, 3, P, P) float32 → (N, 2) logits. ``width`` = channels of the first stage."""

    def __init__(self, width: int = 16, n_classes: int = 2, dropout: float = 0.3) -> None:
        super().__init__()
        w = width
        self.width = width
        self.features = nn.Sequential(
            *_conv(3, w, 2),            # P/2
            *_conv(w, 2 * w, 2),        # P/4
            *_conv(2 * w, 2 * w, 1),
            *_conv(2 * w, 4 * w, 2),    # P/8
            *_conv(4 * w, 4 * w, 1),
            *_conv(4 * w, 8 * w, 2),    # P/16
            *_conv(8 * w, 8 * w, 1),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * w, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
