"""Drawing ``shapes_video`` scenes: anti-aliased like ``shapes``, at free (sub-pixel) positions.

Objects of a clip never overlap (the scene checks that), so each is blended in on its own.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import GenforgeError
from .shapes import COLORS, background_rgb, draw_shape


_SS = 4  # supersampling, as in shapes


@functools.lru_cache(maxsize=8192)
def _patch(shape: str, r_q: int, fx: int, fy: int) -> np.ndarray:
    """Coverage of a shape of radius r_q/_SS px whose centre is (fx, fy)/_SS px past the patch's centre pixel.

    Positions and radii are quantised to 1/4 px, so a clip reuses a few hundred cached patches.
    """
    r = r_q / _SS
    half = math.ceil(r * 1.2) + 3  # LANCZOS reaches 3 px beyond the outline
    n = 2 * half + 1
    canvas = Image.new("L", (n * _SS, n * _SS), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, rs = (half + fx / _SS) * _SS, (half + fy / _SS) * _SS, r * _SS
    draw_shape(draw, shape, cx, cy, rs)
    mask = np.asarray(canvas.resize((n, n), Image.LANCZOS), dtype=np.float32) / 255.0
    mask.setflags(write=False)
    return mask


def render_frame(scene: Any, t: int, size: int = 32) -> np.ndarray:
    """Frame ``t`` of the clip as uint8 (size, size, 3)."""
    bg = np.asarray(background_rgb(scene.background), dtype=np.float32)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = bg
    for o, track in zip(scene.objects, scene.tracks):
        s = track[t]
        # pixel centres sit at +0.5: a centre at x px lies (x - 0.5) past pixel column floor(x - 0.5)
        qx, qy = round((s.x * size - 0.5) * _SS), round((s.y * size - 0.5) * _SS)
        ix, fx = divmod(qx, _SS)
        iy, fy = divmod(qy, _SS)
        mask = _patch(o.shape, round(s.radius * size * _SS), fx, fy)
        half = mask.shape[0] // 2
        x0, y0 = ix - half, iy - half
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + mask.shape[1], size), min(y0 + mask.shape[0], size)
        m = mask[ya - y0:yb - y0, xa - x0:xb - x0, None]
        img[ya:yb, xa:xb] += m * (np.asarray(COLORS[s.color], dtype=np.float32) - bg)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def render_clip(scene: Any, size: int = 32) -> torch.Tensor:
    """The clip as uint8 (T, 3, size, size)."""
    if size < 16:
        raise GenforgeError(f"shapes_video frames must be at least 16 px, got {size}")
    out = np.stack([render_frame(scene, t, size) for t in range(scene.frames)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
