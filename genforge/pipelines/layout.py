"""Layout-planned sampling for captions in the ``shapes`` grammar.

A text-to-image model trained on ``shapes`` scenes draws one object at a named place almost always
right ("a small red circle at the top left"), but a caption of several objects and the relations
between them ("a small red circle above a large blue square") asks it to bind each size and colour
to the right noun and to pick places that satisfy the relation at once, which a small text encoder
mostly fails at. With ``layout="grid"`` the pipeline plans first and draws second, as layout-
planned text-to-image methods do (LLM-grounded diffusion, MultiDiffusion's region prompts): the
caption is read back into its objects and relations (``eval.verify.parse_caption``), grid cells
that satisfy every relation are drawn at random (seeded per image), each object becomes a
one-object caption at its cell, and the model denoises the image with each region following its
own caption (``TextToImageModel.sample_regions``). The objects, their attributes and the background
are still the model's drawing; the places come from the planner, so a relation holds by plan, not
by the model's reading of it.

Captions the grammar does not cover, and one-object captions (which name their cell), are drawn
as usual.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Optional, get_args

import torch

from ..data.shapes import GRID, Obj, Scene, relation
from ..errors import GenforgeError

Layout = Literal["grid", "off"]
LAYOUTS: tuple[str, ...] = get_args(Layout)


@dataclass(frozen=True)
class Region:
    """One object's caption and its cell's box in pixels (top, left, bottom, right; exclusive)."""

    prompt: str
    box: tuple[int, int, int, int]


def placements(objects: int, relations: tuple[tuple[int, int, str], ...]) -> list[tuple[tuple[int, int], ...]]:
    """Every assignment of distinct grid cells to ``objects`` objects in which each relation
    ``(i, j, name)`` holds (object i is ``name`` object j, as ``shapes.relation`` names it)."""
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    found: list[tuple[tuple[int, int], ...]] = []

    def holds(placed: list[tuple[int, int]]) -> bool:
        n = len(placed)
        return all(relation(Obj(row=placed[i][0], col=placed[i][1]), Obj(row=placed[j][0], col=placed[j][1])) == name
                   for i, j, name in relations if max(i, j) == n - 1)

    def extend(placed: list[tuple[int, int]]) -> None:
        if len(placed) == objects:
            found.append(tuple(placed))
            return
        for cell in cells:
            if cell not in placed and holds(placed + [cell]):
                extend(placed + [cell])

    if objects > len(cells):
        return []
    extend([])
    return found


def plan(prompt: str, seed: int, image_size: int) -> Optional[list[Region]]:
    """The regions of one image for ``prompt``: one per object, at cells drawn with ``seed`` among
    those that satisfy its relations; None when there is nothing to plan (not a multi-object
    caption of the shapes grammar, or relations no grid placement satisfies)."""
    from ..eval.verify import parse_caption

    try:
        spec = parse_caption(prompt)
    except GenforgeError:
        return None
    if spec.positioned or len(spec.objects) < 2:
        return None
    options = placements(len(spec.objects), spec.relations)
    if not options:
        return None
    cells = random.Random(seed).choice(options)
    cell = image_size / GRID
    margin = max(1, round(image_size / 32))  # an object's soft edge may spill just past its cell
    regions = []
    for o, (row, col) in zip(spec.objects, cells):
        try:
            text = Scene(objects=(Obj(shape=o["shape"], color=o["color"], size=o["size"], row=row, col=col),),
                         background=spec.background).caption()
        except GenforgeError:  # e.g. a black object on the default black background
            return None
        top, left = round(row * cell), round(col * cell)
        regions.append(Region(text, (max(0, top - margin), max(0, left - margin),
                                     min(image_size, round((row + 1) * cell) + margin),
                                     min(image_size, round((col + 1) * cell) + margin))))
    return regions


def region_masks(plans: list[Optional[list[Region]]], prompts: list[str], image_size: int
                 ) -> tuple[list[list[str]], torch.Tensor]:
    """Per image, its region texts padded with empty texts to the batch's most regions, and masks
    (B, K, 1, H, W): a planned image's cell boxes, an unplanned one's whole frame for its own prompt
    in slot 0, zeros for padding."""
    k = max([1] + [len(p) for p in plans if p])
    texts, masks = [], torch.zeros(len(plans), k, 1, image_size, image_size)
    for i, (regions, prompt) in enumerate(zip(plans, prompts)):
        if not regions:
            texts.append([prompt] + [""] * (k - 1))
            masks[i, 0] = 1
            continue
        texts.append([r.prompt for r in regions] + [""] * (k - len(regions)))
        for j, r in enumerate(regions):
            top, left, bottom, right = r.box
            masks[i, j, :, top:bottom, left:right] = 1
    return texts, masks
