"""Contrastive text-image training (model ``clip``): symmetric InfoNCE over each batch's
(image, caption) pairs. Evaluation embeds held-out test scenes and reports top-1 retrieval both
ways and the R-precision of the real test images (the ceiling any generator can reach when judged
by this scorer).

Each step sees one caption per image (picked by the collate generator, which the trainer seeds
per step, so a resumed run replays it); pairs whose captions are the same text count as matches.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data import Examples
from ..data.transforms import to_float
from ..errors import GenforgeError
from ..models.clip import info_nce
from ..registry import register_task
from ..text.tokenizer import caption_texts, tokenizer_for
from . import Task


def pick_captions(column, idx: torch.Tensor, generator: torch.Generator) -> list[str]:
    picks = torch.rand(len(idx), generator=generator)
    texts = []
    for i, u in zip(idx.tolist(), picks.tolist()):
        caps = [column[i]] if isinstance(column[i], str) else list(column[i])
        texts.append(caps[min(int(u * len(caps)), len(caps) - 1)] if caps else "")
    return texts


@register_task("contrastive")
class ContrastiveTask(Task):
    models = ("clip",)
    needs = ("image", "caption")

    def __init__(self, cfg, data: Examples | None = None, run_dir: Path | None = None, tokenizer: str = "bpe",
                 eval_items: int = 1000, r: int = 100):
        super().__init__(cfg, data, run_dir)
        if cfg.data.flip:
            raise GenforgeError("data.flip mirrors images but not the 'left'/'right' in their captions; "
                                "set data.flip=false for contrastive training")
        if r < 2:
            raise GenforgeError(f"task_params.r must be at least 2 (the true caption and one distractor), got {r}")
        self.eval_items, self.r = eval_items, r
        cap = int(cfg.model.params.get("vocab_size", 256))
        texts = caption_texts(data.column("caption")) if data is not None else None
        self.tokenizer = tokenizer_for(texts, run_dir, kind=tokenizer, vocab_size=cap)

    def collate(self, data: Examples, idx: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        texts = pick_captions(data.column("caption"), idx, generator)
        ids = self.tokenizer.batch(texts, max_length=int(self.cfg.model.params.get("context", 32)))
        key = {t: k for k, t in enumerate(dict.fromkeys(texts))}
        k = torch.tensor([key[t] for t in texts])
        return {"image": to_float(data.column("image")[idx]), "ids": ids, "mask": (ids != 0).long(),
                "same": k[:, None] == k[None, :]}

    def step(self, batch, optimize):
        logits = self.nets["model"](batch["image"], batch["ids"], batch["mask"])
        loss = info_nce(logits.float(), batch["same"])
        optimize("model", loss)
        with torch.no_grad():
            hit = batch["same"][torch.arange(len(logits)), logits.argmax(1)].float().mean()
        return {"loss": loss.detach(), "batch_i2t_top1": hit, "temperature": 1 / self.model.scale().detach()}

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Retrieval and real-image R-precision on the first ``eval_items`` test scenes."""
        from ..data import load_dataset
        from ..eval.rprecision import embed_images, embed_texts, r_precision_of, retrieval_top1

        if self.eval_items < 2 or self.tokenizer is None:
            return {}
        try:
            test = load_dataset(self.cfg.data.model_copy(update={"split": "test", "limit": self.eval_items}))
        except (GenforgeError, ValueError, OSError):
            return {}
        if not test.meta.get("held_out", True) or not test.has("caption"):
            return {}
        texts = [c if isinstance(c, str) else c[0] for c in test.column("caption")]
        img = embed_images(model, to_float(test.column("image")))
        txt = embed_texts(model, self.tokenizer, texts)
        out = {f"test_{k}": v for k, v in retrieval_top1(img, txt, texts).items()}
        if len(set(texts)) > self.r:  # enough distinct captions to draw R-1 distractors for each
            out[f"test_real_r_precision_{self.r}"] = r_precision_of(img, texts, txt, texts, txt, r=self.r,
                                                                    seed=self.cfg.train.seed)
        return out
