"""A loss-curve PNG for the run directory, drawn with Pillow (no plotting library needed to train)."""
from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def loss_curve_png(rows: list[dict], width: int = 640, height: int = 360) -> bytes | None:
    """PNG bytes of every ``loss*`` series of metrics.jsonl rows against the step (a moving average
    over ~2 % of the points, raw values faint behind), or None when there is nothing to draw."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("loss") and isinstance(v, (int, float)) and math.isfinite(v):
                series.setdefault(k, []).append((int(r["step"]), float(v)))
    series = {k: v for k, v in series.items() if len(v) >= 2}
    if not series:
        return None
    left, right, top, bottom = 60, 16, 16, 40
    steps = [s for pts in series.values() for s, _ in pts]
    vals = [v for pts in series.values() for _, v in pts]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(vals), max(vals)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 1, y1 + 1
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)

    def xy(s: float, v: float) -> tuple[float, float]:
        return (left + (s - x0) / max(1, x1 - x0) * (width - left - right),
                height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom))

    d.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
    for i in range(5):  # y ticks
        v = y0 + (y1 - y0) * i / 4
        _, y = xy(x0, v)
        d.line([left - 4, y, left, y], fill=(0, 0, 0))
        d.text((4, y - 6), f"{v:.3g}", fill=(0, 0, 0))
    d.text((left, height - bottom + 6), f"step {x0}", fill=(0, 0, 0))
    d.text((width - right - 80, height - bottom + 6), f"step {x1}", fill=(0, 0, 0))
    for i, (name, pts) in enumerate(sorted(series.items())):
        colour = _COLOURS[i % len(_COLOURS)]
        faint = tuple(int(c + (255 - c) * 0.75) for c in colour)
        d.line([xy(s, v) for s, v in pts], fill=faint, width=1)
        smooth = _smooth([v for _, v in pts], max(1, len(pts) // 50))
        d.line([xy(s, v) for (s, _), v in zip(pts, smooth)], fill=colour, width=2)
        d.text((width - right - 70, top + 4 + 14 * i), name, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_loss_curve(run_dir: Path, rows: list[dict]) -> None:
    from .checkpoint import atomic_write_bytes

    data = loss_curve_png(rows)
    if data is not None:
        atomic_write_bytes(Path(run_dir) / "loss.png", data)
