"""Exact checker for ``shapes`` scenes: which objects does an image contain, read from pixels alone.

No learned part, so a text-to-image model is scored by rules anyone can audit:

1. background: the median colour of the image border and the 3x3 grid lines, which objects never cover;
2. colour: each pixel is explained as ``background + alpha * (palette colour - background)``, which is
   exactly how ``render`` anti-aliases, so edge pixels keep the colour of their object; pixels that
   no palette colour explains are "unknown" rather than forced onto the nearest name;
3. objects: connected components (per colour) of pixels at least half covered;
4. shape: rotation- and scale-invariant moments of the soft coverage mask: the 3-, 4- and 5-fold
   angular harmonics pick out triangle, square and star, and the spread of mass from the centroid
   (a hole pushes it outwards) separates ring from circle;
5. size: the radius implied by the area for that shape, against the midpoint of small and large;
6. grid cell: the centroid's cell.

Thresholds sit between the values measured on rendered scenes at 32 and 64 px (16 px works for
large objects; small ones there are a few pixels and less reliable).
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from ..data.shapes import (_POSITIONS, BACKGROUNDS, COLORS, DEFAULT_BACKGROUND, GRID, RADIUS, SHAPES, SIZES, Obj,
                           Scene, relation)
from ..errors import GenforgeError

UNKNOWN = "unknown"
MIN_SIZE = 16
# Harmonic strength that marks each polygon; rendered values sit well clear (32 px: triangle >= 0.46,
# star >= 0.34, square >= 0.21, while every other shape stays <= 0.07 on that harmonic).
POLYGON_HARMONICS = {"triangle": (3, 0.25), "star": (5, 0.20), "square": (4, 0.14)}
# Normalised polar moment sum(w r^2) / area^2: a disc gives 1/(2 pi) = 0.159, the ring 0.265.
RING_SPREAD = 0.225
MAX_SPREAD = 0.42  # beyond any rendered shape: a scattered or hollow blob is not one of ours
MAX_ELONGATION = 0.3  # 2-fold harmonic; every shape here is symmetric enough to have almost none
# Area of each outline in units of its bounding radius squared (see shapes._outline).
AREA_PER_R2 = {
    "circle": math.pi,
    "square": (2 * 0.86) ** 2,
    "triangle": 3 * math.sqrt(3) / 4 * 1.15 ** 2,
    "star": 5 * 1.05 * 0.47 * math.sin(math.pi / 5),
    "ring": math.pi * 0.75,
    UNKNOWN: math.pi * 0.6,
}
SIZE_SPLIT = math.sqrt(RADIUS["small"] * RADIUS["large"])  # bounding radius in cells
# RGB distance from the named colour (or background) beyond which it is "unknown"; the nearest
# line already picked the name, so this only rejects colours far from all of them.
COLOR_TOLERANCE = 50.0
LINE_TOLERANCE = 40.0  # a pixel this far from every background-to-colour line is unexplained
MIN_AREA = 0.04  # cell^2; the smallest object (a small star) covers about 0.11
TINY_PIXELS = 12.0  # px^2: a small object at 16 px, which may have no fully covered pixel
# Where two objects' rims meet, pixels blend two colours and match no line; such slivers are not objects.
UNEXPLAINED_MIN_AREA = 0.08
_BACKGROUND_NAMES: dict[Optional[str], tuple[int, int, int]] = {None: DEFAULT_BACKGROUND, **BACKGROUNDS}
_COLOR_NAMES = list(COLORS)
_PALETTE = np.asarray([COLORS[c] for c in _COLOR_NAMES], dtype=np.float64)


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image; ``shape``/``color`` are "unknown" when no rule fits."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    x: float  # centroid in pixels
    y: float
    area: float  # in grid cells
    confidence: float  # 0..1, the smallest margin to a decision threshold over all attributes
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_obj(self) -> Optional[Obj]:
        if self.shape == UNKNOWN or self.color == UNKNOWN:
            return None
        return Obj(shape=self.shape, color=self.color, size=self.size, row=self.row, col=self.col)


@dataclass(frozen=True)
class DetectedScene:
    background: Optional[str]  # None: black; "unknown": matches no background of the dataset
    background_rgb: tuple[int, int, int]
    objects: tuple[DetectedObject, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "background_rgb": list(self.background_rgb),
                "objects": [o.to_dict() for o in self.objects]}


# ---------------------------------------------------------------- input

def as_rgb_array(image: Any) -> np.ndarray:
    """PIL image, HxWx3 array or 3xHxW tensor (uint8, or float in [0, 1]) -> float64 HxWx3 in 0..255."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    else:
        if hasattr(image, "detach"):  # torch tensor, without importing torch here
            image = image.detach().cpu()
            if image.ndim == 3 and image.shape[0] == 3:
                image = image.permute(1, 2, 0)
            image = image.numpy()
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise GenforgeError(f"expected an RGB image (HxWx3 array, 3xHxW tensor or PIL image), got shape "
                                f"{tuple(arr.shape)}; convert grayscale images to RGB first")
    if min(arr.shape[:2]) < MIN_SIZE:
        raise GenforgeError(f"image is {arr.shape[1]}x{arr.shape[0]} px; the checker needs at least "
                            f"{MIN_SIZE} px a side (render scenes larger)")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating) or not (np.isfinite(arr).all() and arr.min() >= 0
                                                              and arr.max() <= 1):
            raise GenforgeError(f"image values must be uint8 or floats in [0, 1], got {arr.dtype}; "
                                "map a generator's [-1, 1] output with (x + 1) / 2 first")
        arr = arr * 255.0
    return arr.astype(np.float64)


# ---------------------------------------------------------------- detection

def _background(img: np.ndarray) -> tuple[Optional[str], np.ndarray]:
    h, w, _ = img.shape
    rows = sorted({0, h - 1, *(min(h - 1, round(k * h / GRID)) for k in range(1, GRID))})
    cols = sorted({0, w - 1, *(min(w - 1, round(k * w / GRID)) for k in range(1, GRID))})
    rgb = np.median(np.concatenate([img[rows].reshape(-1, 3), img[:, cols].reshape(-1, 3)]), axis=0)
    name, ref = min(_BACKGROUND_NAMES.items(), key=lambda kv: np.linalg.norm(rgb - kv[1]))
    return (name if np.linalg.norm(rgb - ref) <= COLOR_TOLERANCE else UNKNOWN), rgb


def _shape_features(w: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[float, float, float, dict[int, float]]:
    area = w.sum()
    cx, cy = (w * xs).sum() / area, (w * ys).sum() / area
    dx, dy = xs - cx, ys - cy
    wr2 = w * (dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    total = max(wr2.sum(), 1e-9)
    harmonics = {m: float(abs((wr2 * np.exp(1j * m * theta)).sum()) / total) for m in (2, 3, 4, 5)}
    return float(cx), float(cy), float(total / area ** 2), harmonics


def _classify_shape(spread: float, harm: dict[int, float]) -> tuple[str, float, str]:
    why = f"spread {spread:.3f}, harmonics " + " ".join(f"h{m}={v:.2f}" for m, v in harm.items())
    if harm[2] > MAX_ELONGATION or spread > MAX_SPREAD:
        return UNKNOWN, 0.0, why + " (elongated or scattered)"
    ratios = {s: harm[m] / t for s, (m, t) in POLYGON_HARMONICS.items()}
    # In this order: a few-pixel triangle also shows some 5-fold and 4-fold structure, never the reverse.
    for name in POLYGON_HARMONICS:
        if ratios[name] >= 1:
            return name, 1 - 1 / ratios[name], why
    margin = 1 - max(ratios.values())
    if spread >= RING_SPREAD:
        return "ring", min(margin, (spread - RING_SPREAD) / RING_SPREAD * 4), why
    return "circle", min(margin, (RING_SPREAD - spread) / RING_SPREAD * 4), why


def _pixel_colors(img: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: best palette index (len(palette) = unexplained), its coverage alpha, and |pixel - bg|."""
    d = img - bg
    v = _PALETTE - bg  # (K, 3)
    vv = (v * v).sum(1)
    usable = vv > 40.0 ** 2  # a colour this close to the background could not be seen
    alpha = np.clip(d @ v.T / np.maximum(vv, 1e-9), 0, 1)  # (H, W, K)
    dd = (d * d).sum(-1, keepdims=True)
    resid = dd - 2 * alpha * (d @ v.T) + alpha ** 2 * vv
    resid = np.where(usable, resid, np.inf)
    best = resid.argmin(-1)
    best_resid = np.sqrt(np.maximum(np.take_along_axis(resid, best[..., None], -1)[..., 0], 0))
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    dist = np.sqrt(dd[..., 0])
    unexplained = (best_resid > LINE_TOLERANCE) & (dist > LINE_TOLERANCE)
    best = np.where(unexplained, len(_COLOR_NAMES), best)
    best_alpha = np.where(unexplained, 1.0, best_alpha)
    return best, best_alpha, dist


def detect(image: Any) -> DetectedScene:
    """The background and the objects in ``image`` (any size >= 16 px), from pixels alone."""
    img = as_rgb_array(image)
    h, w, _ = img.shape
    bg_name, bg = _background(img)
    best, alpha, dist = _pixel_colors(img, bg)
    core = alpha >= 0.5
    cell_h, cell_w = h / GRID, w / GRID
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    labels = np.zeros((h, w), dtype=np.int32)
    comps: list[tuple[int, tuple[slice, slice]]] = []  # (colour index, bbox)
    for k in np.unique(best[core]):
        lab, n = ndimage.label(core & (best == k), structure=np.ones((3, 3)))
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            labels[lab == i] = len(comps) + 1
            comps.append((int(k), sl))
    found = []
    for idx, (k, sl) in enumerate(comps, start=1):
        # The soft mask: the component plus its anti-aliased rim, weighted by coverage.
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in sl)
        mine = labels[box] == idx
        rim = ndimage.binary_dilation(mine, iterations=1) & (labels[box] == 0)
        if k < len(_COLOR_NAMES):
            v = _PALETTE[k] - bg
            cover = np.clip(((img[box] - bg) @ v) / (v @ v), 0, 1)
        else:  # unexplained colour: coverage from the distance to the background
            cover = np.clip(dist[box] / max(np.percentile(dist[box][mine], 90), 1e-9), 0, 1)
        weight = np.where(mine | rim, cover, 0.0)
        area = weight.sum() / (cell_h * cell_w)
        if area < (MIN_AREA if k < len(_COLOR_NAMES) else UNEXPLAINED_MIN_AREA):
            continue
        cx, cy, spread, harm = _shape_features(weight, ys[box], xs[box])
        shape, shape_margin, why = _classify_shape(spread, harm)
        tiny = min(h, w) < 24 and weight.sum() < TINY_PIXELS
        color, color_margin = _component_color(img[box][mine], cover[mine], k, bg, tiny)
        radius = math.sqrt(area / AREA_PER_R2[shape])
        size = "large" if radius >= SIZE_SPLIT else "small"
        size_margin = min(1.0, abs(math.log(radius / SIZE_SPLIT)) / math.log(RADIUS["large"] / SIZE_SPLIT))
        row, col = min(int(cy / cell_h), GRID - 1), min(int(cx / cell_w), GRID - 1)
        conf = max(0.0, min(1.0, shape_margin, color_margin, size_margin))
        why += f"; radius {radius:.2f} cells; colour fit {1 - color_margin:.2f} of tolerance"
        found.append(DetectedObject(shape=shape, color=color, size=size, row=row, col=col, x=cx, y=cy,
                                    area=round(area, 4), confidence=round(conf, 3), why=why))
    found.sort(key=lambda o: (o.row, o.col, o.y, o.x))
    return DetectedScene(background=bg_name, background_rgb=tuple(int(round(c)) for c in bg),
                         objects=tuple(found))


def _component_color(pixels: np.ndarray, cover: np.ndarray, k: int, bg: np.ndarray,
                     unblend: bool) -> tuple[str, float]:
    if k >= len(_COLOR_NAMES):
        return UNKNOWN, 0.0
    # Judge the colour on the fully covered interior, as drawn: un-blending partly covered pixels
    # would name a dark red object "red". Only below 24 px do small objects lack a fully covered
    # pixel; there their best pixels are un-blended, at the cost of that dark-shade confusion.
    inner = cover >= min(0.85, cover.max() - 1e-6)
    if unblend:
        pixels = bg + (pixels - bg) / np.maximum(cover[:, None], 0.5)
    observed = np.median(pixels[inner], axis=0)
    err = float(np.linalg.norm(observed - _PALETTE[k]))
    if err > COLOR_TOLERANCE:
        return UNKNOWN, 0.0
    return _COLOR_NAMES[k], 1 - err / COLOR_TOLERANCE


# ---------------------------------------------------------------- what an image should contain

_RELATIONS = ("to the upper left of", "to the upper right of", "to the lower left of", "to the lower right of",
              "to the left of", "to the right of", "above", "below")
_PHRASE = rf"an? ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"
_REL = "|".join(_RELATIONS)
_CELLS = {text: cell for cell, text in _POSITIONS.items()}


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for. A multi-object caption names relations only, so ``positioned`` is
    False and absolute cells are not judged; a ``Scene`` fixes every cell."""

    objects: tuple[dict, ...]
    relations: tuple[tuple[int, int, str], ...]
    background: Optional[str]
    positioned: bool


def _cell_relation(a: tuple[int, int], b: tuple[int, int]) -> str:
    if a == b:
        return "same cell"
    return relation(Obj(row=a[0], col=a[1]), Obj(row=b[0], col=b[1]))


def parse_caption(text: str) -> Spec:
    """The spec behind a caption written by ``Scene.caption`` (the inverse of that grammar)."""
    if not isinstance(text, str):
        raise GenforgeError(f"a caption must be a string, got {type(text).__name__}")
    body, background = " ".join(text.lower().strip().rstrip(".").split()), None
    m = re.fullmatch(rf"(.*) on an? ({'|'.join(BACKGROUNDS)}) background", body)
    if m:
        body, background = m.group(1), m.group(2)
    single = re.fullmatch(rf"{_PHRASE} ({'|'.join(_CELLS)})", body)
    if single:
        size, color, shape, where = single.groups()
        row, col = _CELLS[where]
        return Spec(objects=({"shape": shape, "color": color, "size": size, "row": row, "col": col},),
                    relations=(), background=background, positioned=True)
    parts = body.split(", which is ")
    first = re.fullmatch(rf"{_PHRASE} ({_REL}) {_PHRASE}", parts[0])
    rest = [re.fullmatch(rf"({_REL}) {_PHRASE}", p) for p in parts[1:]]
    if first is None or not all(rest):
        raise GenforgeError(f"cannot read caption {text!r}; expected the grammar of genforge.data.shapes, e.g. "
                            "'a large red circle in the centre' or 'a small blue star above a large green ring'")
    g = first.groups()
    objects = [dict(zip(("size", "color", "shape"), g[0:3])), dict(zip(("size", "color", "shape"), g[4:7]))]
    relations = [(0, 1, g[3])]
    for m in rest:
        relations.append((len(objects) - 1, len(objects), m.group(1)))
        objects.append(dict(zip(("size", "color", "shape"), m.groups()[1:4])))
    return Spec(objects=tuple(objects), relations=tuple(relations), background=background, positioned=False)


def as_spec(spec: Any) -> Spec:
    """A ``Scene``, its dict form, a caption string or a ``Spec``."""
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, str):
        return parse_caption(spec)
    if isinstance(spec, dict):
        spec = Scene.from_dict(spec)
    if not isinstance(spec, Scene):
        raise GenforgeError(f"expected a Scene, a scene dict or a caption string, got {type(spec).__name__}")
    objs = spec.objects
    return Spec(objects=tuple(o.to_dict() for o in objs),
                relations=tuple((i, i + 1, relation(a, b)) for i, (a, b) in enumerate(zip(objs, objs[1:]))),
                background=spec.background, positioned=True)


# ---------------------------------------------------------------- checking

ATTRIBUTES = ("count", "shape", "color", "size", "position", "relation", "background")
# Relations depend on which of two look-alike objects is which, so every assignment is tried while
# there are at most this many (7 objects each side); beyond, Hungarian matching on attributes alone.
_BRUTE_FORCE_LIMIT = 5040


def _attribute_cost(want: dict, got: DetectedObject, positioned: bool) -> float:
    cost = sum(want[k] != getattr(got, k) for k in ("shape", "color", "size"))
    if positioned:
        cost += (want["row"], want["col"]) != (got.row, got.col)
        cost += 0.01 * (abs(want["row"] - got.row) + abs(want["col"] - got.col))  # nearest wins a tie
    return float(cost)


def _assign(spec: Spec, found: Sequence[DetectedObject]) -> list[Optional[int]]:
    """Detected index per expected object (None: missing), fewest attribute and relation mismatches."""
    n_want, n_got = len(spec.objects), len(found)
    cost = np.array([[_attribute_cost(w, g, spec.positioned) for g in found] for w in spec.objects])
    cost = cost.reshape(n_want, n_got)  # keeps two axes when nothing was found
    if math.perm(max(n_want, n_got), n_want) > _BRUTE_FORCE_LIMIT:
        rows, cols = linear_sum_assignment(cost)
        out: list[Optional[int]] = [None] * n_want
        for r, c in zip(rows, cols):
            out[r] = int(c)
        return out
    best, best_total = [None] * n_want, math.inf
    for perm in itertools.permutations(range(max(n_want, n_got)), n_want):
        pick = [p if p < n_got else None for p in perm]  # indices >= n_got stand for "missing"
        total = sum(cost[i, p] if p is not None else 4.0 for i, p in enumerate(pick))
        total += sum(not _relation_holds(spec, found, pick, r) for r in spec.relations)
        if total < best_total:
            best, best_total = pick, total
    return best


def _relation_holds(spec: Spec, found: Sequence[DetectedObject], pick: list[Optional[int]],
                    rel: tuple[int, int, str]) -> bool:
    i, j, want = rel
    if pick[i] is None or pick[j] is None:
        return False
    a, b = found[pick[i]], found[pick[j]]
    return _cell_relation((a.row, a.col), (b.row, b.col)) == want


def check(image: Any, spec: Any, *, detected: Optional[DetectedScene] = None) -> dict[str, Any]:
    """Per-attribute correctness of ``image`` against a Scene, scene dict or caption.

    Each attribute is True only if it is right for every expected object; ``position`` is None when
    the spec states no absolute cells, ``relation`` None for one-object specs. Extra or missing
    objects fail ``count``; an object with an unknown colour or shape fails that attribute.
    """
    spec = as_spec(spec)
    scene = detected if detected is not None else detect(image)
    found = scene.objects
    pick = _assign(spec, found)
    per_object = []
    for want, p in zip(spec.objects, pick):
        got = found[p] if p is not None else None
        row = {"expected": dict(want), "detected": got.to_dict() if got else None}
        for k in ("shape", "color", "size"):
            row[k] = got is not None and getattr(got, k) == want[k]
        row["position"] = (got is not None and (got.row, got.col) == (want["row"], want["col"])) \
            if spec.positioned else None
        per_object.append(row)
    result: dict[str, Any] = {"count": len(found) == len(spec.objects)}
    for k in ("shape", "color", "size", "position"):
        result[k] = None if k == "position" and not spec.positioned else all(o[k] for o in per_object)
    result["relation"] = all(_relation_holds(spec, found, pick, r) for r in spec.relations) \
        if spec.relations else None
    result["background"] = scene.background == spec.background
    result["all_correct"] = all(result[k] is not False for k in ATTRIBUTES)
    result["objects"] = per_object
    result["extra"] = [found[i].to_dict() for i in range(len(found)) if i not in pick]
    return result


def _images(images: Any) -> list[Any]:
    if isinstance(images, (list, tuple)):
        return list(images)
    arr = images.detach().cpu() if hasattr(images, "detach") else np.asarray(images)
    if arr.ndim != 4:
        raise GenforgeError(f"expected a batch of images (N x 3 x H x W tensor, N x H x W x 3 array or a list), "
                            f"got shape {tuple(arr.shape)}")
    return [arr[i] for i in range(arr.shape[0])]


def _aggregate(results: Sequence[dict]) -> dict[str, Any]:
    accuracy = {}
    for k in ATTRIBUTES:
        judged = [r[k] for r in results if r[k] is not None]
        accuracy[k] = sum(judged) / len(judged) if judged else None
    return {"n": len(results), "accuracy": accuracy,
            "all_correct": sum(r["all_correct"] for r in results) / max(len(results), 1)}


def score(images: Any, specs: Sequence[Any], *, prompts: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Accuracy per attribute and the all-correct rate of generated ``images`` against their specs
    (Scenes, scene dicts or captions); with ``prompts``, also per distinct prompt."""
    images = _images(images)
    specs = list(specs)
    if len(images) != len(specs) or (prompts is not None and len(prompts) != len(images)):
        raise GenforgeError(f"score needs one spec (and one prompt, if given) per image: got {len(images)} "
                            f"images, {len(specs)} specs" + ("" if prompts is None else f", {len(prompts)} prompts"))
    results = [check(img, spec) for img, spec in zip(images, specs)]
    out = _aggregate(results)
    if prompts is not None:
        groups: dict[str, list[dict]] = {}
        for p, r in zip(prompts, results):
            groups.setdefault(p, []).append(r)
        out["per_prompt"] = {p: _aggregate(rs) for p, rs in groups.items()}
    return out
