"""Fashion-MNIST (and MNIST) from IDX files, parsed with numpy; nothing is cached on disk.

Default location is Debian's ``dataset-fashion-mnist`` package. Any directory holding the four IDX
files, gzipped or not, works through ``data.path`` -- which is also how plain MNIST is loaded.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import DataConfig
from ..errors import GenforgeError
from ..registry import register_dataset
from . import ImageSet
from .transforms import match_channels, resize_images

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The IDX type byte -> numpy dtype; multi-byte types are big-endian by the format's definition.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into an array of its declared dtype and shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        # Sniff instead of trusting the suffix: mirrors serve both, sometimes misnamed.
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise GenforgeError(f"IDX file {path} not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise GenforgeError(f"cannot read IDX file {path} ({e}); re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise GenforgeError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); "
            "expected IDX files such as train-images-idx3-ubyte(.gz)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise GenforgeError(f"{path}: IDX header is truncated or declares {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise GenforgeError(
            f"{path}: header declares shape {dims} ({expected} bytes) but {len(raw) - header} bytes follow; "
            "the file is truncated or damaged, re-download it"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    # A native-order, writable copy: frombuffer views are read-only, which torch warns about.
    return arr.astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Optional[Path]:
    # Official MNIST mirrors also spell the stems with a dot ("train-images.idx3-ubyte").
    dotted = stem.replace("-idx", ".idx")
    for name in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
        p = directory / name
        if p.is_file():
            return p
    return None


def load_idx_split(directory: str | Path, split: str = "train", *, limit: Optional[int] = None,
                   hint: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W), labels int64 (N,)) of one split of an MNIST-style directory."""
    directory = Path(directory).expanduser()
    fix = hint or "set data.path=DIR to a directory with the IDX files"
    if not directory.is_dir():
        raise GenforgeError(f"dataset directory {directory} does not exist; {fix}")
    paths = []
    for stem in _FILES[split]:
        p = _find(directory, stem)
        if p is None:
            raise GenforgeError(f"{directory} has no {stem}(.gz) for the {split!r} split; {fix}")
        paths.append(p)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise GenforgeError(
            f"{directory}: images {images.shape} and labels {labels.shape} do not match "
            "(expected (N, H, W) images and N labels)"
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if images.dtype != np.uint8:
        images = np.clip(images, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def _holds_images(directory: Path) -> bool:
    """Whether a folder (or one of its subfolders, one level down) holds image files."""
    from .folder import EXTENSIONS

    if not directory.is_dir():
        return False
    for p in [directory, *(d for d in directory.iterdir() if d.is_dir())]:
        if any(f.suffix.lower() in EXTENSIONS for f in p.iterdir() if f.is_file()):
            return True
    return False


def _load(cfg: DataConfig, *, directory: str, class_names: list[str], hint: str, name: str) -> ImageSet:
    directory = Path(directory).expanduser()
    if cfg.path is not None and _holds_images(directory) and _find(directory, _FILES[cfg.split][0]) is None:
        raise GenforgeError(f"{directory} holds image files, not {name} IDX files: to train on your own "
                            f"images add data.name=folder")
    images, labels = load_idx_split(directory, cfg.split, limit=cfg.limit, hint=hint)
    x = resize_images(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1), cfg.image_size)
    return ImageSet(
        images=match_channels(x, cfg.channels),
        labels=torch.from_numpy(labels),
        class_names=list(class_names),
        meta={"name": name, "split": cfg.split, "path": str(directory),
              "license": ("MIT (Expat), 2017 Zalando SE: Debian's dataset-fashion-mnist" if name == "fashion"
                          and cfg.path is None else "the terms of the copy in data.path")},
    )


@register_dataset("fashion")
def load_fashion(cfg: DataConfig) -> ImageSet:
    """Fashion-MNIST: 60000 train / 10000 test grey 28x28 images resized to ``cfg.image_size``."""
    return _load(cfg, directory=cfg.path or DEFAULT_DIR, class_names=FASHION_CLASSES, name="fashion",
                 hint="install it (apt-get install dataset-fashion-mnist) or set data.path=DIR "
                      "to a directory with the IDX files")


@register_dataset("mnist")
def load_mnist(cfg: DataConfig) -> ImageSet:
    """MNIST digits from IDX files in ``cfg.path`` (no default location is shipped)."""
    if cfg.path is None:
        raise GenforgeError("data.path is required for the mnist dataset: a directory with "
                            "train-images-idx3-ubyte(.gz) and the other three MNIST IDX files")
    return _load(cfg, directory=cfg.path, class_names=DIGIT_CLASSES, name="mnist",
                 hint="set data.path=DIR to a directory with the four MNIST IDX files")
