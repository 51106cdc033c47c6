"""Text-conditional GAN training: hinge loss with the matching-aware discriminator of GAN-INT-CLS.

The discriminator sees three pairs per step: a real image with its own caption (real), a generated
image with the caption it was drawn from (fake) and a real image with another example's caption
(mismatched). Without the third pair it could accept any realistic image whatever the text says,
and the generator would be free to ignore the caption.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.transforms import to_float
from ..errors import GenforgeError
from ..registry import register_task
from ..text.tokenizer import caption_texts, tokenizer_for
from .gan import GANTask

PROMPTS_FILE = "prompts.txt"


def pick_captions(column: Sequence[Any], idx: Sequence[int], generator: torch.Generator) -> list[str]:
    """One caption per example: the only one, or one of several drawn with ``generator``."""
    out = []
    for i in idx:
        c = column[int(i)]
        if isinstance(c, str):
            out.append(c)
        else:
            c = list(c)
            if not c:
                raise GenforgeError(f"example {int(i)} has an empty caption list; give every image a caption")
            out.append(c[int(torch.randint(len(c), (1,), generator=generator))])
    return out


@register_task("textgan")
class TextGANTask(GANTask):
    models = ("textgan",)
    needs = ("image", "caption")

    def __init__(self, cfg, data=None, run_dir=None, won_after: int = 200, tokenizer: str = "bpe",
                 mismatch_weight: float = 0.5, prompts: Optional[list[str]] = None, eval_prompts: int = 64):
        super().__init__(cfg, data, run_dir, won_after=won_after)
        if not 0 <= mismatch_weight <= 1:
            raise GenforgeError(f"task_params.mismatch_weight must be in [0, 1], got {mismatch_weight}")
        self.mismatch_weight, self.eval_prompts = mismatch_weight, eval_prompts
        if cfg.data.flip:
            # a mirrored image no longer matches "to the left of": flips would teach wrong captions
            raise GenforgeError("data.flip=true mirrors images but not their captions' left and right; "
                                "set data.flip=false for textgan")
        texts = caption_texts(data.column("caption")) if data is not None else None
        self.tokenizer = tokenizer_for(texts, run_dir, kind=tokenizer, vocab_size=self.model.vocab_size)
        # fixed prompts for the progress grids, one per row: the first captions of the test split, as
        # the text2image diffusion task picks them, so the two families' grids show the same prompts
        self.prompts = list(prompts) if prompts else (self._grid_prompts(data) if data is not None else None)

    def _grid_prompts(self, data) -> list[str]:
        from ..data import load_dataset

        n = self.grid_columns
        try:
            test = load_dataset(self.cfg.data.model_copy(update={"split": "test", "limit": n}))
            texts = caption_texts(test.column("caption"))
        except (GenforgeError, ValueError, OSError, KeyError):
            texts = []  # a dataset without a test split: fall back to the training captions
        if len(texts) < n:
            texts = caption_texts(data.column("caption"))
            texts = texts[::max(1, len(texts) // n)]
        return texts[:n]

    def monitor(self, step, values):
        if super().monitor(step, values) is None:
            return None
        return (f"the discriminator has won: it has rated the generator's images fake with certainty "
                f"(d_fake < {self.WON_BELOW}) since step {self._won_since}, so the generator learns little "
                "more. More images, a smaller model.params.d_width or a lower train.lr help; the "
                "text2image diffusion recipes cannot collapse this way")

    def tokens(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer.batch(list(texts), self.model.max_length)

    def collate(self, data, idx, generator):
        images = to_float(data.column("image")[idx])
        column = data.column("caption")
        texts = pick_captions(column, idx, generator)
        # mismatched captions come from random examples of the whole dataset, not just this batch
        other = torch.randint(len(data), (len(idx),), generator=generator)
        wrong = pick_captions(column, other, generator)
        ids, wrong_ids = self.tokens(texts), self.tokens(wrong)
        width = max(ids.shape[1], wrong_ids.shape[1])
        ids, wrong_ids = (F.pad(t, (0, width - t.shape[1])) for t in (ids, wrong_ids))
        # a "wrong" caption that happens to say the same thing is no mismatch: leave it out
        differs = (ids != wrong_ids).any(dim=1).float()
        return {"image": images, "ids": ids, "wrong_ids": wrong_ids, "differs": differs}

    def step(self, batch, optimize):
        real, ids, wrong_ids, differs = batch["image"], batch["ids"], batch["wrong_ids"], batch["differs"]
        g, d = self.nets["g"], self.nets["d"]
        with torch.no_grad():
            cond = self.model.encode(ids)
        z = torch.randn(real.shape[0], self.model.z_dim, device=real.device)
        fake = g(z, cond)
        d_real, d_wrong = d(real, ids, wrong_ids)
        d_fake = d(fake.detach(), ids)
        mismatch = (F.relu(1 + d_wrong) * differs).sum() / differs.sum().clamp(min=1)
        w = self.mismatch_weight
        loss_d = F.relu(1 - d_real).mean() + (1 - w) * F.relu(1 + d_fake).mean() + w * mismatch
        optimize("d", loss_d)
        loss_g = -d(fake, ids).mean()
        optimize("g", loss_g)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "loss_d_mismatch": mismatch.detach(),
                "d_real": torch.sigmoid(d_real.detach()).mean(),
                "d_fake": torch.sigmoid(d_fake.detach()).mean(),
                "d_wrong": torch.sigmoid(d_wrong.detach()).mean()}

    @torch.no_grad()
    def sample_images(self, model, n=64, seed=0):
        if not self.prompts or self.tokenizer is None:
            return None
        rows = self.prompts[:max(1, n // self.grid_columns)]
        texts = [p for p in rows for _ in range(self.grid_columns)]
        if self.run_dir is not None:
            from ..train.checkpoint import atomic_write_bytes

            (Path(self.run_dir) / "samples").mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(self.run_dir) / "samples" / PROMPTS_FILE,
                               ("\n".join(rows) + "\n").encode())
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        # the same noise in every row, so a column shows one noise vector under each prompt
        z = torch.randn(self.grid_columns, model.z_dim, generator=gen).repeat(len(rows), 1).to(device)
        was = model.training
        model.eval()
        x = model.generate(z, self.tokens(texts).to(device))
        model.train(was)
        return x

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Pixel-verifier scores (genforge.eval.verify) of one image per test caption, the first
        ``eval_prompts`` of the test split (shapes only: the verifier reads nothing else)."""
        if self.cfg.data.name != "shapes" or self.eval_prompts < 1 or self.tokenizer is None:
            return {}
        from ..data import load_dataset
        from ..data.transforms import to_uint8
        from ..eval.verify import score

        test = load_dataset(self.cfg.data.model_copy(update={"split": "test", "limit": self.eval_prompts}))
        prompts = [c if isinstance(c, str) else c[0] for c in test.column("caption")]
        device = next(model.parameters()).device
        z = torch.randn(len(prompts), model.z_dim, generator=torch.Generator().manual_seed(self.cfg.train.seed))
        was = model.training
        model.eval()
        images = model.generate(z.to(device), self.tokens(prompts).to(device))
        model.train(was)
        report = score(to_uint8(images.cpu()), list(test.column("spec")))
        out = {"verify_all_correct": report["all_correct"]}
        out.update({f"verify_{k}": v for k, v in report["accuracy"].items() if v is not None})
        return out
