"""A small contrastive text-image model (CLIP-shaped): a CNN image encoder and a transformer text
encoder over the run's tokenizer, both projected to one unit-norm embedding space, and a learned
temperature. It scores how well an image matches a caption, which is what R-precision needs.

The image encoder keeps its last feature map's layout (flatten, not global pooling): captions name
grid cells and relations ("above", "left of"), and pooling everything away would discard where an
object sits. The text side reads the state at the [EOS] marker, whose attention has seen every
token in order, so "a red circle above a blue square" and its swap embed differently.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_model
from ..text.encoders import TransformerTextEncoder


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    # GroupNorm rather than BatchNorm: a contrastive batch's statistics would leak between its pairs
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(min(8, cout), cout), nn.SiLU()]


@register_model("clip")
class ContrastiveTextImage(nn.Module):
    """``encode_image`` (N, C, H, W) in [-1, 1] and ``encode_text`` (ids, mask) -> (N, embed_dim),
    unit norm; ``forward`` gives the (N_images, N_texts) logits scaled by the learned temperature."""

    def __init__(self, channels: int = 3, image_size: int = 32, width: int = 32, embed_dim: int = 128,
                 vocab_size: int = 256, context: int = 32, text_dim: int = 96, text_layers: int = 2,
                 text_heads: int = 4, init_temperature: float = 0.07):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (three 2x downsamplings), got {image_size}")
        if not 0 < init_temperature < 1:
            raise ValueError(f"init_temperature must be in (0, 1), got {init_temperature}")
        w = width
        self.image = nn.Sequential(*_block(channels, w, 1), *_block(w, 2 * w, 2), *_block(2 * w, 4 * w, 2),
                                   *_block(4 * w, 4 * w, 2), nn.Flatten(),
                                   nn.Linear(4 * w * (image_size // 8) ** 2, embed_dim))
        self.text = TransformerTextEncoder(vocab_size, text_dim, text_layers, text_heads, context)
        self.text_proj = nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.channels, self.image_size, self.context = channels, image_size, context

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(images), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.text(ids, mask)
        last = mask.long().sum(1).clamp_min(1) - 1  # the [EOS] marker ends every padded row's text
        pooled = states[torch.arange(len(ids), device=ids.device), last]
        return F.normalize(self.text_proj(pooled), dim=-1)

    def scale(self) -> torch.Tensor:
        # CLIP's cap of 100: beyond it the softmax saturates and training becomes unstable
        return self.logit_scale.exp().clamp(max=100.0)

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.scale() * self.encode_image(images) @ self.encode_text(ids, mask).T


def info_nce(logits: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of (image, text) pairs whose logits are ``logits[i, j]``.

    ``same[i, j]`` marks pairs whose captions are identical text: a repeated caption is a correct
    match, not a negative, so the target spreads evenly over them (the diagonal when ``same`` is None).
    """
    n = logits.shape[0]
    if same is None:
        target = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    t = same.to(logits.dtype)
    t_rows, t_cols = t / t.sum(1, keepdim=True), t.T / t.T.sum(1, keepdim=True)
    return (F.cross_entropy(logits, t_rows) + F.cross_entropy(logits.T, t_cols)) / 2
