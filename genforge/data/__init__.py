"""Datasets: each source registers a loader returning an in-memory set of typed examples.

A dataset never knows about models. It is a column per field (``FIELDS`` lists the types a field may
hold), one value per example; a task reads the fields it needs and builds its own batches
(``Task.collate``), so the trainer knows no modality. Images are kept as uint8 tensors (N, C, H, W)
already at the configured size, so an image step only indexes, converts and augments.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ..config import DataConfig
from ..registry import DATASETS

#: field name -> what its column holds (one entry per example)
FIELDS: dict[str, str] = {
    "image": "uint8 tensor (N, C, H, W) at the configured size",
    "label": "int64 tensor (N,): an index into class_names",
    "caption": "list of N: an English description of the example, a str, or a list of str when an "
               "image has several",
    "spec": "list of N structured descriptions (shapes: Scene objects; shapes_video: VideoScene objects)",
    "text": "list of N str: a text sequence (language data)",
    "tokens": "list of N int64 tensors of varying length",
    "audio": "list of N float32 tensors (samples,) at meta['sample_rate']",
    "frames": "uint8 tensor (N, T, C, H, W): video clips",
    "source": "list of N str: a sentence in the source language (parallel text)",
    "target": "list of N str: the translation of the same example's source sentence",
    "phonemes": "list of N str: IPA of the example's text (espeak-ng en-us, stress and punctuation kept)",
    "mel": "list of N float32 tensors (n_mels, frames): log-mel of the audio (genforge.audio.features)",
    "speaker": "list of N str: who speaks the example's audio",
}


class Examples:
    """A dataset as typed columns: ``Examples(image=..., label=..., class_names=[...])``."""

    def __init__(self, *, class_names: Optional[list[str]] = None, meta: Optional[dict[str, Any]] = None,
                 **columns: Any):
        columns = {k: v for k, v in columns.items() if v is not None}
        unknown = [k for k in columns if k not in FIELDS]
        if unknown:
            raise ValueError(f"unknown example field {unknown[0]!r}; fields: {', '.join(FIELDS)}")
        if not columns:
            raise ValueError("a dataset needs at least one field")
        sizes = {k: len(v) for k, v in columns.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"every field needs one value per example, got lengths {sizes}")
        self.columns: dict[str, Any] = columns
        self.class_names = class_names
        self.meta: dict[str, Any] = dict(meta or {})

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.columns)

    def has(self, name: str) -> bool:
        return name in self.columns

    def column(self, name: str) -> Any:
        if name not in self.columns:
            raise KeyError(f"this dataset has no {name!r} field (it has: {', '.join(self.columns)})")
        return self.columns[name]

    def take(self, idx: torch.Tensor | Sequence[int], fields: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """The given examples' values of ``fields`` (default: all): tensors indexed, lists picked."""
        out: dict[str, Any] = {}
        for name in fields or self.columns:
            col = self.column(name)
            if torch.is_tensor(col):
                out[name] = col[torch.as_tensor(idx, dtype=torch.long)]
            else:
                out[name] = [col[int(i)] for i in idx]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.columns.items()}

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0


class ImageSet(Examples):
    """Images with optional labels, captions and scene specs: the image sources' shape of Examples."""

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 class_names: Optional[list[str]] = None, captions: Optional[list[str]] = None,
                 specs: Optional[list[Any]] = None, meta: Optional[dict[str, Any]] = None):
        super().__init__(image=images, label=labels, caption=captions, spec=specs, class_names=class_names,
                         meta=meta)

    images = property(lambda self: self.columns["image"])
    labels = property(lambda self: self.columns.get("label"))
    captions = property(lambda self: self.columns.get("caption"))
    specs = property(lambda self: self.columns.get("spec"))

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def load_dataset(cfg: DataConfig) -> Examples:
    """Build the dataset named by ``cfg.name`` (see ``DATASETS.names()``)."""
    return DATASETS.get(cfg.name)(cfg)
