"""Procedural clips of moving coloured shapes (``shapes_video``), with exact captions and specs.

A clip is data (``VideoScene`` of ``MovingObj``): the caption, the frames and the checker in
``genforge.eval.motion`` all derive from it. Geometry is in units of the image side (0..1, x right,
y down), so one scene renders at any size. Objects move freely (not on the shapes grid), stay fully
on screen, and two objects of a clip never touch, so the pixel detector separates them in every frame.

Motions over the whole clip: ``move`` (8 directions, 0.6 of the side per moving axis), ``bounce``
(constant speed off the walls, at least one bounce), ``grow`` (small to large), ``shrink``,
``turn`` (changes colour half-way). Item ``i`` depends only on (seed, split, frames, i).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from ..config import DataConfig
from ..errors import GenforgeError
from ..registry import register_dataset
from . import Examples
from .shapes import (BACKGROUNDS, COLORS, GRID, RADIUS, SHAPES, SIZES, RngLike, _choose, _heldout_filter, _rng_ops,
                     draw_object_count, object_count_weights, train_object_weights)
from .video_render import render_clip, render_frame  # noqa: F401  (part of this module's API)
from .video_text import MotionSpec, parse_video_caption, verb  # noqa: F401  (part of this module's API)

MOTIONS: tuple[str, ...] = ("move", "bounce", "grow", "shrink", "turn")
_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
          "up-left": (-1, -1), "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1)}
DIRECTIONS: tuple[str, ...] = tuple(_STEPS)
TRAVEL = 0.6  # move: displacement per moving axis over the clip (19 px at 32 px)
BOUNCE_SPEED = 0.09  # bounce: at least this per frame (about 3 px at 32 px)
MARGIN = 0.01  # objects keep this far (plus their radius) from the image edge
GAP = 0.06  # two objects' bounding circles (x 1.1 for star points) stay this far apart
# Radius in image sides; the size word of a frame is the side of the geometric mean it falls on,
# as in genforge.eval.verify.
RADII = {s: RADIUS[s] / GRID for s in SIZES}
SIZE_SPLIT = math.sqrt(RADII["small"] * RADII["large"])
# Chance of each motion per object; moves are most of the stream, as the richest captions.
_MOTION_P = (("move", 0.5), ("bounce", 0.2), ("grow", 0.1), ("shrink", 0.1), ("turn", 0.1))
_MAX_DRAWS = 10_000
MIN_FRAMES = 6  # a bounce between two samples of a 4-frame clip can look like a plain move


def size_word(radius: float) -> str:
    return "large" if radius >= SIZE_SPLIT else "small"


def motion_label(motion: str, direction: Optional[str]) -> str:
    """'move up-left', 'bounce horizontal', 'grow', ...: what a clip's object does, as one token."""
    if motion == "move":
        return f"move {direction}"
    if motion == "bounce":
        return "bounce " + ("horizontal" if direction in ("left", "right") else "vertical")
    return motion


@dataclass(frozen=True)
class ObjState:
    """One object in one frame: centre and bounding radius in image sides, and its colour."""

    x: float
    y: float
    radius: float
    color: str

    @property
    def size(self) -> str:
        return size_word(self.radius)


@dataclass(frozen=True)
class MovingObj:
    """A shape, where it starts (centre, image sides) and what it does over the clip.

    ``direction``: move: one of DIRECTIONS; bounce: the initial one of left/right/up/down; else None.
    ``end_color``: turn only. ``speed``: bounce only, image sides per frame. ``size`` is the start size.
    """

    shape: str = "circle"
    color: str = "red"
    size: str = "large"
    x: float = 0.5
    y: float = 0.5
    motion: str = "move"
    direction: Optional[str] = "right"
    end_color: Optional[str] = None
    speed: float = BOUNCE_SPEED

    def __post_init__(self) -> None:
        _choose("shape", self.shape, SHAPES)
        _choose("color", self.color, COLORS)
        _choose("size", self.size, SIZES)
        _choose("motion", self.motion, MOTIONS)
        if self.motion == "move":
            _choose("direction", self.direction, DIRECTIONS)
        elif self.motion == "bounce":
            _choose("bounce direction", self.direction, DIRECTIONS[:4])
        elif self.direction is not None:
            raise GenforgeError(f"motion {self.motion!r} takes no direction, got {self.direction!r}")
        if (self.motion == "turn") != (self.end_color is not None):
            raise GenforgeError("end_color is set exactly for motion 'turn' (the colour it turns into)")
        if self.motion == "turn":
            _choose("end colour", self.end_color, COLORS)
            if self.end_color == self.color:
                raise GenforgeError("a turning object needs an end_color different from its color")
        want = {"grow": "small", "shrink": "large"}.get(self.motion)
        if want and self.size != want:
            raise GenforgeError(f"a {self.motion}ing object starts {want}, got size {self.size!r}")
        for k in ("x", "y", "speed"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise GenforgeError(f"{k} must be a finite number, got {v!r}")
            object.__setattr__(self, k, float(v))

    @property
    def label(self) -> str:
        return motion_label(self.motion, self.direction)

    @property
    def colors(self) -> tuple[str, ...]:
        return (self.color,) if self.end_color is None else (self.color, self.end_color)

    def track(self, frames: int) -> tuple[ObjState, ...]:
        """The object's state in each of ``frames`` frames."""
        span = frames - 1
        out = []
        for t in range(frames):
            f = t / span
            x, y, r, color = self.x, self.y, RADII[self.size], self.color
            if self.motion == "move":
                dx, dy = _STEPS[self.direction]
                x, y = x + dx * TRAVEL * f, y + dy * TRAVEL * f
            elif self.motion == "bounce":
                dx, dy = _STEPS[self.direction]
                lo, hi = r + MARGIN, 1 - r - MARGIN
                if dx:
                    x = _reflect(x + dx * self.speed * t, lo, hi)
                else:
                    y = _reflect(y + dy * self.speed * t, lo, hi)
            elif self.motion in ("grow", "shrink"):
                a, b = (RADII["small"], RADII["large"])[:: 1 if self.motion == "grow" else -1]
                r = a + (b - a) * f
            elif t >= frames // 2:
                color = self.end_color
            out.append(ObjState(x=x, y=y, radius=r, color=color))
        return tuple(out)

    def caption(self) -> str:
        return f"a {self.size} {self.color} {self.shape} {verb(self)}"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _OBJ_KEYS}


_OBJ_KEYS = ("shape", "color", "size", "x", "y", "motion", "direction", "end_color", "speed")


def _reflect(p: float, lo: float, hi: float) -> float:
    """``p`` folded into [lo, hi] as a ball bouncing between two walls."""
    w = hi - lo
    q = (p - lo) % (2 * w)
    return lo + (q if q <= w else 2 * w - q)


# ---------------------------------------------------------------- scenes

@dataclass(frozen=True)
class VideoScene:
    """Moving objects over ``frames`` frames on a named background (None: black).

    ``tracks[i][t]`` is object i's ``ObjState`` in frame t; it is checked to stay on screen and clear
    of the other objects.
    """

    objects: tuple[MovingObj, ...] = (MovingObj(x=0.2),)
    frames: int = 16
    background: Optional[str] = None

    def __post_init__(self) -> None:
        objs = tuple(self.objects) if isinstance(self.objects, (list, tuple)) else None
        if not objs or not all(isinstance(o, MovingObj) for o in objs):
            raise GenforgeError("a video scene needs a non-empty tuple of MovingObj")
        object.__setattr__(self, "objects", objs)
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or not 2 <= self.frames <= 1024:
            raise GenforgeError(f"a video scene needs 2..1024 frames, got {self.frames!r}")
        if self.background is not None:
            _choose("background", self.background, BACKGROUNDS)
        elif any("black" in o.colors for o in objs):
            raise GenforgeError("a black object is invisible on the default black background; "
                                f"set background to one of: {', '.join(BACKGROUNDS)}")
        tracks = tuple(o.track(self.frames) for o in objs)
        object.__setattr__(self, "tracks", tracks)
        problem = _layout_problem(objs, tracks)
        if problem:
            raise GenforgeError(problem)

    def caption(self) -> str:
        text = " while ".join(o.caption() for o in self.objects)
        return text + (f" on a {self.background} background" if self.background else "")

    def spec(self) -> MotionSpec:
        return MotionSpec(objects=tuple({"shape": o.shape, "color": o.color, "size": o.size, "label": o.label,
                                         "end_color": o.end_color} for o in self.objects),
                          background=self.background)

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects], "frames": self.frames,
                "background": self.background}

    @classmethod
    def from_dict(cls, d: Any) -> "VideoScene":
        if not isinstance(d, dict) or not isinstance(d.get("objects"), list):
            raise GenforgeError('a video scene must be a mapping like {"objects": [{...}], "frames": 16}')
        unknown = sorted(set(d) - {"objects", "frames", "background"})
        bad = [k for o in d["objects"] if isinstance(o, dict) for k in o if k not in _OBJ_KEYS]
        if unknown or bad or not all(isinstance(o, dict) for o in d["objects"]):
            raise GenforgeError(f"unknown video scene key {(unknown or bad or ['?'])[0]!r}; scene keys: objects, "
                                f"frames, background; object keys: {', '.join(_OBJ_KEYS)}")
        return cls(objects=tuple(MovingObj(**o) for o in d["objects"]), frames=d.get("frames", 16),
                   background=d.get("background"))


def _layout_problem(objs: tuple[MovingObj, ...], tracks: tuple[tuple[ObjState, ...], ...]) -> str:
    for o, track in zip(objs, tracks):
        for t, s in enumerate(track):
            lo, hi = s.radius + MARGIN - 1e-9, 1 - s.radius - MARGIN + 1e-9
            if not (lo <= s.x <= hi and lo <= s.y <= hi):
                return (f"the {o.color} {o.shape} leaves the picture in frame {t} (centre {s.x:.2f}, {s.y:.2f}); "
                        f"move its start (x, y) inwards")
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            a, b = objs[i], objs[j]
            if a.shape == b.shape and set(a.colors) & set(b.colors):
                return "two objects of one clip need different shapes or colours, so each can be told apart"
            for t, (p, q) in enumerate(zip(tracks[i], tracks[j])):
                if math.hypot(p.x - q.x, p.y - q.y) < 1.1 * (p.radius + q.radius) + GAP:
                    return f"objects {i} and {j} touch in frame {t}; start them further apart"
    return ""


def _uniform(rand: Any, lo: float, hi: float) -> float:
    return lo + (hi - lo) * rand()


def random_moving_obj(rng: RngLike, frames: int, colors: list[str]) -> MovingObj:
    randrange, rand = _rng_ops(rng)
    u, motion = rand(), "turn"
    for name, p in _MOTION_P:
        if u < p:
            motion = name
            break
        u -= p
    size = {"grow": "small", "shrink": "large"}.get(motion) or SIZES[randrange(len(SIZES))]
    shape, color = SHAPES[randrange(len(SHAPES))], colors[randrange(len(colors))]
    kw = _place(randrange, rand, motion, size, frames)
    if motion == "turn":
        others = [c for c in colors if c != color]
        kw["end_color"] = others[randrange(len(others))]
    return MovingObj(shape=shape, color=color, size=size, motion=motion, **kw)


def _place(randrange: Any, rand: Any, motion: str, size: str, frames: int,
           direction: Optional[str] = None) -> dict[str, Any]:
    """Start (x, y), direction and speed of an object doing ``motion``, drawn so that its whole path
    stays on screen; ``direction``: a move's or bounce's, or None to draw one."""
    r = RADII["large" if motion == "grow" else size]
    lo, hi = r + MARGIN, 1 - r - MARGIN
    x, y = _uniform(rand, lo, hi), _uniform(rand, lo, hi)
    kw: dict[str, Any] = {"direction": None}
    if motion == "move":
        d = direction or DIRECTIONS[randrange(len(DIRECTIONS))]
        dx, dy = _STEPS[d]
        # start where the whole path stays on screen: the far side for the moving axes
        x = _uniform(rand, lo, hi - TRAVEL) if dx > 0 else _uniform(rand, lo + TRAVEL, hi) if dx < 0 else x
        y = _uniform(rand, lo, hi - TRAVEL) if dy > 0 else _uniform(rand, lo + TRAVEL, hi) if dy < 0 else y
        kw["direction"] = d
    elif motion == "bounce":
        d = direction or DIRECTIONS[randrange(4)]
        dx, dy = _STEPS[d]
        span = hi - lo
        speed = max(BOUNCE_SPEED, 1.3 * span / (frames - 1))
        # first wall within the first half of the clip, after a clearly visible run
        d0 = (0.3 + 0.6 * rand()) * min(span, 0.5 * speed * (frames - 1))
        if dx:
            x = hi - d0 if dx > 0 else lo + d0
        else:
            y = hi - d0 if dy > 0 else lo + d0
        kw.update(direction=d, speed=speed)
    return {"x": x, "y": y, **kw}


def plan_scene(spec: MotionSpec, frames: int, seed: int = 0) -> Optional[VideoScene]:
    """A clip that does what ``spec`` (a parsed caption) says, with start places (and a bounce's
    first direction) drawn with ``seed`` by the rules the data uses; None when no layout of
    ``_MAX_DRAWS // 10`` tries keeps every path on screen and the objects apart, or the spec asks
    for what no clip can show (a black object on the default black background, two objects
    alike)."""
    randrange, rand = _rng_ops(random.Random(f"genforge.shapes_video.plan/{seed}"))
    for _ in range(_MAX_DRAWS // 10):
        objs = []
        for o in spec.objects:
            motion, _, way = o["label"].partition(" ")
            direction = {"horizontal": ("left", "right"), "vertical": ("up", "down")}.get(way)
            direction = direction[randrange(2)] if direction else (way or None)
            place = _place(randrange, rand, motion, o["size"], frames, direction)
            try:
                objs.append(MovingObj(shape=o["shape"], color=o["color"], size=o["size"], motion=motion,
                                      end_color=o["end_color"], **place))
            except GenforgeError:
                return None
        try:
            return VideoScene(objects=tuple(objs), frames=frames, background=spec.background)
        except GenforgeError:
            continue
    return None


def random_video_scene(rng: RngLike = None, max_objects: int = 2, frames: int = 16,
                       background_prob: float = 0.3, object_weights: Optional[Sequence[float]] = None) -> VideoScene:
    """A clip of 1..max_objects (<= 2) moving objects; layouts that collide are drawn again.

    Without ``object_weights`` a collision redraws the object count too, so the stream (kept as it
    always was) favours one-object clips: about 5 in 6 at 16 frames. With them (relative weights
    of 1..max_objects objects, as in ``shapes.random_scene``) the count is drawn once and only the
    layout again, so the weights are the clips' shares."""
    if not 1 <= max_objects <= 2:
        raise GenforgeError(f"shapes_video draws 1 or 2 objects per clip; set data.max_objects=1 or 2 "
                            f"(got {max_objects})")
    weights = object_count_weights(max_objects, object_weights)
    if rng is None or isinstance(rng, int):
        rng = random.Random(rng)
    randrange, rand = _rng_ops(rng)
    count = None if weights is None else draw_object_count(randrange, rand, max_objects, weights)
    for _ in range(_MAX_DRAWS):
        names = list(BACKGROUNDS)
        background = names[randrange(len(names))] if rand() < background_prob else None
        colors = [c for c in COLORS if background is not None or c != "black"]
        n = count or 1 + randrange(max_objects)
        objs = tuple(random_moving_obj(rng, frames, colors) for _ in range(n))
        tracks = tuple(o.track(frames) for o in objs)
        if not _layout_problem(objs, tracks):
            return VideoScene(objects=objs, frames=frames, background=background)
    raise GenforgeError("no collision-free layout found; use fewer objects")  # pragma: no cover


# ---------------------------------------------------------------- compositional hold-out

@dataclass(frozen=True)
class VideoHoldout:
    """(colour or None for any, shape or None for any, motion label) combinations kept out of training."""

    combos: tuple[tuple[Optional[str], Optional[str], str], ...] = ()

    def matches(self, scene: VideoScene) -> list[str]:
        found = []
        for color, shape, label in self.combos:
            if any((color is None or o.color == color) and (shape is None or o.shape == shape) and o.label == label
                   for o in scene.objects):
                found.append(" ".join(w for w in (color, shape or "object", label) if w))
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"combos": [{"color": c, "shape": s, "motion": m} for c, s, m in self.combos]}


VIDEO_HOLDOUTS: dict[str, VideoHoldout] = {
    "none": VideoHoldout(),
    # ~4% of objects in all; every part (green, triangle, ring, star, moving up/left, growing) is
    # common in other combinations, so a test can ask whether a model composes them.
    "default": VideoHoldout(combos=(("green", "triangle", "move up"), (None, "ring", "move left"),
                                    (None, "star", "grow"))),
}


def video_scene_for_item(index: int, seed: int = 0, split: str = "train", max_objects: int = 2,
                         frames: int = 16, background_prob: float = 0.3, holdout: Union[str, VideoHoldout] = "none",
                         heldout: Optional[bool] = None,
                         object_weights: Optional[Sequence[float]] = None) -> VideoScene:
    """Item ``index`` of the (seed, split) stream; ``heldout`` as in ``shapes.scene_for_item``."""
    rule = holdout if isinstance(holdout, VideoHoldout) else None
    if rule is None:
        _choose("holdout", holdout, VIDEO_HOLDOUTS)
        rule = VIDEO_HOLDOUTS[holdout]
    rng = random.Random(f"genforge.shapes_video/{split}/{seed}/{index}")
    for _ in range(_MAX_DRAWS):
        scene = random_video_scene(rng, max_objects=max_objects, frames=frames, background_prob=background_prob,
                                   object_weights=object_weights)
        if heldout is None or bool(rule.matches(scene)) == heldout:
            return scene
    raise GenforgeError(f"no clip in {_MAX_DRAWS} draws fits holdout={holdout!r} with heldout={heldout}")


@register_dataset("shapes_video")
def load_shapes_video(cfg: DataConfig) -> Examples:
    """``cfg.num_items`` clips of ``cfg.frames`` frames (the first ``cfg.limit``); 'test' is its own stream."""
    if cfg.frames < MIN_FRAMES:
        raise GenforgeError(f"shapes_video needs data.frames >= {MIN_FRAMES} (fewer cannot show a bounce), "
                            f"got {cfg.frames}")
    if cfg.max_objects > 2:
        raise GenforgeError(f"shapes_video draws 1 or 2 objects per clip; set data.max_objects=1 or 2 "
                            f"(got {cfg.max_objects}; the default 3 is for shapes)")
    if cfg.channels == 1:
        raise GenforgeError("shapes_video clips are colour (the motion checker reads colours); drop data.channels=1")
    n = cfg.num_items if cfg.limit is None else min(cfg.limit, cfg.num_items)
    heldout = _heldout_filter(cfg)  # the same rules for splits and compositions as shapes
    weights = train_object_weights(cfg)
    scenes = [video_scene_for_item(i, seed=cfg.seed, split=cfg.split, max_objects=cfg.max_objects,
                                   frames=cfg.frames, holdout=cfg.holdout, heldout=heldout,
                                   object_weights=weights) for i in range(n)]
    frames = torch.empty((n, cfg.frames, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    for i, sc in enumerate(scenes):
        frames[i] = render_clip(sc, cfg.image_size)
    return Examples(
        frames=frames, caption=[s.caption() for s in scenes], spec=scenes,
        meta={"name": "shapes_video", "split": cfg.split, "seed": cfg.seed, "num_items": cfg.num_items,
              "frames": cfg.frames, "fps": cfg.fps, "max_objects": cfg.max_objects,
              "object_weights": cfg.object_weights, "holdout": cfg.holdout,
              "held_out_combinations": VIDEO_HOLDOUTS[cfg.holdout].to_dict(), "compositions": cfg.compositions,
              "license": "none: generated by genforge, no third-party content"})
