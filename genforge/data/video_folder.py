"""A folder of captioned clips (``video_folder``): .mp4 / .webm / .gif / ... plus ``metadata.jsonl``.

The same layout as captioned images (``data/captions.py``, Hugging Face imagefolder): each
``metadata.jsonl`` line is ``{"file_name": "clips/a.mp4", "text": "..."}``, relative to the folder the
metadata file sits in; ``train/`` and ``test/`` subfolders pick ``data.split``, otherwise
``data.val_fraction`` of the files (by a hash of the name) is the test split. Each clip is decoded
(PyAV; Pillow for GIF), resampled to ``data.frames`` frames uniform in time and resized and
centre-cropped to ``data.image_size``. Unusable entries are skipped and counted in one warning.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch

from ..config import DataConfig
from ..errors import GenforgeError
from ..registry import register_dataset
from . import Examples
from .captions import _TEST_DIRS, METADATA, _licence, _metadata_files, _read_metadata, _shown, _Skips
from .folder import held_out_file
from .transforms import match_channels

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
_CHUNK = 64  # clips decoded per round, so a `limit` stops early


def _root(cfg: DataConfig) -> tuple[Path, bool]:
    """The folder to read and whether the split came from train/ and test/ subfolders."""
    if cfg.path is None:
        raise GenforgeError("data.path is required for video_folder; set it to a folder of clips with a "
                            f"{METADATA} (file_name, text per clip)")
    given = Path(cfg.path).expanduser()
    if not given.is_dir():
        raise GenforgeError(f"video folder {given} does not exist or is not a folder; set data.path to a folder "
                            f"of clips with a {METADATA}")
    test_dir = next((given / d for d in _TEST_DIRS if (given / d).is_dir()), None)
    if (given / "train").is_dir() and test_dir is not None and _metadata_files(given / "train"):
        return (given / "train" if cfg.split == "train" else test_dir), True
    return given, False


def _decode(path: Path, frames: int, size: int) -> tuple[Optional[torch.Tensor], str]:
    from ..video_io import read_video  # PyAV loads only when clips are read

    try:
        return read_video(path, frames=frames, size=size), ""
    except GenforgeError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001  (any decoder failure means "skip this file")
        return None, f"{type(e).__name__}: {e}"


@register_dataset("video_folder")
def load_video_folder(cfg: DataConfig) -> Examples:
    """Captioned clips as ``frames`` (N, T, C, H, W) uint8 and ``caption`` (a str, or a list when several)."""
    root, has_splits = _root(cfg)
    metas = _metadata_files(root)
    if not metas:
        raise GenforgeError(f"no {METADATA} in {root}; add one with a line like "
                            '{"file_name": "clip.mp4", "text": "a red ball rolls left"} per clip')
    skips = _Skips()
    captions = _read_metadata(metas, root, skips)
    items = []
    for path, caps in sorted(captions.items(), key=lambda kv: _shown(kv[0], root)):
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            skips.add("entries that are not clips", f"{_shown(path, root)} (clips: {', '.join(VIDEO_EXTENSIONS)})")
        elif not path.is_file():
            skips.add("missing files", _shown(path, root))
        else:
            items.append((path, caps))
    if not has_splits and cfg.val_fraction > 0:
        test = cfg.split == "test"
        items = [kv for kv in items if held_out_file(Path(_shown(kv[0], root)), cfg.val_fraction) == test]
    want = len(items) if cfg.limit is None else min(cfg.limit, len(items))
    kept: list[tuple[torch.Tensor, Path, list[str]]] = []
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for start in range(0, len(items), _CHUNK):
            chunk = items[start:start + _CHUNK]
            for (path, caps), (clip, why) in zip(chunk, pool.map(lambda kv: _decode(kv[0], cfg.frames,
                                                                                     cfg.image_size), chunk)):
                if clip is None:
                    skips.add("unreadable clips", f"{_shown(path, root)} ({why[:120]})")
                elif len(kept) < want:
                    kept.append((clip, path, caps))
            if len(kept) >= want:
                break
    if skips.total:
        warnings.warn(f"skipped {skips.total} of {len(kept) + skips.total} clip entries in {root}: "
                      f"{skips.summary()}", stacklevel=2)
    if not kept:
        why = f" (skipped: {skips.summary()})" if skips.total else ""
        raise GenforgeError(f"no usable clips in the {cfg.split!r} split of {root}{why}; each {METADATA} entry "
                            f"needs an existing, decodable clip ({', '.join(VIDEO_EXTENSIONS)}) and a text")
    frames = torch.stack([match_channels(clip, cfg.channels) for clip, _, _ in kept])
    return Examples(
        frames=frames,
        caption=[caps[0] if len(caps) == 1 else list(caps) for _, _, caps in kept],
        meta={"name": "video_folder", "split": cfg.split, "path": str(root), "frames": cfg.frames, "fps": cfg.fps,
              "held_out": cfg.split == "test" and (has_splits or cfg.val_fraction > 0),
              "files": [_shown(p, root) for _, p, _ in kept], "skipped": skips.total,
              "skipped_by_reason": dict(skips.counts), "license": _licence(root, None)})
