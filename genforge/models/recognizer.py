"""Multi-attribute recognition of ``shapes`` scenes: per grid cell, is there an object and what is it.

The input is resampled to a side that is a multiple of the 3x3 grid, so that after the pooling
stages each of the 3x3 output features covers exactly one cell; one shared 1x1 head then reads every
cell (an object looks the same wherever it sits), with a learnt per-cell offset because the 32 px
renderings put cell borders at different sub-pixel phases. The background is read from the pooled
features of the whole image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.shapes import BACKGROUNDS, COLORS, GRID, SHAPES, SIZES
from ..registry import register_model

#: the logits of one cell, in this order along the channel axis
CELL_FIELDS: tuple[tuple[str, int], ...] = (("occupied", 1), ("shape", len(SHAPES)), ("color", len(COLORS)),
                                            ("size", len(SIZES)))
CELL_LOGITS = sum(n for _, n in CELL_FIELDS)
#: background classes: index 0 is "none" (black), then shapes.BACKGROUNDS in order
BACKGROUND_CLASSES: tuple[str | None, ...] = (None, *BACKGROUNDS)


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("recognizer")
class SceneRecognizer(nn.Module):
    """Images in [-1, 1] (N, channels, image_size, image_size) -> dict of logits:

    ``occupied`` (N, 9), ``shape`` (N, 9, 5), ``color`` (N, 9, 8), ``size`` (N, 9, 2) for the cells in
    row-major order, and ``background`` (N, 5) over ``BACKGROUND_CLASSES``.
    """

    def __init__(self, channels: int = 3, image_size: int = 32, width: int = 32, cell_px: int = 12,
                 hidden: int = 128):
        super().__init__()
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 px, got {image_size}")
        if cell_px % 4 or cell_px < 4:
            # two 2x poolings, then one pooling of the remaining cell_px/4 down to one feature per cell
            raise ValueError(f"cell_px must be a positive multiple of 4, got {cell_px}")
        self.channels, self.image_size, self.side = channels, image_size, GRID * cell_px
        w = width
        self.body = nn.Sequential(
            *_conv(channels, w), *_conv(w, w), nn.MaxPool2d(2),
            *_conv(w, 2 * w), *_conv(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv(2 * w, 4 * w), *_conv(4 * w, 4 * w), nn.MaxPool2d(cell_px // 4),
        )
        self.cell_bias = nn.Parameter(torch.zeros(1, 4 * w, GRID, GRID))
        self.cell_head = nn.Sequential(nn.Conv2d(4 * w, hidden, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(hidden, CELL_LOGITS, 1))
        self.background_head = nn.Linear(4 * w, len(BACKGROUND_CLASSES))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[-1] != self.side or x.shape[-2] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        feats = self.body(x)  # (N, 4w, 3, 3): one feature vector per grid cell
        cells = self.cell_head(feats + self.cell_bias).flatten(2).transpose(1, 2)  # (N, 9, CELL_LOGITS)
        out: dict[str, torch.Tensor] = {}
        start = 0
        for name, n in CELL_FIELDS:
            out[name] = cells[..., start:start + n]
            start += n
        out["occupied"] = out["occupied"].squeeze(-1)
        out["background"] = self.background_head(feats.mean((2, 3)))
        return out
