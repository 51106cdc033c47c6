"""A classic recognition CNN (conv-BN-ReLU blocks with pooling, then fully connected layers).

Also the default feature net for FID-<featurenet>: ``features`` returns the penultimate layer.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import register_model


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


@register_model("cnn")
class Classifier(nn.Module):
    """Inputs are images in [-1, 1] of shape (N, in_channels, image_size, image_size)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 32,
        width: int = 32,
        feature_dim: int = 256,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.body = nn.Sequential(
            _block(in_channels, width), _block(width, width * 2), _block(width * 2, width * 4)
        )
        side = image_size // 8
        self.neck = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 4 * side * side, feature_dim), nn.ReLU(inplace=True)
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
