"""Datasets: each source registers a loader returning an in-memory ImageSet.

A dataset never knows about models. Images are kept as uint8 tensors (N, C, H, W) already at the
configured size, so a training step only indexes, converts and augments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..config import DataConfig
from ..registry import DATASETS


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: Optional[torch.Tensor] = None  # int64, (N,)
    class_names: Optional[list[str]] = None
    captions: Optional[list[str]] = None
    specs: Optional[list[Any]] = None  # structured scene specs (shapes)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0


def load_dataset(cfg: DataConfig) -> ImageSet:
    """Build the dataset named by ``cfg.name`` (see ``DATASETS.names()``)."""
    from . import digits, fashion, folder, shapes  # noqa: F401  (register the sources)

    return DATASETS.get(cfg.name)(cfg)
