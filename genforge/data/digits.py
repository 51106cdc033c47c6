"""scikit-learn's 8x8 handwritten digits (1797 images, shipped with sklearn, no download).

Tiny and always available, which makes it the dataset of choice for smoke tests and CI.
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import DataConfig
from ..registry import register_dataset
from . import ImageSet
from .transforms import match_channels, resize_images

# A fixed cut, not a shuffled one, so the split never depends on a seed or a library version.
TRAIN_ITEMS = 1500


@register_dataset("digits")
def load_digits_dataset(cfg: DataConfig) -> ImageSet:
    """Digits 0-9 upscaled (bicubic) to ``cfg.image_size``; items 0..1499 train, the rest test."""
    from sklearn.datasets import load_digits  # lazy: sklearn import costs ~1 s

    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float32)  # (N, 8, 8) in 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    sl = slice(0, TRAIN_ITEMS) if cfg.split == "train" else slice(TRAIN_ITEMS, None)
    pixels, labels = pixels[sl], labels[sl]
    if cfg.limit is not None:
        pixels, labels = pixels[: cfg.limit], labels[: cfg.limit]
    u8 = torch.from_numpy(np.round(pixels * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    # Bicubic keeps 8 px strokes crisp when blown up 4-8x; resize_images clamps its overshoot.
    images = resize_images(u8, cfg.image_size, mode="bicubic")
    return ImageSet(
        images=match_channels(images, cfg.channels),
        labels=torch.from_numpy(labels),
        class_names=[str(d) for d in range(10)],
        meta={"name": "digits", "split": cfg.split,
              "license": "CC BY 4.0: UCI 'Optical Recognition of Handwritten Digits' (E. Alpaydin, C. Kaynak), "
                         "the copy scikit-learn ships"},
    )
