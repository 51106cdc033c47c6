"""Reading and writing short clips: .mp4 (H.264 through PyAV), .gif (Pillow) and .png strips.

Clips travel as uint8 arrays (T, 3, H, W) like datasets' ``frames``; (T, H, W, 3) is accepted too.
Files are written atomically (a temporary file in the same folder, then a rename), so a reader never
sees half a video. Generated clips are tiny (32 px), which players show as a dot: .mp4 and .gif are
upscaled with nearest-neighbour to at least ``min_size`` px; a .png strip keeps the exact pixels.
"""
from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageSequence

from .data.transforms import resize_center_crop
from .errors import GenforgeError
from .train.checkpoint import ordinary_mode

WRITE_FORMATS = (".mp4", ".gif", ".png")
READ_FORMATS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".png")
MAX_DECODED = 20_000  # frames; a longer file is not a clip (and would fill memory)


def _thwc(frames: Any) -> np.ndarray:
    """Any clip layout -> contiguous uint8 (T, H, W, 3)."""
    if torch.is_tensor(frames):
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[0] < 1:
        raise GenforgeError(f"a clip must be a (T, 3, H, W) or (T, H, W, 3) uint8 array with T >= 1, got shape "
                            f"{tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise GenforgeError(f"clip frames must be uint8 (0..255), got {arr.dtype}; convert with "
                            "((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)")
    if arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] != 3:
        raise GenforgeError(f"clip frames need 1 or 3 channels, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


def _upscale(arr: np.ndarray, min_size: int) -> np.ndarray:
    k = max(1, math.ceil(min_size / min(arr.shape[1:3])))
    return arr.repeat(k, axis=1).repeat(k, axis=2) if k > 1 else arr


def _even(arr: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row / column where one is odd."""
    h, w = arr.shape[1:3]
    return np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _write_mp4(path: str, arr: np.ndarray, fps: int) -> None:
    import av

    with av.open(path, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = arr.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "16", "preset": "medium"}  # near-lossless: clips are tiny anyway
        for frame in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_gif(path: str, arr: np.ndarray, fps: int) -> None:
    images = [Image.fromarray(f, "RGB") for f in arr]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=max(20, round(1000 / fps)), disposal=1, optimize=False)


def write_video(path: str | Path, frames: Any, fps: int = 8, *, min_size: int = 128) -> Path:
    """Write a clip to ``path`` (.mp4, .gif or .png strip); returns the path."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in WRITE_FORMATS:
        raise GenforgeError(f"cannot write video {path.name!r}: unsupported extension {ext or '(none)'!r}; "
                            f"supported: {', '.join(WRITE_FORMATS)}")
    if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= 240:
        raise GenforgeError(f"fps must be an integer 1..240, got {fps!r}")
    arr = _thwc(frames)
    if not path.parent.is_dir():
        raise GenforgeError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=ext, dir=path.parent)
    os.close(fd)
    try:
        if ext == ".mp4":
            _write_mp4(tmp, _even(_upscale(arr, min_size)), fps)
        elif ext == ".gif":
            _write_gif(tmp, _upscale(arr, min_size), fps)
        else:
            Image.fromarray(np.concatenate(list(arr), axis=1), "RGB").save(tmp, format="PNG")
        ordinary_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------- reading

def _decode_av(path: Path, size: Optional[int]) -> list[np.ndarray]:
    import av

    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise GenforgeError(f"{path.name} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            out.append(_fit(frame.to_image(), size))
            if len(out) > MAX_DECODED:
                raise GenforgeError(f"{path.name} has over {MAX_DECODED} frames; cut it into short clips")
    return out


def _fit(img: Image.Image, size: Optional[int]) -> np.ndarray:
    img = img.convert("RGB")
    return np.asarray(img if size is None else resize_center_crop(img, size))


def _decode_gif(path: Path, size: Optional[int]) -> list[np.ndarray]:
    """Frames at a constant rate: encoders (Pillow too) merge identical frames into one longer one, so
    each frame is repeated by its duration over the durations' common divisor, keeping time uniform."""
    with Image.open(path) as im:
        pairs = [(_fit(f, size), max(int(f.info.get("duration") or 0), 1)) for f in ImageSequence.Iterator(im)]
    unit = math.gcd(*(d for _, d in pairs))
    if sum(d // unit for _, d in pairs) > MAX_DECODED:
        raise GenforgeError(f"{path.name} has over {MAX_DECODED} frames; cut it into short clips")
    return [a for a, d in pairs for _ in range(d // unit)]


def _decode_strip(path: Path, size: Optional[int]) -> list[np.ndarray]:
    with Image.open(path) as im:
        strip = im.convert("RGB")
    w, h = strip.size
    if h < 1 or w % h:
        raise GenforgeError(f"{path.name} is not a strip of square frames ({w}x{h} px)")
    return [_fit(strip.crop((i * h, 0, (i + 1) * h, h)), size) for i in range(w // h)]


def uniform_indices(total: int, frames: int) -> list[int]:
    """``frames`` indices spread evenly over ``total`` (first and last included); repeats when short."""
    if frames == 1:
        return [(total - 1) // 2]
    return [round(i * (total - 1) / (frames - 1)) for i in range(frames)]


def read_video(path: str | Path, frames: Optional[int] = None, size: Optional[int] = None) -> torch.Tensor:
    """A clip file as uint8 (T, 3, H, W): ``frames`` frames uniform in time (None: all), each resized and
    centre-cropped to ``size`` px square (None: as stored)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in READ_FORMATS:
        raise GenforgeError(f"cannot read video {path.name!r}: unsupported extension {ext or '(none)'!r}; "
                            f"supported: {', '.join(READ_FORMATS)}")
    if not path.is_file():
        raise GenforgeError(f"video file {path} not found")
    if frames is not None and frames < 1:
        raise GenforgeError(f"frames must be >= 1, got {frames}")
    try:
        decoded = (_decode_gif if ext == ".gif" else _decode_strip if ext == ".png" else _decode_av)(path, size)
    except GenforgeError:
        raise
    except Exception as e:  # PyAV / Pillow raise many types for damaged files
        raise GenforgeError(f"cannot decode {path.name}: {type(e).__name__}: {str(e)[:160]}") from None
    if not decoded:
        raise GenforgeError(f"{path.name} holds no frames")
    if len({a.shape for a in decoded}) != 1:
        raise GenforgeError(f"{path.name} changes frame size mid-clip; pass size= to resize every frame")
    if frames is not None:
        decoded = [decoded[i] for i in uniform_indices(len(decoded), frames)]
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous()
