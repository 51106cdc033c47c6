"""Text-to-image diffusion training: the v/epsilon objective of ``tasks/diffusion.py`` with the
caption as cross-attention context.

Each step sees one caption per image (an image with several is given one at random), and a
``cond_drop`` fraction of captions is replaced by the empty string, the input the pipeline uses
for unconditional predictions in classifier-free guidance. Both choices come from the collate
generator, which the trainer seeds per step, so a resumed run replays them exactly.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import Examples
from ..data.transforms import to_float
from ..errors import GenforgeError
from ..registry import register_task
from ..text.encoders import minilm_tokenize
from ..text.tokenizer import TextTokenizer, caption_texts, tokenizer_for
from . import Task
from .diffusion import denoising_loss

GRID_ROWS = 8  # one prompt per row of the progress grids


def tokenize_prompts(texts: Sequence[str], model_params: dict, tokenizer: TextTokenizer | None,
                     warn_cut: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) for the model's text encoder: the run's tokenizer, or MiniLM's own."""
    context = int(model_params.get("context", 32))
    if model_params.get("text_encoder", "transformer") == "minilm":
        return minilm_tokenize(texts, context)
    if tokenizer is None:
        raise GenforgeError("a transformer text encoder needs the run's tokenizer.json")
    with warnings.catch_warnings():
        if not warn_cut:  # the caller has already said which prompts are cut
            warnings.simplefilter("ignore")
        ids = tokenizer.batch(list(texts), max_length=context)
    return ids, (ids != 0).long()


@register_task("text2image")
class TextToImageTask(Task):
    models = ("text2image",)
    needs = ("image", "caption")
    pixels = "image"  # the field a batch's "image" comes from (video: "frames", whole clips)

    def __init__(self, cfg, data: Examples | None = None, run_dir: Path | None = None,
                 cond_drop: float = 0.1, tokenizer: str = "bpe", sample_steps: int = 12,
                 sample_sampler: str = "dpm++", sample_guidance: float = 2.0, eval_prompts: int = 32):
        super().__init__(cfg, data, run_dir)
        if not 0 <= cond_drop < 1:
            raise GenforgeError(f"task_params.cond_drop must be in [0, 1), got {cond_drop}")
        if cfg.data.flip:
            raise GenforgeError("data.flip mirrors images but not the 'left'/'right' in their captions; "
                                "set data.flip=false for text-to-image training")
        self.cond_drop, self.sample_steps, self.sample_sampler = cond_drop, sample_steps, sample_sampler
        self.sample_guidance, self.eval_prompts = sample_guidance, eval_prompts
        params = cfg.model.params
        self.tokenizer: TextTokenizer | None = None
        if params.get("text_encoder", "transformer") == "transformer":
            texts = caption_texts(data.column("caption")) if data is not None else None
            self.tokenizer = tokenizer_for(texts, run_dir, kind=tokenizer,
                                           vocab_size=int(params.get("vocab_size", 256)))
        self.prompts = self._grid_prompts(data) if data is not None else []
        self._eval_set: list[str] | None = None

    # ---- batches ------------------------------------------------------------------------------
    def collate(self, data: Examples, idx: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        images = to_float(data.column(self.pixels)[idx])
        column = data.column("caption")
        texts = []
        picks = torch.rand(len(idx), generator=generator)
        drops = torch.rand(len(idx), generator=generator) < self.cond_drop
        for i, u, drop in zip(idx.tolist(), picks.tolist(), drops.tolist()):
            caps = [column[i]] if isinstance(column[i], str) else list(column[i])
            texts.append("" if drop or not caps else caps[min(int(u * len(caps)), len(caps) - 1)])
        ids, mask = tokenize_prompts(texts, self.cfg.model.params, self.tokenizer)
        return {"image": images, "ids": ids, "mask": mask}

    def step(self, batch, optimize):
        net = self.nets["model"]
        loss = denoising_loss(self.model.train_scheduler, batch["image"],
                              lambda xt, t: net(xt, t, batch["ids"], batch["mask"]),
                              self.model.noise_like)
        optimize("model", loss)
        return {"loss": loss.detach()}

    # ---- progress grids and evaluation --------------------------------------------------------
    def _test_set(self, n: int) -> list[str] | None:
        """Captions of the first ``n`` test items (shapes: the test stream of the run's own
        settings), or None when the dataset has no test split."""
        from ..data import load_dataset

        try:
            test = load_dataset(self.cfg.data.model_copy(update={"split": "test", "limit": n}))
        except (GenforgeError, ValueError, OSError):
            return None
        caps = [c if isinstance(c, str) else c[0] for c in test.column("caption")] if test.has("caption") else []
        return caps or None

    def _grid_prompts(self, data: Examples) -> list[str]:
        found = self._test_set(GRID_ROWS)
        if found is not None:
            return found[:GRID_ROWS]
        texts = caption_texts(data.column("caption"))
        step = max(1, len(texts) // GRID_ROWS)
        return texts[::step][:GRID_ROWS]

    def preview(self, data: Examples, n: int = 64) -> torch.Tensor | None:
        return data.column("image")[:n]

    def _generate(self, model, prompts: Sequence[str], seed: int, guidance: float) -> torch.Tensor:
        params = self.cfg.model.params
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(prompts), model.channels, model.image_size, model.image_size, generator=gen)
        cond = tokenize_prompts(prompts, params, self.tokenizer)
        uncond = tokenize_prompts([""] * len(prompts), params, self.tokenizer)
        was = model.training
        model.eval()
        try:
            x = model.sample(noise.to(device), tuple(t.to(device) for t in cond),
                             tuple(t.to(device) for t in uncond), guidance=guidance, steps=self.sample_steps,
                             sampler=self.sample_sampler, generator=gen)
        finally:
            model.train(was)
        return x

    @torch.no_grad()
    def sample_images(self, model, n=64, seed=0):
        if not self.prompts:
            return None
        rows = self.prompts[: max(1, n // self.grid_columns)]
        prompts = [p for p in rows for _ in range(self.grid_columns)]
        if self.run_dir is not None:  # what each grid row was asked to show, top to bottom
            from ..train.checkpoint import atomic_write_bytes

            (Path(self.run_dir) / "samples").mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(self.run_dir) / "samples" / "prompts.txt", ("\n".join(rows) + "\n").encode())
        return self._generate(model, prompts, seed, self.sample_guidance)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Verifier scores of images drawn for the first ``eval_prompts`` test captions (shapes only:
        the pixel checker reads nothing else)."""
        if self.cfg.data.name != "shapes" or self.eval_prompts < 1:
            return {}
        if self._eval_set is None:
            self._eval_set = self._test_set(self.eval_prompts) or []
        prompts = self._eval_set
        if not prompts:
            return {}
        from ..data.transforms import to_uint8
        from ..eval.verify import score

        images = self._generate(model, prompts, seed=self.cfg.train.seed, guidance=self.sample_guidance)
        # judged against the caption, not the scene: a two-object caption names a relation, not cells
        report = score(to_uint8(images.cpu()), prompts)
        out = {"verify_all_correct": report["all_correct"]}
        out.update({f"verify_{k}": v for k, v in report["accuracy"].items() if v is not None})
        return out
