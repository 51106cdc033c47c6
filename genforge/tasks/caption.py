"""Image captioning: teacher-forced cross-entropy on the next token, BLEU / CIDEr-D / exact match on
held-out images.

A ``shapes`` caption names its objects in the order the scene generator drew them, which the picture
does not show: "a red circle above a blue square" and "a blue square below a red circle" are the same
image. So for shapes scenes the task trains on the reading-order caption (objects top row first,
left to right), a function of the pixels, and scores a caption against every ordering of the scene
(``scene_captions``), since each is a correct description.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data import Examples, load_dataset
from ..data.shapes import Scene
from ..data.transforms import to_float
from ..errors import GenforgeError
from ..registry import register_task
from ..text.tokenizer import PAD, TextTokenizer, caption_texts, tokenizer_for
from . import Task

#: all orderings are listed up to this many objects (24 captions); beyond, two of them
_MAX_PERMUTED = 4


def reading_order(scene: Scene) -> Scene:
    """The scene with its objects sorted top row first, then left to right."""
    return Scene(objects=tuple(sorted(scene.objects, key=lambda o: (o.row, o.col))),
                 background=scene.background)


def scene_captions(scene: Scene) -> list[str]:
    """Every caption of the shapes grammar that describes ``scene`` (one per ordering of its objects)."""
    objs = scene.objects
    orders = (itertools.permutations(objs) if len(objs) <= _MAX_PERMUTED
              else [objs, reading_order(scene).objects])
    out = dict.fromkeys(Scene(objects=tuple(o), background=scene.background).caption() for o in orders)
    return list(out)


def _as_list(caption: str | Sequence[str]) -> list[str]:
    return [caption] if isinstance(caption, str) else list(caption)


def _scenes(data: Examples) -> Optional[list[Scene]]:
    if data.has("spec") and len(data) and all(isinstance(s, Scene) for s in data.column("spec")):
        return list(data.column("spec"))
    return None


def training_captions(data: Examples, canonical: bool = True) -> list[list[str]]:
    """The captions each example trains on: shapes scenes' reading-order caption when ``canonical``,
    else the dataset's own (one or several per image)."""
    scenes = _scenes(data) if canonical else None
    if scenes is not None:
        return [[reading_order(s).caption()] for s in scenes]
    return [_as_list(c) for c in data.column("caption")]


def references(data: Examples) -> list[list[str]]:
    """Reference captions per example: the dataset's own, plus every ordering for shapes scenes."""
    refs = [_as_list(c) for c in data.column("caption")]
    scenes = _scenes(data)
    if scenes is not None:  # reading order first: the one a trained model is expected to write
        refs = [list(dict.fromkeys([reading_order(s).caption()] + r + scene_captions(s)))
                for r, s in zip(refs, scenes)]
    return refs


MAX_BEAM = 16


def check_decoding(beam: Any, max_length: Any = None) -> None:
    """One-line errors for a beam width or length cap that cannot be decoded with."""
    if isinstance(beam, bool) or not isinstance(beam, int) or not 1 <= beam <= MAX_BEAM:
        raise GenforgeError(f"beam must be an integer from 1 (greedy) to {MAX_BEAM}, got {beam!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or max_length < 2):
        raise GenforgeError(f"max_length must be an integer of at least 2 tokens ([BOS] and one more), "
                            f"got {max_length!r}")


@torch.no_grad()
def caption_batch(model, tokenizer: TextTokenizer, images_uint8: torch.Tensor, beam: int = 1,
                  max_length: Optional[int] = None, batch_size: int = 256) -> list[str]:
    """Captions of uint8 images (N, C, H, W) at the model's size, decoded ``batch_size`` at a time."""
    check_decoding(beam, max_length)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out: list[str] = []
    try:
        for i in range(0, len(images_uint8), batch_size):
            x = to_float(images_uint8[i:i + batch_size]).to(device)
            ids = model.generate(x, beam=beam, max_length=max_length).cpu()
            out += [tokenizer.decode(row) for row in ids]
    finally:
        model.train(was)
    return out


def evaluation_sets(data_cfg, items: int) -> dict[str, Examples]:
    """The test scenes to score: seen and held-out compositions apart when training held some out."""
    base = data_cfg.model_copy(update={"split": "test", "flip": False, "limit": items})
    if data_cfg.name == "shapes" and data_cfg.holdout != "none":
        return {"test": load_dataset(base.model_copy(update={"compositions": "seen"})),
                "heldout": load_dataset(base.model_copy(update={"compositions": "heldout"}))}
    return {"test": load_dataset(base.model_copy(update={"compositions": "all"}))}


def evaluate_captions(model, tokenizer: TextTokenizer, data: Examples, beam: int = 1,
                      max_length: Optional[int] = None) -> dict[str, float]:
    from ..eval.text_metrics import caption_metrics

    hyps = caption_batch(model, tokenizer, data.column("image"), beam=beam, max_length=max_length)
    return caption_metrics(hyps, references(data))


def caption_report(model, tokenizer: TextTokenizer, data_cfg, items: int = 1000, beam: int = 1,
                   max_length: Optional[int] = None, batch_size: int = 256) -> dict[str, Any]:
    """BLEU-1..4, CIDEr-D and exact match per evaluation set (seen / held-out compositions for a
    shapes run with a hold-out), with the captioning speed (images/s, decoding only)."""
    import time

    from ..eval.text_metrics import caption_metrics

    if items < 1:
        raise GenforgeError(f"-n must be at least 1 test image, got {items}")
    check_decoding(beam, max_length)
    report: dict[str, Any] = {"beam": beam, "sets": {}}
    seconds = images = 0
    for name, data in evaluation_sets(data_cfg, items).items():
        t0 = time.perf_counter()
        hyps = caption_batch(model, tokenizer, data.column("image"), beam=beam, max_length=max_length,
                             batch_size=batch_size)
        seconds += time.perf_counter() - t0
        images += len(hyps)
        refs = references(data)
        report["sets"][name] = {**caption_metrics(hyps, refs),
                                "examples": [{"caption": h, "reference": r[0]} for h, r in zip(hyps[:3], refs)]}
    report["captions_per_s"] = round(images / max(seconds, 1e-9), 1)
    return report


@register_task("caption")
class CaptionTask(Task):
    models = ("captioner",)
    needs = ("image", "caption")

    def __init__(self, cfg, data=None, run_dir=None, tokenizer: str = "bpe", canonical: bool = True,
                 eval_items: int = 1000, eval_beam: int = 1):
        super().__init__(cfg, data, run_dir)
        if eval_items < 0:
            raise GenforgeError(f"task_params.eval_items must be 0 (no evaluation) or more, got {eval_items}")
        check_decoding(eval_beam)
        self.canonical, self.eval_items, self.eval_beam = canonical, eval_items, eval_beam
        self.max_length = int(self.model.max_length)
        if cfg.data.flip:
            warnings.warn("data.flip is ignored by task 'caption': a mirrored picture swaps left and right "
                          "in its caption")
        self._captions: tuple[int, list[list[str]]] = (-1, [])
        texts = None
        if data is not None:
            texts = caption_texts(data.column("caption")) + caption_texts(self.captions(data))
        self.tokenizer: Optional[TextTokenizer] = tokenizer_for(texts, run_dir, kind=tokenizer,
                                                                vocab_size=self.model.vocab_size)

    def captions(self, data: Examples) -> list[list[str]]:
        if self._captions[0] != id(data):  # computed once per dataset, not per step
            self._captions = (id(data), training_captions(data, self.canonical))
        return self._captions[1]

    def collate(self, data, idx, generator):
        options = self.captions(data)
        picked = []
        for i in idx.tolist():
            choices = options[i]
            # one caption per image per step, drawn from the step's generator: a resume replays it
            j = int(torch.randint(len(choices), (1,), generator=generator)) if len(choices) > 1 else 0
            picked.append(choices[j])
        return {"image": to_float(data.column("image")[idx]),
                "tokens": self.tokenizer.batch(picked, self.max_length)}

    def step(self, batch, optimize):
        tokens = batch["tokens"]
        logits = self.nets["model"](batch["image"], tokens[:, :-1])
        target = tokens[:, 1:]
        loss = caption_loss(logits, target)
        optimize("model", loss)
        with torch.no_grad():
            real = target != PAD
            acc = ((logits.argmax(-1) == target) & real).sum() / real.sum().clamp(min=1)
        return {"loss": loss.detach(), "token_acc": acc}

    def evaluate(self, model):
        out: dict[str, float] = {}
        if not self.eval_items:  # eval_items=0: no final evaluation
            return out
        for name, data in evaluation_sets(self.cfg.data, self.eval_items).items():
            metrics = evaluate_captions(model, self.tokenizer, data, beam=self.eval_beam)
            out.update({f"{name}_{k}": v for k, v in metrics.items() if k != "n"})
        return out


def caption_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the real tokens; padding positions add nothing and count for nothing."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=PAD)
