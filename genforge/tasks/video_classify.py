"""What a shapes_video clip shows, as yes/no attributes: the video feature net's training task.

A clip's target is the set of attribute words its spec holds (``clip_attributes``): the shapes, the
colours (a turning object's both), the motion labels (``move up-left``, ``bounce horizontal``, ``grow``,
...), the start sizes and the named background. Multi-label, not one class per clip, because a clip
has one or two objects; the loss is per-attribute binary cross-entropy. The classifier exists for its
features (FVD-<name>, ``genforge.eval.fvd``): predicting motions makes them see motion, predicting
colours and shapes makes them see appearance, as the motion verifier judges both.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..data import Examples, load_dataset
from ..data.shapes import BACKGROUNDS, COLORS, SHAPES, SIZES
from ..data.transforms import to_float
from ..data.video import DIRECTIONS, motion_label
from ..errors import GenforgeError
from ..registry import register_task
from . import Task

MOTION_LABELS: tuple[str, ...] = (*(motion_label("move", d) for d in DIRECTIONS), "bounce horizontal",
                                  "bounce vertical", "grow", "shrink", "turn")
#: group -> its words; a model's outputs are ATTRIBUTES in this order
GROUPS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": tuple(COLORS), "motion": MOTION_LABELS,
                                      "size": SIZES, "background": tuple(BACKGROUNDS)}
ATTRIBUTES: tuple[str, ...] = tuple(f"{g}:{w}" for g, words in GROUPS.items() for w in words)
_INDEX = {a: i for i, a in enumerate(ATTRIBUTES)}


def clip_attributes(spec: Any) -> set[str]:
    """The attributes (``group:word``) of a VideoScene or MotionSpec."""
    spec = spec.spec() if hasattr(spec, "spec") else spec
    out = {f"background:{spec.background}"} if spec.background else set()
    for o in spec.objects:
        out |= {f"shape:{o['shape']}", f"color:{o['color']}", f"motion:{o['label']}", f"size:{o['size']}"}
        if o.get("end_color"):
            out.add(f"color:{o['end_color']}")
    return out


def attribute_targets(specs: list) -> torch.Tensor:
    """(N, len(ATTRIBUTES)) float multi-hot targets of N specs."""
    out = torch.zeros(len(specs), len(ATTRIBUTES))
    for i, s in enumerate(specs):
        out[i, [_INDEX[a] for a in clip_attributes(s)]] = 1.0
    return out


def attribute_accuracy(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``pred``, ``target``: (N, len(ATTRIBUTES)) bool / 0-1. ``accuracy``: clips whose every attribute
    is right; ``accuracy_<group>``: clips whose attributes of that group are all right."""
    right = pred.bool() == target.bool()
    out = {"accuracy": right.all(1).float().mean().item()}
    start = 0
    for g, words in GROUPS.items():
        out[f"accuracy_{g}"] = right[:, start:start + len(words)].all(1).float().mean().item()
        start += len(words)
    return out


@torch.no_grad()
def predict_attributes(model, clips_uint8: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, len(ATTRIBUTES)) bool: sigmoid > 0.5 for uint8 clips at the model's size."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        out = [model(to_float(clips_uint8[i:i + batch_size]).to(device)).cpu() > 0
               for i in range(0, len(clips_uint8), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0, len(ATTRIBUTES), dtype=torch.bool)


@register_task("video_classify")
class VideoClassifyTask(Task):
    models = ("video_cnn",)
    needs = ("frames", "spec")

    def __init__(self, cfg, data: Examples | None = None, run_dir=None, eval_items: int = 1000):
        super().__init__(cfg, data, run_dir)
        if self.model.num_outputs != len(ATTRIBUTES):
            raise GenforgeError(f"video_classify predicts {len(ATTRIBUTES)} attributes; set "
                                f"model.params.num_outputs={len(ATTRIBUTES)} (got {self.model.num_outputs})")
        if eval_items < 0:
            raise GenforgeError(f"task_params.eval_items must be >= 0, got {eval_items}")
        self.eval_items = eval_items
        self._targets: tuple[int, torch.Tensor] | None = None  # (id of the dataset, its targets)

    def _targets_of(self, data: Examples) -> torch.Tensor:
        if self._targets is None or self._targets[0] != id(data):
            self._targets = (id(data), attribute_targets(data.column("spec")))
        return self._targets[1]

    def collate(self, data: Examples, idx: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        # no flips or time reversal: each would change the labels (left/right, grow/shrink)
        return {"image": to_float(data.column("frames")[idx]), "target": self._targets_of(data)[idx]}

    def step(self, batch, optimize):
        logits = self.nets["model"](batch["image"])
        loss = F.binary_cross_entropy_with_logits(logits, batch["target"])
        optimize("model", loss)
        exact = ((logits.detach() > 0) == batch["target"].bool()).all(1).float().mean()
        return {"loss": loss.detach(), "acc": exact}

    def preview(self, data: Examples, n: int = 64) -> torch.Tensor | None:
        clips = data.column("frames")[: max(1, n // self.grid_columns)]
        from .video import _as_grid

        return _as_grid(clips, self.grid_columns)

    def evaluate(self, model) -> dict[str, float]:
        """Attribute accuracy on the first ``eval_items`` clips of the test split."""
        if not self.eval_items:
            return {}
        test = load_dataset(self.cfg.data.model_copy(update={"split": "test", "limit": self.eval_items}))
        pred = predict_attributes(model, test.column("frames"))
        return {f"test_{k}": v for k, v in attribute_accuracy(pred, attribute_targets(test.column("spec"))).items()}
