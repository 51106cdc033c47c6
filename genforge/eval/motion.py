"""Exact checker for ``shapes_video`` clips: do the objects look and move as the caption says?

Each frame goes through the pixel detector of ``genforge.eval.verify`` (colour, shape, size, centroid);
detections are matched to the expected objects frame by frame (attributes first, then nearness to
the expected or the previous position), and each object's track is classified from its centroids
and radii alone:

* an axis is still (range < 0.12 of the side), moving one way (no reversal, net >= 0.3 of the side),
  bouncing (a few reversals; more than one every 4 frames is erratic, as a shuffled clip is);
* the radius grows or shrinks by 1.3x or more without reversing, or stays within 1.2x;
* a still object whose first and last colours differ has turned.

A per-frame attribute holds when it is right in at least ``FRAME_SHARE`` of the frames, so one
smeared frame of a generated clip does not fail it, while a wrong colour or shape does. Thresholds
sit between ground truth (0.6 of the side per move, 1.7x size change) and what chance gives.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..data.shapes import GRID
from ..data.video import MotionSpec, VideoScene, parse_video_caption
from ..errors import GenforgeError
from .verify import AREA_PER_R2, DetectedObject, as_rgb_array, detect

FRAME_SHARE = 0.8
STILL_MAX = 0.12  # image sides: an axis whose range stays below this is not moving
MOVE_MIN = 0.3  # net displacement of a move (ground truth: 0.6)
HYSTERESIS = 0.06  # a reversal must go back at least this far (2 px at 32 px)
GROW_RATIO, SAME_RATIO = 1.3, 1.2
ATTRIBUTES = ("count", "background", "shape", "color", "size", "kind", "motion")
_MISSING = 3.0  # matching cost of leaving an expected object unmatched in a frame


def _frames(frames: Any) -> list[np.ndarray]:
    """(T, 3, H, W) or (T, H, W, 3), uint8 or floats in [0, 1] -> list of float64 HxWx3 in 0..255."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[0] < 2:
        raise GenforgeError(f"a clip must be (T, 3, H, W) or (T, H, W, 3) with T >= 2, got shape {tuple(arr.shape)}")
    if arr.shape[-1] != 3 and arr.shape[1] == 3:
        arr = arr.transpose(0, 2, 3, 1)
    return [as_rgb_array(f) for f in arr]


def as_motion_spec(spec: Any) -> tuple[MotionSpec, Optional[VideoScene]]:
    """A VideoScene (or its dict), a caption or a MotionSpec -> (what to check, the scene if known)."""
    if isinstance(spec, MotionSpec):
        return spec, None
    if isinstance(spec, str):
        return parse_video_caption(spec), None
    if isinstance(spec, dict):
        spec = VideoScene.from_dict(spec)
    if not isinstance(spec, VideoScene):
        raise GenforgeError(f"expected a VideoScene, its dict, a caption or a MotionSpec, got {type(spec).__name__}")
    return spec.spec(), spec


def _radius(d: DetectedObject) -> float:
    """Bounding radius in image sides, implied by the area for the detected shape."""
    return math.sqrt(d.area / AREA_PER_R2[d.shape]) / GRID


def _match(spec: MotionSpec, scene: Optional[VideoScene], dets: list[tuple[DetectedObject, ...]],
           size: tuple[int, int]) -> list[list[Optional[DetectedObject]]]:
    """Per expected object, its detection in each frame (None: not found)."""
    h, w = size
    n = len(spec.objects)
    out: list[list[Optional[DetectedObject]]] = [[] for _ in range(n)]
    last: list[Optional[tuple[float, float]]] = [None] * n
    for t, found in enumerate(dets):
        cost = np.full((n, len(found) + n), _MISSING)
        for i, want in enumerate(spec.objects):
            colors = (want["color"], want["end_color"]) if want["end_color"] else (want["color"],)
            for j, d in enumerate(found):
                c = float(d.shape != want["shape"]) + float(d.color not in colors)
                ref = (scene.tracks[i][t].x, scene.tracks[i][t].y) if scene is not None else last[i]
                if ref is not None:
                    c += math.hypot(d.x / w - ref[0], d.y / h - ref[1])
                cost[i, j] = c
        rows, cols = linear_sum_assignment(cost)
        for i, j in zip(rows, cols):
            d = found[j] if j < len(found) else None
            out[i].append(d)
            if d is not None:
                last[i] = (d.x / w, d.y / h)
    return out


def _reversals(vals: Sequence[float], h: float) -> int:
    """Direction changes of a 1-D path that go back at least ``h``."""
    d, hi, lo, rev = 0, vals[0], vals[0], 0
    for v in vals[1:]:
        if d == 0:
            d = 1 if v - vals[0] >= h else -1 if vals[0] - v >= h else 0
            hi = lo = v
        elif d == 1:
            if v > hi:
                hi = v
            elif hi - v >= h:
                rev, d, lo = rev + 1, -1, v
        elif v < lo:
            lo = v
        elif v - lo >= h:
            rev, d, hi = rev + 1, 1, v
    return rev


def _axis(vals: list[float], frames: int) -> str:
    if max(vals) - min(vals) < STILL_MAX:
        return "still"
    rev = _reversals(vals, HYSTERESIS)
    if rev == 0:
        net = vals[-1] - vals[0]
        return ("+" if net > 0 else "-") if abs(net) >= MOVE_MIN else "drift"
    return "bounce" if rev <= max(1, (frames - 1) // 4) else "erratic"


def classify(track: list[Optional[DetectedObject]], size: tuple[int, int]) -> str:
    """What a detected track does, as a ``data.video.motion_label`` ('move up-left', 'grow', ...),
    'still', or 'unclear' / 'erratic' / 'lost' when it fits no motion of the dataset."""
    seen = [d for d in track if d is not None]
    if len(seen) < max(2, FRAME_SHARE * len(track)):
        return "lost"
    h, w = size
    xs, ys = [d.x / w for d in seen], [d.y / h for d in seen]
    ax, ay = _axis(xs, len(track)), _axis(ys, len(track))
    radii = [max(_radius(d), 1e-6) for d in seen]
    ratio = float(np.median(radii[-2:]) / np.median(radii[:2]))
    if _reversals([math.log(r) for r in radii], math.log(1.15)) > 0:
        scale = "erratic"
    else:
        scale = "grow" if ratio >= GROW_RATIO else "shrink" if ratio <= 1 / GROW_RATIO else \
            "same" if 1 / SAME_RATIO <= ratio <= SAME_RATIO else "erratic"
    if "erratic" in (ax, ay, scale):
        return "erratic"
    if "bounce" in (ax, ay):
        if scale != "same" or "still" not in (ax, ay):
            return "erratic"
        return "bounce " + ("horizontal" if ax == "bounce" else "vertical")
    if "drift" in (ax, ay):
        return "unclear"
    if ax != "still" or ay != "still":
        if scale != "same":
            return "unclear"
        vert = {"+": "down", "-": "up"}.get(ay, "")
        horiz = {"+": "right", "-": "left"}.get(ax, "")
        return "move " + "-".join(p for p in (vert, horiz) if p)
    if scale != "same":
        return scale
    return "turn" if seen[0].color != seen[-1].color else "still"


def _switch_ok(observed: list[Optional[str]], a: str, b: str, known: Optional[list[str]]) -> list[bool]:
    """Per frame: the observed value fits a change from ``a`` to ``b`` (at the known frame, or at the
    frame that fits best when only a caption is given; that is in the middle half of the clip, as in
    the data, so a clip that never changes cannot pass by changing in its last frame)."""
    if known is not None:
        return [o == k for o, k in zip(observed, known)]
    n = len(observed)
    best = [False] * n  # nothing fits: every frame wrong (not an empty list, whose mean is NaN)
    for s in range(max(1, math.ceil(n / 4)), max(2, n * 3 // 4 + 1)):
        ok = [o == (a if t < s else b) for t, o in enumerate(observed)]
        if sum(ok) > sum(best):
            best = ok
    return best


def verify_clip(frames: Any, spec: Any) -> dict[str, Any]:
    """Per-attribute correctness of a clip against a VideoScene, its dict, or a caption.

    Returns booleans ``count``, ``background``, ``shape``, ``color``, ``size``, ``kind`` (motion kind),
    ``motion`` (kind and direction) over all objects, ``all_correct``, ``identity_frames`` (share of
    frames where every object is found with its colour and shape) and ``objects`` (per object detail).
    """
    spec, scene = as_motion_spec(spec)
    imgs = _frames(frames)
    t_n = len(imgs)
    if scene is not None and scene.frames != t_n:
        raise GenforgeError(f"the clip has {t_n} frames, its scene {scene.frames}; pass the caption instead")
    size = imgs[0].shape[:2]
    scenes = [detect(img / 255.0) for img in imgs]
    tracks = _match(spec, scene, [s.objects for s in scenes], size)
    per_object, frame_ok = [], np.ones(t_n, dtype=bool)
    for i, (want, track) in enumerate(zip(spec.objects, tracks)):
        colors = [d.color if d else None for d in track]
        sizes = [d.size if d else None for d in track]
        known = scene.tracks[i] if scene is not None else None
        if want["end_color"]:
            color_ok = _switch_ok(colors, want["color"], want["end_color"], known and [s.color for s in known])
            color_ok = color_ok if {want["color"], want["end_color"]} <= set(colors) else [False] * t_n
        else:
            color_ok = [c == want["color"] for c in colors]
        if want["label"] in ("grow", "shrink"):
            a, b = ("small", "large")[:: 1 if want["label"] == "grow" else -1]
            size_ok = _switch_ok(sizes, a, b, known and [s.size for s in known])
        else:
            size_ok = [s == want["size"] for s in sizes]
        shape_ok = [d is not None and d.shape == want["shape"] for d in track]
        frame_ok &= np.asarray(shape_ok) & np.asarray(color_ok)
        observed = classify(track, size)
        per_object.append({
            "expected": dict(want), "observed": observed,
            "found": sum(d is not None for d in track) / t_n,
            "shape": float(np.mean(shape_ok)) >= FRAME_SHARE,
            "color": float(np.mean(color_ok)) >= FRAME_SHARE,
            "size": float(np.mean(size_ok)) >= FRAME_SHARE,
            "kind": motion_kind(observed) == motion_kind(want["label"]),
            "motion": observed == want["label"],
        })
    result: dict[str, Any] = {
        "frames": t_n,
        "count": float(np.mean([len(s.objects) == len(spec.objects) for s in scenes])) >= FRAME_SHARE,
        "background": float(np.mean([s.background == spec.background for s in scenes])) >= FRAME_SHARE,
    }
    for k in ("shape", "color", "size", "kind", "motion"):
        result[k] = all(o[k] for o in per_object)
    result["all_correct"] = all(result[k] for k in ATTRIBUTES)
    result["identity_frames"] = float(frame_ok.mean())
    result["objects"] = per_object
    return result


def motion_kind(label: str) -> str:
    """The kind of a motion label: 'move' of 'move up left', 'bounce' of 'bounce left and right'."""
    return label.split()[0]


def _clips(clips: Any) -> list[Any]:
    if isinstance(clips, (list, tuple)):
        return list(clips)
    arr = clips.detach().cpu() if hasattr(clips, "detach") else np.asarray(clips)
    if arr.ndim != 5:
        raise GenforgeError(f"expected clips (N, T, 3, H, W) or a list of clips, got shape {tuple(arr.shape)}")
    return [arr[i] for i in range(arr.shape[0])]


def verify_clips(clips: Any, specs: Sequence[Any]) -> dict[str, Any]:
    """Rates over clips: per-attribute accuracy, the all-correct rate, the mean ``identity_frames``,
    ``by_objects``: clip count and all-correct rate per number of objects the spec asks for, and
    ``by_motion``: per motion kind asked for ('move', 'grow', ...), how many objects were asked to
    do it and the share whose observed motion was right."""
    clips, specs = _clips(clips), list(specs)
    if len(clips) != len(specs):
        raise GenforgeError(f"verify_clips needs one spec per clip: got {len(clips)} clips, {len(specs)} specs")
    if not clips:
        raise GenforgeError("verify_clips got no clips")
    results = [verify_clip(c, s) for c, s in zip(clips, specs)]
    counts = [len(r["objects"]) for r in results]  # one entry per object the spec asks for
    by_objects = {}
    for k in sorted(set(counts)):
        picked = [r for r, c in zip(results, counts) if c == k]
        by_objects[str(k)] = {"n": len(picked), "all_correct": sum(r["all_correct"] for r in picked) / len(picked)}
    by_motion: dict[str, dict[str, Any]] = {}  # per asked motion kind, over every object asked to do it
    for o in (o for r in results for o in r["objects"]):
        entry = by_motion.setdefault(motion_kind(o["expected"]["label"]), {"n": 0, "motion": 0})
        entry["n"] += 1
        entry["motion"] += o["motion"]
    for entry in by_motion.values():
        entry["motion"] /= entry["n"]
    return {"n": len(results),
            "accuracy": {k: sum(r[k] for r in results) / len(results) for k in ATTRIBUTES},
            "all_correct": sum(r["all_correct"] for r in results) / len(results),
            "identity_frames": float(np.mean([r["identity_frames"] for r in results])),
            "by_objects": by_objects, "by_motion": dict(sorted(by_motion.items()))}


def _boxes(imgs: list[np.ndarray], scene: Optional[VideoScene]) -> list[list[tuple[float, float, float]]]:
    """Per frame, (x, y, radius) in px of each object: from the scene when known, else detected."""
    h, w = imgs[0].shape[:2]
    if scene is not None:
        return [[(s.x * w, s.y * h, 1.1 * s.radius * w) for s in (tr[t] for tr in scene.tracks)]
                for t in range(len(imgs))]
    return [[(d.x, d.y, 1.1 * _radius(d) * w) for d in detect(img / 255.0).objects] for img in imgs]


def flicker(frames: Any, spec: Any = None) -> float:
    """Mean absolute change (0..255) between consecutive frames outside the objects' boxes.

    ``spec``: a VideoScene (or dict) gives the boxes exactly; a caption or None uses the detected
    objects. A static background scores 0; noise or a drifting background scores high.
    """
    imgs = _frames(frames)
    scene = as_motion_spec(spec)[1] if spec is not None and not isinstance(spec, str) else None
    if scene is not None and scene.frames != len(imgs):
        raise GenforgeError(f"the clip has {len(imgs)} frames, its scene {scene.frames}")
    h, w = imgs[0].shape[:2]
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    boxes = _boxes(imgs, scene)
    total, count = 0.0, 0
    for t in range(len(imgs) - 1):
        outside = np.ones((h, w), dtype=bool)
        for x, y, r in boxes[t] + boxes[t + 1]:
            pad = r + 2.0  # anti-aliased rim and detector jitter
            outside &= (np.abs(xs - x) > pad) | (np.abs(ys - y) > pad)
        if outside.any():
            total += float(np.abs(imgs[t + 1] - imgs[t])[outside].sum())
            count += int(outside.sum()) * 3
    return total / count if count else 0.0
