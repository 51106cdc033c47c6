"""A contrastive text-image run as a scorer: embed images and captions, rank captions for images."""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import GenforgeError
from ..text.tokenizer import TextTokenizer
from . import Pipeline


class ContrastivePipeline(Pipeline):
    """``pipe.similarity(images, texts)`` -> (N_images, N_texts) cosine similarities; images are float
    tensors in [-1, 1] at the run's size, as text-to-image pipelines return them."""

    kind = "contrastive"

    def __init__(self, cfg, model, run_dir, device):
        super().__init__(cfg, model, run_dir, device)
        self.tokenizer = TextTokenizer.load(run_dir)

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        want = (self.model.channels, self.model.image_size, self.model.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise GenforgeError(f"expected images of shape (N, {', '.join(map(str, want))}), got "
                                f"{tuple(images.shape)}; resize them to the scorer's {want[1]} px")
        return images.float()

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        from ..eval.rprecision import embed_images

        return embed_images(self.model, self._check(images))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        from ..eval.rprecision import embed_texts

        if isinstance(texts, str) or not texts:
            raise GenforgeError("give a non-empty list of captions")
        return embed_texts(self.model, self.tokenizer, list(texts))

    def similarity(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return self.embed_images(images) @ self.embed_texts(texts).T

    def r_precision(self, images: torch.Tensor, prompts: Sequence[str], pool: Sequence[str], r: int = 100,
                    seed: int = 0) -> float:
        """R-precision of ``images`` drawn for ``prompts``, distractors drawn from ``pool``."""
        from ..eval.rprecision import score_images

        return score_images(self.model, self.tokenizer, self._check(images), list(prompts), list(pool), r, seed)
