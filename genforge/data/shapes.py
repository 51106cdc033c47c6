"""Procedural scenes of coloured shapes on a 3x3 grid, with exact English captions.

A scene is data (``Scene`` of ``Obj``), not pixels: the caption, the picture and the checker in
``genforge.eval.verify`` are all derived from it, so a text-to-image model can be scored exactly.

Item ``i`` of a dataset depends only on (seed, split, i), never on how many items are rendered, so
``limit`` and ``num_items`` select prefixes of one fixed stream.
"""
from __future__ import annotations

import functools
import math
import numbers
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..config import DataConfig
from ..errors import GenforgeError
from ..registry import register_dataset
from . import ImageSet
from .transforms import match_channels

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
SIZES: tuple[str, ...] = ("small", "large")
GRID = 3
# Saturated and far apart, so a small model's colour mistakes are unambiguous to the checker.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
# Named backgrounds are deliberately not object colours (each is >= 100 RGB units from all eight),
# so every object stays visible. No background means black, on which black objects are refused.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "brown": (115, 70, 40),
    "cyan": (0, 200, 210),
    "pink": (255, 170, 200),
}
DEFAULT_BACKGROUND: tuple[int, int, int] = (0, 0, 0)
# Radius of an object's bounding circle as a fraction of a grid cell: large fills most of its cell,
# small about half of that, so the two read differently even at 32 px.
RADIUS = {"large": 0.44, "small": 0.26}
_POSITIONS = {
    (0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
    (1, 0): "on the left", (1, 1): "in the centre", (1, 2): "on the right",
    (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right",
}
_SUPERSAMPLE = 4  # masks are drawn at 4x and downsampled with LANCZOS: smooth edges, no jaggies


def _choose(kind: str, value: Any, valid: Any) -> None:
    if not isinstance(value, str) or value not in valid:
        raise GenforgeError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")


def _grid_index(kind: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < GRID:
        raise GenforgeError(f"{kind} must be an integer 0..{GRID - 1} (grid cell), got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Obj:
    """One shape in one grid cell; row 0 is the top, col 0 the left."""

    shape: str = "circle"
    color: str = "red"
    size: str = "large"
    row: int = 1
    col: int = 1

    def __post_init__(self) -> None:
        _choose("shape", self.shape, SHAPES)
        _choose("color", self.color, COLORS)
        _choose("size", self.size, SIZES)
        # Normalise numpy ints so equality, hashing and JSON behave like plain ints.
        object.__setattr__(self, "row", _grid_index("row", self.row))
        object.__setattr__(self, "col", _grid_index("col", self.col))

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "row": self.row, "col": self.col}

    @classmethod
    def from_dict(cls, d: Any) -> "Obj":
        if not isinstance(d, dict):
            raise GenforgeError(f"a scene object must be a mapping with keys shape, color, size, row, col; got {d!r}")
        unknown = sorted(set(d) - {"shape", "color", "size", "row", "col"})
        if unknown:
            raise GenforgeError(f"unknown scene object key {unknown[0]!r}; valid keys: shape, color, size, row, col")
        return cls(**d)


def relation(a: Obj, b: Obj) -> str:
    """Where ``a`` is relative to ``b``, e.g. 'above' or 'to the upper left of'."""
    vert = "upper" if a.row < b.row else "lower" if a.row > b.row else ""
    horiz = "left" if a.col < b.col else "right" if a.col > b.col else ""
    if vert and horiz:
        return f"to the {vert} {horiz} of"
    if vert:
        return "above" if vert == "upper" else "below"
    if horiz:
        return f"to the {horiz} of"
    raise GenforgeError("two objects share a grid cell; each object needs its own cell")


@dataclass(frozen=True)
class Scene:
    """Objects on distinct cells of the 3x3 grid, over a named background (None: black)."""

    objects: tuple[Obj, ...] = (Obj(),)
    background: Optional[str] = None

    def __post_init__(self) -> None:
        objs = tuple(self.objects) if isinstance(self.objects, (list, tuple)) else None
        if not objs or not all(isinstance(o, Obj) for o in objs):
            raise GenforgeError("a scene needs a non-empty tuple of Obj (e.g. Scene(objects=(Obj(),)))")
        object.__setattr__(self, "objects", objs)
        if self.background is not None:
            _choose("background", self.background, BACKGROUNDS)
        cells = [(o.row, o.col) for o in objs]
        if len(set(cells)) != len(cells):
            raise GenforgeError(f"scene objects must sit in distinct grid cells, got cells {cells}")
        if self.background is None and any(o.color == "black" for o in objs):
            raise GenforgeError(
                "a black object is invisible on the default black background; "
                f"set background to one of: {', '.join(BACKGROUNDS)}"
            )

    def caption(self) -> str:
        objs = self.objects
        if len(objs) == 1:
            text = f"{objs[0].phrase} {_POSITIONS[(objs[0].row, objs[0].col)]}"
        else:
            # Chain consecutive pairs: "A above B, which is to the left of C".
            text = f"{objs[0].phrase} {relation(objs[0], objs[1])} {objs[1].phrase}"
            for a, b in zip(objs[1:], objs[2:]):
                text += f", which is {relation(a, b)} {b.phrase}"
        if self.background is not None:
            text += f" on a {self.background} background"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects], "background": self.background}

    @classmethod
    def from_dict(cls, d: Any) -> "Scene":
        if not isinstance(d, dict) or not isinstance(d.get("objects"), list):
            raise GenforgeError('a scene must be a mapping like {"objects": [{...}], "background": null}')
        unknown = sorted(set(d) - {"objects", "background"})
        if unknown:
            raise GenforgeError(f"unknown scene key {unknown[0]!r}; valid keys: objects, background")
        return cls(objects=tuple(Obj.from_dict(o) for o in d["objects"]), background=d.get("background"))


def background_rgb(background: Optional[str] = None) -> tuple[int, int, int]:
    if background is None:
        return DEFAULT_BACKGROUND
    _choose("background", background, BACKGROUNDS)
    return BACKGROUNDS[background]


def object_center(obj: Obj, size: int = 32) -> tuple[float, float]:
    """(x, y) of the object's centre in pixel coordinates of a ``size`` image."""
    cell = size / GRID
    return (obj.col + 0.5) * cell, (obj.row + 0.5) * cell


def object_radius(obj: Obj, size: int = 32) -> float:
    return RADIUS[obj.size] * size / GRID


# ---------------------------------------------------------------- random scenes

RngLike = Union[random.Random, np.random.Generator, int, None]


def _rng_ops(rng: RngLike) -> tuple[Callable[[int], int], Callable[[], float]]:
    """randrange(n) and random() for either kind of generator, so callers may bring their own."""
    if rng is None or isinstance(rng, numbers.Integral):
        rng = random.Random(rng)
    if isinstance(rng, random.Random):
        return rng.randrange, rng.random
    if isinstance(rng, np.random.Generator):
        return (lambda n: int(rng.integers(n))), (lambda: float(rng.random()))
    raise TypeError(f"rng must be random.Random, numpy.random.Generator or an int seed, got {type(rng).__name__}")


def object_count_weights(max_objects: int, weights: Optional[Sequence[float]]) -> Optional[tuple[float, ...]]:
    """``weights`` checked against ``max_objects``: one non-negative weight per object count 1..max_objects."""
    if weights is None:
        return None
    w = tuple(float(x) for x in weights)
    if len(w) != max_objects or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise GenforgeError(f"object_weights needs {max_objects} non-negative weights (one per object count "
                            f"1..{max_objects}, not all zero), got {list(weights)}; e.g. "
                            f"data.object_weights=[{', '.join(['1'] * max_objects)}]")
    return w


def train_object_weights(cfg: DataConfig) -> Optional[tuple[float, ...]]:
    """``cfg.object_weights`` checked, for the train split; None for any other split, whose scenes stay
    as the stream draws them, so runs trained with different weights are scored on the same scenes."""
    weights = object_count_weights(cfg.max_objects, cfg.object_weights)
    return weights if cfg.split == "train" else None


def draw_object_count(randrange: Callable[[int], int], rand: Callable[[], float], max_objects: int,
                      weights: Optional[tuple[float, ...]]) -> int:
    """1..max_objects: uniform (one ``randrange`` draw, as the streams always drew it) or by checked
    ``weights`` (one ``rand`` draw; zero-weight counts are never chosen)."""
    if weights is None:
        return 1 + randrange(max_objects)
    u, n, acc = rand() * sum(weights), 0, weights[0]
    while n < max_objects - 1 and u >= acc:
        n += 1
        acc += weights[n]
    return n + 1


def random_scene(rng: RngLike = None, max_objects: int = 3, background_prob: float = 0.3,
                 object_weights: Optional[Sequence[float]] = None) -> Scene:
    """A scene of 1..max_objects objects on distinct cells; a named background with ``background_prob``.

    The object count is uniform, or drawn with ``object_weights`` (relative weights of 1..max_objects
    objects) to show a model more of the scenes it finds hard.
    """
    if not 1 <= max_objects <= GRID * GRID:
        raise GenforgeError(f"max_objects must be 1..{GRID * GRID}, got {max_objects}")
    weights = object_count_weights(max_objects, object_weights)
    randrange, rand = _rng_ops(rng)
    names = list(BACKGROUNDS)
    background = names[randrange(len(names))] if rand() < background_prob else None
    colors = [c for c in COLORS if background is not None or c != "black"]
    n = draw_object_count(randrange, rand, max_objects, weights)
    cells = list(range(GRID * GRID))
    objs = []
    for k in range(n):
        # Partial Fisher-Yates: distinct cells without relying on generator-specific sample().
        j = k + randrange(len(cells) - k)
        cells[k], cells[j] = cells[j], cells[k]
        row, col = divmod(cells[k], GRID)
        objs.append(Obj(shape=SHAPES[randrange(len(SHAPES))], color=colors[randrange(len(colors))],
                        size=SIZES[randrange(len(SIZES))], row=row, col=col))
    return Scene(objects=tuple(objs), background=background)


# ---------------------------------------------------------------- compositional hold-out

RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of", "to the upper left of",
                              "to the upper right of", "to the lower left of", "to the lower right of")


@dataclass(frozen=True)
class Holdout:
    """Combinations kept out of training, so a test can ask whether a model composes what it learnt.

    ``objects`` are (colour, shape) pairs of any size and place. ``relations`` are (shape, relation,
    shape) between any two objects of a scene, not only the pairs its caption chains: a ring above a
    star is the same picture as a star below a ring, and training must never show it.
    """

    objects: tuple[tuple[str, str], ...] = ()
    relations: tuple[tuple[str, str, str], ...] = ()

    def __post_init__(self) -> None:
        for color, shape in self.objects:
            _choose("color", color, COLORS)
            _choose("shape", shape, SHAPES)
        for a, rel, b in self.relations:
            _choose("shape", a, SHAPES)
            _choose("relation", rel, RELATIONS)
            _choose("shape", b, SHAPES)

    def matches(self, scene: Scene) -> list[str]:
        """The held-out combinations ``scene`` shows, as phrases ('green triangle', 'star below ring')."""
        objs = scene.objects
        found = [f"{c} {s}" for c, s in self.objects if any(o.color == c and o.shape == s for o in objs)]
        for a, rel, b in self.relations:
            if any(x.shape == a and y.shape == b and relation(x, y) == rel
                   for i, x in enumerate(objs) for j, y in enumerate(objs) if i != j):
                found.append(f"{a} {rel} {b}")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [{"color": c, "shape": s} for c, s in self.objects],
                "relations": [{"shape": a, "relation": r, "other": b} for a, r, b in self.relations]}


HOLDOUTS: dict[str, Holdout] = {
    "none": Holdout(),
    # Each pair is ~2-3% of objects, so training keeps ~90% of the stream and every held-out part
    # (green, triangle, orange, ring, star, 'below') is still seen often in other combinations.
    "default": Holdout(objects=(("green", "triangle"), ("orange", "ring")), relations=(("star", "below", "ring"),)),
}
_MAX_DRAWS = 10_000  # a held-out-only stream accepts ~1 draw in 10; this bound is never reached


def _holdout(holdout: Union[str, Holdout]) -> Holdout:
    if isinstance(holdout, Holdout):
        return holdout
    _choose("holdout", holdout, HOLDOUTS)
    return HOLDOUTS[holdout]


def is_heldout(scene: Scene, holdout: Union[str, Holdout] = "default") -> bool:
    """Whether ``scene`` shows a combination that ``holdout`` keeps out of training."""
    return bool(_holdout(holdout).matches(scene))


def scene_for_item(index: int, seed: int = 0, split: str = "train", max_objects: int = 3,
                   background_prob: float = 0.3, holdout: Union[str, Holdout] = "none",
                   heldout: Optional[bool] = None, object_weights: Optional[Sequence[float]] = None) -> Scene:
    """Item ``index`` of the (seed, split) stream; a string seed hashes the same on every platform.

    ``heldout`` True/False keeps drawing from the item's own generator until the scene does/does not
    show a ``holdout`` combination, so an item still depends only on (seed, split, index); None takes
    the first draw, which is the stream as it was before hold-outs existed.
    """
    rng = random.Random(f"genforge.shapes/{split}/{seed}/{index}")
    rule = _holdout(holdout)
    for _ in range(_MAX_DRAWS):
        scene = random_scene(rng, max_objects=max_objects, background_prob=background_prob,
                             object_weights=object_weights)
        if heldout is None or bool(rule.matches(scene)) == heldout:
            return scene
    raise GenforgeError(f"no scene in {_MAX_DRAWS} draws fits holdout={holdout!r} with heldout={heldout}; "
                        "hold out fewer combinations")


# ---------------------------------------------------------------- rendering

def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    """Fill ``shape`` of radius ``r`` centred at (cx, cy) with 255 (a ring's hole with 0)."""
    if shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            h = r * 0.5
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=0)
    else:
        draw.polygon(_outline(shape, cx, cy, r), fill=255)


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.86  # a square as wide as the circle looks heavier; this evens the visual weight
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        big = r * 1.15
        cy += big / 4  # centre the bounding box, not the centroid, on the cell
        return [(cx + big * math.cos(a), cy + big * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        outer, inner = r * 1.05, r * 0.47  # fat points survive downsampling to a few pixels
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = outer if k % 2 == 0 else inner
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    raise ValueError(shape)


_COLOR_ARRAYS = {name: np.asarray(rgb, dtype=np.float32) for name, rgb in COLORS.items()}


@functools.lru_cache(maxsize=2048)
def _mask(shape: str, size: str, row: int, col: int, px: int) -> np.ndarray:
    """Coverage in [0, 1] of one object on a px x px canvas; cached because only 90 exist per px."""
    s = px * _SUPERSAMPLE
    canvas = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(canvas)
    cell = s / GRID
    cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
    r = RADIUS[size] * cell
    draw_shape(draw, shape, cx, cy, r)
    small = canvas.resize((px, px), Image.LANCZOS)
    mask = np.asarray(small, dtype=np.float32) / 255.0
    mask.setflags(write=False)
    return mask


def render_array(scene: Scene, size: int = 32) -> np.ndarray:
    """The scene as uint8 (size, size, 3).

    Objects own disjoint cells and LANCZOS is linear, so blending cached per-object coverage masks
    equals drawing the whole scene at 4x and downsampling it, at a fraction of the cost.
    """
    if size < 8:
        raise GenforgeError(f"shapes images must be at least 8 px, got {size}")
    bg = np.asarray(background_rgb(scene.background), dtype=np.float32)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = bg
    for o in scene.objects:
        img += _mask(o.shape, o.size, o.row, o.col, size)[:, :, None] * (_COLOR_ARRAYS[o.color] - bg)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 32) -> Image.Image:
    """The scene as an anti-aliased RGB PIL image."""
    return Image.fromarray(render_array(scene, size), "RGB")


def render_batch(scenes: list[Scene], size: int = 32) -> torch.Tensor:
    """Scenes as a uint8 tensor (N, 3, size, size)."""
    out = np.empty((len(scenes), size, size, 3), dtype=np.uint8)
    for i, sc in enumerate(scenes):
        out[i] = render_array(sc, size)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@register_dataset("shapes")
def load_shapes(cfg: DataConfig) -> ImageSet:
    """``cfg.num_items`` scenes (the first ``cfg.limit``); split 'test' is a separate stream."""
    n = cfg.num_items if cfg.limit is None else min(cfg.limit, cfg.num_items)
    heldout = _heldout_filter(cfg)
    weights = train_object_weights(cfg)
    scenes = [scene_for_item(i, seed=cfg.seed, split=cfg.split, max_objects=cfg.max_objects,
                             holdout=cfg.holdout, heldout=heldout, object_weights=weights) for i in range(n)]
    images = match_channels(render_batch(scenes, cfg.image_size), cfg.channels)
    return ImageSet(
        images=images,
        labels=torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes], dtype=torch.int64),
        class_names=list(SHAPES),
        captions=[s.caption() for s in scenes],
        specs=scenes,
        meta={"name": "shapes", "split": cfg.split, "seed": cfg.seed, "num_items": cfg.num_items,
              "max_objects": cfg.max_objects, "object_weights": cfg.object_weights,
              "holdout": cfg.holdout, "held_out_combinations": HOLDOUTS[cfg.holdout].to_dict(),
              "compositions": cfg.compositions,
              "license": "none: generated by genforge, no third-party content"},
    )


def _heldout_filter(cfg: DataConfig) -> Optional[bool]:
    """What ``scene_for_item`` keeps: False (seen combinations only), True (held-out only) or None (all)."""
    if cfg.holdout == "none":
        if cfg.compositions != "all":
            raise GenforgeError(f"data.compositions={cfg.compositions} needs held-out combinations; "
                                "set data.holdout=default")
        return None
    if cfg.split == "train":
        if cfg.compositions == "heldout":
            raise GenforgeError("the train split never holds held-out combinations; "
                                "use data.split=test with data.compositions=heldout")
        return False
    return {"all": None, "seen": False, "heldout": True}[cfg.compositions]
