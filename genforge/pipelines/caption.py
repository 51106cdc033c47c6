"""Captions for images from a caption run directory: ``pipe(images, beam=3)`` -> list of str."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from PIL import Image, UnidentifiedImageError

from ..data.transforms import _flatten, pil_to_uint8, resize_center_crop
from ..errors import GenforgeError
from ..tasks.caption import caption_batch, check_decoding
from ..text.tokenizer import FILENAME, TextTokenizer
from . import Pipeline

#: larger images are refused from their header, before any pixel is decoded
MAX_PIXELS = 40_000_000

ImageLike = Union[Image.Image, str, Path, torch.Tensor]


def _name(item: object, i: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"image {i}"


def open_image(path: str | Path, max_pixels: Optional[int] = None, size: int = 0) -> Image.Image:
    """A decoded image file; a missing, unreadable or too large file is a one-line GenforgeError.
    ``size``: the side it will be resized to, so a large JPEG can be decoded at a fraction of its size."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    p = Path(path).expanduser()
    if not p.is_file():
        raise GenforgeError(f"{p}: no such image file")
    try:
        with Image.open(p) as im:
            w, h = im.size  # from the header: nothing decoded yet
            if w * h > max_pixels:
                raise GenforgeError(f"{p} is {w}x{h} = {w * h / 1e6:.1f} megapixels; images up to "
                                    f"{max_pixels / 1e6:g} megapixels are captioned: shrink it first")
            if size and im.format == "JPEG":
                im.draft(im.mode, (2 * size, 2 * size))  # libjpeg scales by 1/2..1/8 while decoding
            im.load()
            return im.copy()
    except GenforgeError:
        raise
    except Image.DecompressionBombError:
        raise GenforgeError(f"{p} would decompress to too many pixels; shrink it first") from None
    except UnidentifiedImageError:
        raise GenforgeError(f"{p}: not an image file; give a PNG, JPEG, GIF, BMP, TIFF or WebP image") from None
    # PIL raises many types on damaged data (OSError, SyntaxError, ValueError, struct.error, ...)
    except Exception as e:  # noqa: BLE001
        detail = (str(e).splitlines() or ["no detail"])[0][:100]
        why = f"a damaged or unsupported image ({type(e).__name__}: {detail})"
        raise GenforgeError(f"{p}: {why}; give a PNG, JPEG, GIF, BMP, TIFF or WebP file") from None


def to_model_input(img: Image.Image, size: int, channels: int = 3, name: str = "image") -> torch.Tensor:
    """Any PIL mode (grey, palette, RGBA, CMYK, 16-bit, ...) as uint8 (channels, size, size)."""
    try:
        img = _flatten(img)  # transparency onto white, 16-bit and float modes to 8 bits
        img = img.convert("L" if channels == 1 else "RGB")
        return pil_to_uint8(resize_center_crop(img, size), channels)
    except (ValueError, OSError) as e:
        raise GenforgeError(f"{name}: cannot convert its {img.mode} pixels to "
                            f"{'grey' if channels == 1 else 'RGB'} ({e})") from None


class CaptionPipeline(Pipeline):
    """``pipe.caption(images, beam=1, max_length=None)`` -> one caption per image."""

    kind = "caption"

    def __init__(self, cfg, model, run_dir, device):
        super().__init__(cfg, model.for_inference(), run_dir, device)
        self.tokenizer = TextTokenizer.load(Path(run_dir) / FILENAME)
        if self.tokenizer.vocab_size > model.vocab_size:
            raise GenforgeError(f"{run_dir}/{FILENAME} has {self.tokenizer.vocab_size} tokens but the model "
                                f"reads {model.vocab_size}; the run directory mixes files of different runs")

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    @property
    def channels(self) -> int:
        return int(self.model.channels)

    def preprocess(self, images: Sequence[ImageLike] | ImageLike) -> torch.Tensor:
        """uint8 (N, C, size, size) from PIL images, file paths or uint8 tensors (C, H, W) / (N, C, H, W)."""
        if isinstance(images, (Image.Image, str, Path)):
            images = [images]
        elif torch.is_tensor(images) and images.dim() == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)) and not torch.is_tensor(images):
            raise GenforgeError(f"images must be a list of PIL images, paths or uint8 tensors, got "
                                f"{type(images).__name__}")
        if torch.is_tensor(images):
            images = [images]
        out = []
        for i, item in enumerate(images):
            name = _name(item, i)
            if isinstance(item, (str, Path)):
                item = open_image(item, size=self.image_size)
            elif isinstance(item, Image.Image):
                w, h = item.size
                if w * h > MAX_PIXELS:
                    raise GenforgeError(f"{name} is {w}x{h} pixels; at most {MAX_PIXELS / 1e6:g} megapixels")
            elif torch.is_tensor(item):
                item = self._tensor_image(item, name)
            else:
                raise GenforgeError(f"{name} is a {type(item).__name__}; give a PIL image, a file path or a "
                                    "uint8 tensor (C, H, W)")
            out.append(to_model_input(item, self.image_size, self.channels, name))
        if not out:
            raise GenforgeError("no images to caption")
        return torch.stack(out)

    @staticmethod
    def _tensor_image(x: torch.Tensor, name: str) -> Image.Image:
        if x.dtype != torch.uint8 or x.dim() != 3 or x.shape[0] not in (1, 3, 4) or min(x.shape[1:]) < 1:
            raise GenforgeError(f"{name}: a tensor image must be uint8 (C, H, W) with C 1, 3 or 4, got "
                                f"{x.dtype} {tuple(x.shape)}")
        arr = x.detach().cpu().permute(1, 2, 0).numpy()
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[x.shape[0]]
        return Image.fromarray(arr[:, :, 0] if mode == "L" else arr, mode)

    def caption(self, images: Sequence[ImageLike] | ImageLike, beam: int = 1,
                max_length: Optional[int] = None, batch_size: int = 256) -> list[str]:
        check_decoding(beam, max_length)  # before any file is read
        x = self.preprocess(images)
        return caption_batch(self.model, self.tokenizer, x, beam=beam, max_length=max_length,
                             batch_size=batch_size)

    def __call__(self, images: Sequence[ImageLike] | ImageLike, **kw) -> list[str]:
        return self.caption(images, **kw)
