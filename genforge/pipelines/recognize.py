"""Read ``shapes`` scenes back from pictures with a trained recogniser: image -> Scene -> caption."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from PIL import Image, UnidentifiedImageError

from ..data.shapes import Scene
from ..data.transforms import pil_to_uint8, resize_center_crop
from ..errors import GenforgeError
from . import Pipeline

ImageLike = Union[Image.Image, str, os.PathLike]


def open_image(item: Any) -> Image.Image:
    """A PIL image from a PIL image or a file path, fully decoded; anything else is a GenforgeError."""
    if isinstance(item, Image.Image):
        return item
    if not isinstance(item, (str, os.PathLike)):
        raise GenforgeError(f"expected a PIL image or an image file path, got {type(item).__name__}")
    path = Path(item).expanduser()
    if not path.is_file():
        raise GenforgeError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not halfway through a batch
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        why = "not an image PIL can read" if isinstance(e, UnidentifiedImageError) else f"unreadable image ({e})"
        raise GenforgeError(f"{path}: {why}; give a PNG, JPEG or other image file") from None


class RecognizerPipeline(Pipeline):
    """``pipe(images)`` -> one ``shapes.Scene`` per image (objects in row-major cell order)."""

    @property
    def image_size(self) -> int:
        return int(self.cfg.model.params.get("image_size", 32))

    def preprocess(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Any PIL mode (grey, palette, RGBA flattened on white, CMYK, 16-bit) -> uint8 RGB at the model's size."""
        out = []
        for item in images:
            im = open_image(item)
            try:
                # to 8-bit RGB first, so palette and 16-bit images are resampled as colours, not indices
                rgb = Image.fromarray(pil_to_uint8(im, 3).permute(1, 2, 0).numpy(), "RGB")
                out.append(pil_to_uint8(resize_center_crop(rgb, self.image_size), 3))
            except (OSError, ValueError) as e:
                raise GenforgeError(f"cannot convert a {im.mode} image of size {im.size} to RGB: {e}") from None
        return torch.stack(out) if out else torch.zeros(0, 3, self.image_size, self.image_size, dtype=torch.uint8)

    def __call__(self, images: Union[ImageLike, Sequence[ImageLike]], batch_size: int = 256) -> list[Scene]:
        from ..tasks.recognize import recognize_uint8

        if isinstance(images, (Image.Image, str, os.PathLike)):
            images = [images]
        batch = self.preprocess(list(images))
        return recognize_uint8(self.model, batch, batch_size) if len(batch) else []

    def describe(self, images: Union[ImageLike, Sequence[ImageLike]]) -> list[dict[str, Any]]:
        """JSON-ready readings: objects (shape, color, size, row, col), background and caption."""
        return [{**scene.to_dict(), "caption": scene.caption()} for scene in self(images)]
