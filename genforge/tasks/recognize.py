"""Multi-attribute recognition of ``shapes`` scenes: train the per-cell recogniser from scene specs.

Every cell says whether it is occupied; shape, colour and size are only defined where an object is,
so their losses skip empty cells (``ignore_index``) rather than teaching the net a fake "empty" class.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..data import load_dataset
from ..data.shapes import COLORS, GRID, SHAPES, SIZES, Obj, Scene
from ..data.transforms import to_float
from ..errors import GenforgeError
from ..eval.text_metrics import scene_attribute_accuracy
from ..models.recognizer import BACKGROUND_CLASSES
from ..registry import register_task
from . import Task

IGNORE = -100  # F.cross_entropy's ignore_index: no loss for attributes of empty cells
_COLOR_NAMES = tuple(COLORS)


def scene_targets(scenes: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Per-cell targets of ``scenes`` (row-major cells): occupied (N, 9) float, shape/color/size (N, 9)
    class indices with ``IGNORE`` on empty cells, background (N,) over ``BACKGROUND_CLASSES``."""
    n, cells = len(scenes), GRID * GRID
    occupied = torch.zeros(n, cells)
    attrs = {k: torch.full((n, cells), IGNORE, dtype=torch.long) for k in ("shape", "color", "size")}
    background = torch.zeros(n, dtype=torch.long)
    for i, scene in enumerate(scenes):
        if not isinstance(scene, Scene):
            raise GenforgeError(f"task 'recognize' needs shapes Scene specs, got {type(scene).__name__}; "
                                "train it on data.name=shapes")
        background[i] = BACKGROUND_CLASSES.index(scene.background)
        for o in scene.objects:
            c = o.row * GRID + o.col
            occupied[i, c] = 1.0
            attrs["shape"][i, c] = SHAPES.index(o.shape)
            attrs["color"][i, c] = _COLOR_NAMES.index(o.color)
            attrs["size"][i, c] = SIZES.index(o.size)
    return {"occupied": occupied, **attrs, "background": background}


def recognition_loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Occupancy (binary, every cell) + shape, colour, size (occupied cells only) + background."""
    losses = {"loss_occupied": F.binary_cross_entropy_with_logits(out["occupied"], target["occupied"])}
    for k in ("shape", "color", "size"):
        losses[f"loss_{k}"] = F.cross_entropy(out[k].flatten(0, 1), target[k].flatten(), ignore_index=IGNORE)
    losses["loss_background"] = F.cross_entropy(out["background"], target["background"])
    losses["loss"] = sum(losses.values())
    return losses


def decode_scenes(out: dict[str, torch.Tensor]) -> list[Scene]:
    """The most likely valid Scene per image: occupied cells in row-major order (at least one)."""
    occ = out["occupied"].float().cpu()
    shape, color, size = (out[k].float().cpu() for k in ("shape", "color", "size"))
    background = out["background"].float().argmax(-1).cpu()
    scenes = []
    for i in range(len(occ)):
        bg = BACKGROUND_CLASSES[int(background[i])]
        cells = [c for c in range(GRID * GRID) if occ[i, c] > 0]
        if not cells:  # a scene always has an object; take the likeliest cell
            cells = [int(occ[i].argmax())]
        objs = []
        for c in cells:
            col_logits = color[i, c].clone()
            if bg is None:  # black on black is not a valid reading; take the next colour
                col_logits[_COLOR_NAMES.index("black")] = -float("inf")
            objs.append(Obj(shape=SHAPES[int(shape[i, c].argmax())], color=_COLOR_NAMES[int(col_logits.argmax())],
                            size=SIZES[int(size[i, c].argmax())], row=c // GRID, col=c % GRID))
        scenes.append(Scene(objects=tuple(objs), background=bg))
    return scenes


@torch.no_grad()
def recognize_uint8(model, images_uint8: torch.Tensor, batch_size: int = 256) -> list[Scene]:
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    scenes: list[Scene] = []
    for i in range(0, len(images_uint8), batch_size):
        scenes += decode_scenes(model(to_float(images_uint8[i:i + batch_size]).to(device)))
    model.train(was)
    return scenes


def _scene_key(scene: Scene) -> tuple:
    return frozenset(scene.objects), scene.background


def training_scenes(data_cfg) -> set:
    """The scenes of the training stream ``data_cfg`` describes (as order-free keys), drawn without
    rendering: the test stream is separate, but small scenes recur in both by chance."""
    from ..data.shapes import _heldout_filter, scene_for_item

    train = data_cfg.model_copy(update={"split": "train"})
    n = train.num_items if train.limit is None else min(train.limit, train.num_items)
    keep = _heldout_filter(train)
    return {_scene_key(scene_for_item(i, seed=train.seed, split="train", max_objects=train.max_objects,
                                      holdout=train.holdout, heldout=keep)) for i in range(n)}


def evaluate_recognition(model, data_cfg, n: int = 2000) -> dict[str, float]:
    """Per-attribute accuracy on the first ``n`` test scenes of the run's data, less any scene that the
    training stream also holds (``excluded_seen`` counts them)."""
    if data_cfg.name != "shapes":
        raise GenforgeError(f"recognition is measured on shapes scenes, but the run's data is {data_cfg.name!r}")
    test = load_dataset(data_cfg.model_copy(update={"split": "test", "flip": False, "limit": n}))
    seen = training_scenes(data_cfg)
    keep = [i for i, sc in enumerate(test.column("spec")) if _scene_key(sc) not in seen]
    if not keep:
        raise GenforgeError(f"all {len(test)} test scenes also occur in training; evaluate on more (-n)")
    specs = [test.column("spec")[i] for i in keep]
    report = scene_attribute_accuracy(recognize_uint8(model, test.column("image")[keep]), specs)
    return {**report, "excluded_seen": len(test) - len(keep)}


@register_task("recognize")
class RecognizeTask(Task):
    models = ("recognizer",)
    needs = ("image", "spec")

    def __init__(self, cfg, data=None, run_dir=None, eval_items: int = 2000):
        super().__init__(cfg, data, run_dir)
        if data is not None and data.has("spec") and len(data) and not isinstance(data.column("spec")[0], Scene):
            raise GenforgeError(f"task 'recognize' reads shapes scenes, but dataset {cfg.data.name!r} has other "
                                "specs; use data.name=shapes")
        if cfg.data.flip:
            warnings.warn("data.flip is ignored by task 'recognize': a flipped scene is a different scene")
        self.eval_items = eval_items

    def collate(self, data, idx, generator):
        # no flips: a flip moves objects to other cells and changes the scene the label describes
        return {"image": to_float(data.column("image")[idx]), **scene_targets(data.take(idx, ["spec"])["spec"])}

    def step(self, batch, optimize):
        out = self.nets["model"](batch["image"])
        losses = recognition_loss(out, batch)
        optimize("model", losses["loss"])
        with torch.no_grad():
            occ_ok = ((out["occupied"] > 0).float() == batch["occupied"]).float().mean()
        return {**{k: v.detach() for k, v in losses.items()}, "acc_occupied": occ_ok}

    def evaluate(self, model):
        return {f"test_{k}": v for k, v in evaluate_recognition(model, self.cfg.data, self.eval_items).items()}
