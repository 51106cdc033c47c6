"""A small (2+1)D CNN over clips: what a shapes_video clip shows (shapes, colours, motions, sizes,
background), as independent yes/no attributes.

Its penultimate layer is the feature net of FVD-<name> (``genforge.eval.fvd``). Each block is a
spatial 3x3 conv then a temporal 3-tap conv (R(2+1)D, Tran et al. 2018): about a third of a full 3x3x3
conv's work, which matters on one CPU thread, and the temporal convs see frame-to-frame change, so
the features carry motion and not only appearance. The features flatten the last map (as
``cnn.Classifier`` does) instead of averaging it, so where things are stays in them.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import register_model


def _block(cin: int, cout: int, pool_t: int, spatial: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(spatial):
        layers += [nn.Conv3d(cin if i == 0 else cout, cout, (1, 3, 3), padding=(0, 1, 1), bias=False),
                   nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]
    layers += [nn.Conv3d(cout, cout, (3, 1, 1), padding=(1, 0, 0), bias=False), nn.BatchNorm3d(cout),
               nn.ReLU(inplace=True), nn.MaxPool3d((pool_t, 2, 2))]
    return nn.Sequential(*layers)


@register_model("video_cnn")
class VideoClassifier(nn.Module):
    """Inputs are clips in [-1, 1] of shape (N, frames, channels, image_size, image_size); outputs are
    ``num_outputs`` logits (multi-label: one sigmoid each)."""

    def __init__(
        self,
        channels: int = 3,
        image_size: int = 32,
        frames: int = 8,
        num_outputs: int = 32,
        width: int = 16,
        feature_dim: int = 128,
        dropout: float = 0.2,
        spatial_convs: tuple[int, ...] = (1, 2, 2),
    ):
        super().__init__()
        if image_size < 8 or image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (three 2x poolings), got {image_size}")
        if frames < 4:
            raise ValueError(f"frames must be at least 4 (two 2x poolings in time), got {frames}")
        if num_outputs < 1 or width < 1 or feature_dim < 1:
            raise ValueError("num_outputs, width and feature_dim must be positive")
        if len(spatial_convs) != 3 or min(spatial_convs) < 1:
            raise ValueError(f"spatial_convs gives each of the 3 blocks >= 1 spatial convs, got {spatial_convs}")
        self.channels, self.image_size, self.frames = channels, image_size, frames
        # one spatial conv at full size (most of the cost), two below it, where shapes are told apart:
        # with one each (500 steps) colours and shapes were barely learned
        self.body = nn.Sequential(_block(channels, width, 1, spatial_convs[0]),
                                  _block(width, width * 2, 2, spatial_convs[1]),
                                  _block(width * 2, width * 4, 2, spatial_convs[2]))
        flat = width * 4 * (frames // 4) * (image_size // 8) ** 2
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(flat, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_outputs))
        self.feature_dim, self.num_outputs = feature_dim, num_outputs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or tuple(x.shape[1:]) != (self.frames, self.channels, self.image_size, self.image_size):
            raise ValueError(f"expected clips (N, {self.frames}, {self.channels}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(x.shape)}")
        return self.neck(self.body(x.transpose(1, 2)))  # Conv3d wants (N, C, T, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
