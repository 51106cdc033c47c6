"""Any directory of images, searched recursively, decoded in a thread pool.

Layout decides labels: if top-level subfolders hold images, each is a class (sorted names);
otherwise the images are unlabelled. Splits: if the directory has both ``train/`` and ``test/``
subfolders, ``data.split`` picks one of them; otherwise both splits are the whole directory (a plain
folder carries no held-out set, and generative training rarely needs one).

Unreadable files (corrupt, truncated, decompression bombs) are skipped and reported in one warning.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..config import DataConfig
from ..errors import GenforgeError
from ..registry import register_dataset
from . import ImageSet
from .transforms import pil_to_uint8, resize_center_crop

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_CHUNK = 512  # decode in chunks so a `limit` stops early instead of decoding the whole folder


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root``, recursively, in a sorted order that is the same on every machine."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.lower().endswith(EXTENSIONS) and not f.startswith("."):
                found.append(Path(dirpath) / f)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def held_out_file(rel_path: Path, fraction: float) -> bool:
    """Whether a file (path relative to the dataset root) belongs to the held-out split."""
    digest = hashlib.sha1(rel_path.as_posix().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _decode(path: Path, size: int, channels: int) -> tuple[Optional[np.ndarray], str]:
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                # Let libjpeg decode at 1/2..1/8 scale when the target is that much smaller: big
                # photos load several times faster and the result is still >= size on both sides.
                img.draft("RGB" if channels == 3 else "L", (size, size))
            img.load()
            out = resize_center_crop(img, size)
            return pil_to_uint8(out, channels).numpy(), ""
    except Image.DecompressionBombError as e:
        return None, f"decompression bomb: {e}"
    # PIL's decoders raise a zoo of types on bad data (OSError, SyntaxError, ValueError, struct.error,
    # EOFError, ...); any of them means "this file is unreadable", never "stop the run".
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def _resolve_root(cfg: DataConfig) -> Path:
    if cfg.path is None:
        raise GenforgeError("data.path is required for the folder dataset; set data.path=DIR (a directory of images)")
    root = Path(cfg.path).expanduser()
    if not root.exists():
        raise GenforgeError(f"image folder {root} does not exist; set data.path to a directory of images")
    if not root.is_dir():
        raise GenforgeError(f"data.path {root} is a file, not a directory; point it at the folder holding the images")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root / cfg.split
    return root


@register_dataset("folder")
def load_folder(cfg: DataConfig) -> ImageSet:
    """Images under ``cfg.path`` resized (shorter side) and centre-cropped to ``cfg.image_size``."""
    root = _resolve_root(cfg)
    has_splits = root != Path(cfg.path).expanduser()
    files = list_images(root)
    rel = [f.relative_to(root).parts for f in files]
    class_names = sorted({p[0] for p in rel if len(p) > 1})
    if class_names:
        loose = [f for f, p in zip(files, rel) if len(p) == 1]
        if loose:
            warnings.warn(f"ignored {len(loose)} images at the top level of {root}: its subfolders are "
                          f"classes ({', '.join(class_names[:5])}...), so images must sit inside one", stacklevel=2)
        files = [f for f, p in zip(files, rel) if len(p) > 1]
    if not files:
        raise GenforgeError(f"no images ({', '.join(EXTENSIONS)}) found under {root}; "
                            "set data.path to a directory that contains image files")
    if not has_splits and cfg.val_fraction > 0:
        test = cfg.split == "test"
        files = [f for f in files if held_out_file(f.relative_to(root), cfg.val_fraction) == test]
        if not files:
            raise GenforgeError(f"data.val_fraction={cfg.val_fraction} leaves no images in the {cfg.split!r} "
                                f"split of {root}; change data.val_fraction or add images")
    # a 'test' split shares no image with training unless val_fraction=0 made it the training images
    held_out = cfg.split == "test" and (has_splits or cfg.val_fraction > 0)

    channels = cfg.channels or 3
    size = cfg.image_size
    want = len(files) if cfg.limit is None else min(cfg.limit, len(files))
    kept: list[np.ndarray] = []
    kept_files: list[Path] = []
    failed: list[tuple[Path, str]] = []
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), _CHUNK):
            chunk = files[start : start + _CHUNK]
            for path, (arr, why) in zip(chunk, pool.map(lambda p: _decode(p, size, channels), chunk)):
                if arr is None:
                    failed.append((path, why))
                elif len(kept) < want:
                    kept.append(arr)
                    kept_files.append(path)
            if len(kept) >= want:
                break
    tried = len(kept) + len(failed)
    if failed:
        example = f"{failed[0][0].relative_to(root)} ({failed[0][1][:120]})"
        warnings.warn(f"skipped {len(failed)} unreadable images of {tried} in {root}, e.g. {example}", stacklevel=2)
    if not kept:
        raise GenforgeError(f"none of the {tried} image files under {root} could be read "
                            f"(e.g. {failed[0][0].name}: {failed[0][1][:120]}); check the files or set data.path")

    labels = None
    if class_names:
        index = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([index[f.relative_to(root).parts[0]] for f in kept_files], dtype=torch.int64)
    return ImageSet(
        images=torch.from_numpy(np.stack(kept)),
        labels=labels,
        class_names=class_names or None,
        meta={"name": "folder", "split": cfg.split, "path": str(root), "held_out": held_out,
              "license": "the user's own images, under their own terms",
              "files": [f.relative_to(root).as_posix() for f in kept_files], "skipped": len(failed)},
    )
