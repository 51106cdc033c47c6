"""Text-to-image generation from a ``textgan`` run: the text-to-image pipeline's interface over a GAN.

``pipe(prompt="a small red circle above a large blue square", n=8)`` -> list of PIL images, as for
diffusion runs, so the CLI, the server and the benchmarks take either family. A GAN draws in one
pass with no guidance: steps, sampler and guidance are ignored with a warning, and a negative
prompt or an empty prompt (which a diffusion model reads as "unconditional") is refused.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Callable, Optional, Sequence

import torch

from ..errors import GenforgeError
from ..text.tokenizer import FILENAME
from .image import ImagePipeline
from .text2image import TextToImagePipeline


class TextGANPipeline(TextToImagePipeline):
    """Images from prompts with a text-conditional GAN; same prompt and seed, same images."""

    def __init__(self, cfg, model, run_dir, device):
        if not (run_dir / FILENAME).is_file():
            raise GenforgeError(f"{run_dir} has no {FILENAME}; a textgan run needs the tokenizer it was "
                                "trained with (copy it from the training run directory)")
        super().__init__(cfg, model, run_dir, device)
        self.context = model.max_length
        if self.tokenizer.vocab_size > model.vocab_size:
            raise GenforgeError(f"{run_dir}/{FILENAME} has {self.tokenizer.vocab_size} tokens but the model "
                                f"reads {model.vocab_size}; the tokenizer belongs to another run")
        # no defaults to fill in: callers that pass None for steps/guidance mean "not given"
        self.default_steps = None
        self.default_guidance = None
        self.default_layout = "off"  # a GAN draws the whole image in one pass: no regions to plan

    def check_sampling(self, steps, sampler, guidance=1.0, seed=0) -> None:
        # only what is refused for every GAN (a bad seed or guidance value); steps and sampler mean nothing here
        ImagePipeline.check_sampling(self, 1, "dpm++", 1.0 if guidance is None else guidance, seed)

    def check_prompt(self, prompt: str | Sequence[str]) -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if isinstance(prompts, (list, tuple)) and any(isinstance(p, str) and not p.strip() for p in prompts):
            raise GenforgeError("empty prompt: a text-conditional GAN has no unconditional mode; describe the "
                                "image, e.g. 'a small red circle above a large blue square'")
        return super().check_prompt(prompts)

    def draw_noise(self, n: int, seed: int) -> torch.Tensor:
        return torch.randn(n, self.model.z_dim, generator=torch.Generator().manual_seed(seed))

    def tokens(self, texts: Sequence[str]) -> torch.Tensor:
        with warnings.catch_warnings():  # check_prompt has already said which prompts are cut
            warnings.simplefilter("ignore")
            return self.tokenizer.batch(list(texts), self.model.max_length)

    @torch.no_grad()
    def generate(self, n: int = 1, seed: int = 0, steps: Optional[int] = None, sampler: Optional[str] = None,
                 prompt: str | Sequence[str] = "", negative_prompt: Optional[str] = None,
                 guidance: Optional[float] = None, batch_size: int = 64,
                 progress: Optional[Callable[[int, int], None]] = None, labels=None) -> torch.Tensor:
        """Float images in [-1, 1], (n, C, H, W), on the CPU; a list ``prompt`` gives one per image."""
        if labels:
            raise GenforgeError(f"{self.run_dir.name} takes a prompt, not labels")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise GenforgeError(f"n must be a whole number of at least 1, got {n}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise GenforgeError(f"batch_size must be a whole number of at least 1, got {batch_size}")
        self.check_sampling(steps, sampler, guidance, seed)
        if negative_prompt:
            raise GenforgeError(f"{self.run_dir.name} is a GAN: it has no guidance to steer away from a negative "
                                "prompt; leave negative_prompt out or use a text2image diffusion run")
        # "dpm++" is what callers pass when nobody chose a sampler, so only another name was asked for
        ignored = [name for name, given in (("steps", steps is not None),
                                            ("sampler", sampler not in (None, "dpm++")),
                                            ("guidance", guidance not in (None, 1.0))) if given]
        if ignored:
            warnings.warn(f"{', '.join(ignored)} ignored: a GAN makes its images in one pass, without guidance")
        if not isinstance(prompt, (str, list, tuple)):
            raise GenforgeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise GenforgeError(f"got {len(prompts)} prompts for n={n} images; give one prompt or exactly n")
        for note in self.check_prompt(prompts):
            warnings.warn(note)
        noise, out = self.draw_noise(n, seed), []
        for i in range(0, n, batch_size):
            ids = self.tokens(prompts[i:i + batch_size]).to(self.device)
            out.append(self.model.generate(noise[i:i + batch_size].to(self.device), ids).float().cpu())
        return torch.cat(out)
