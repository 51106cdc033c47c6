"""Image generation from GAN and diffusion run directories."""
from __future__ import annotations

import math
import numbers
import re
from typing import Callable, Optional, Sequence

import torch
from PIL import Image

from ..data.transforms import to_pil_list, to_uint8
from ..errors import GenforgeError
from ..models.diffusion import SAMPLERS
from . import Pipeline
from .compiled import BUCKETS, BucketedForward

# torch seeds take up to 2**64 - 1; the sampler seeds chunk i with seed + i, so stay well below
MAX_SEED = 2**63 - 1


class ImagePipeline(Pipeline):
    """``pipe(n=16, seed=0, steps=25, sampler="dpm++")`` -> list of PIL images; same seed, same images."""

    compiled = None  # a BucketedForward once compile() is called

    def compile(self, buckets: Sequence[int] = BUCKETS) -> "ImagePipeline":
        """Sample through ``torch.compile`` from now on (see pipelines/compiled.py): images equal the
        eager ones up to float rounding; a compiler that fails leaves a warning and eager sampling."""
        if self.compiled is None:
            m = self.model
            fn, name = (m.generator, "the generator") if self.kind == "gan" else (m.forward, "the denoiser")
            self.compiled = BucketedForward(fn, self.device, buckets, name=f"{name} of {self.run_dir.name}")
        return self

    def warm_up(self, max_batch: int) -> dict[int, float]:
        """Compile each bucket up to ``max_batch`` images now rather than at the first requests;
        returns seconds per bucket (near zero where the inductor cache already had it)."""
        if self.compiled is None:
            return {}
        m, dev = self.model, self.device

        def args(b: int) -> tuple:
            y = torch.zeros(b, dtype=torch.long, device=dev) if self.conditional else None
            if self.kind == "gan":
                return torch.zeros(b, m.z_dim, device=dev), y
            x = torch.zeros(b, m.channels, m.image_size, m.image_size, device=dev)
            return x, torch.full((b,), 1, dtype=torch.long, device=dev), y

        return self.compiled.warm_up(args, max_batch)

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.model, "num_classes", 0))

    @property
    def kind(self) -> str:
        return self.cfg.task

    def _labels(self, n: int, labels: Optional[Sequence[int | str]]) -> Optional[torch.Tensor]:
        if not self.conditional:
            if labels:
                raise GenforgeError(f"{self.run_dir.name} is unconditional: it takes no labels")
            return None
        k = self.model.num_classes
        if not labels:
            return torch.arange(n) % k
        out = [self.class_index(lab) for lab in labels]
        return torch.tensor(out * (n // len(out) + 1))[:n]

    def class_index(self, value: int | str, what: str = "label") -> int:
        """The class index a user means by ``value``: an index as an int or ASCII decimal text, or a
        class name (case-insensitive). The one place labels are read, so the CLI, every API route
        and jobs refuse the same things with the same message."""
        names, k = self.class_names, self.model.num_classes
        i: Optional[int] = None
        if isinstance(value, str):
            text = value.strip()
            folded = [name.casefold() for name in names]
            if text in names:
                i = names.index(text)
            elif folded.count(text.casefold()) == 1:
                i = folded.index(text.casefold())
            elif re.fullmatch(r"[0-9]{1,9}", text):  # not str.isdigit(): that takes '²', which int() refuses
                i = int(text)
        elif isinstance(value, int) and not isinstance(value, bool):
            i = value
        if i is not None and 0 <= i < k:
            return i
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:36] + "...'"
        choices = f"an index 0..{k - 1}"
        if names:
            choices = f"a class name ({', '.join(names)}) or " + choices
        problem = "is out of range" if i is not None else "is not a class of this model"
        raise GenforgeError(f"{what} {shown} {problem}; give {choices}")

    def check_sampling(self, steps: int, sampler: str, guidance: float = 1.0, seed: int = 0) -> None:
        """Refuse what would fail deep in torch or quietly make black images (a NaN guidance)."""
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
            shown = str(seed) if len(str(seed)) <= 30 else str(seed)[:27] + "..."
            raise GenforgeError(f"seed must be a whole number from 0 to {MAX_SEED} (2**63 - 1), got {shown}")
        if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) \
                or not math.isfinite(guidance) or guidance < 0:
            raise GenforgeError(f"guidance must be a finite number of at least 0 (1: no guidance), "
                                f"got {guidance}")
        if self.kind == "diffusion":
            if sampler not in SAMPLERS:
                raise GenforgeError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
            if steps < 1:
                raise GenforgeError(f"steps must be at least 1, got {steps}")

    def label_tensor(self, n: int, labels: Optional[Sequence[int | str]] = None) -> Optional[torch.Tensor]:
        """The class index of each of ``n`` images (None for unconditional models); checks names."""
        return self._labels(n, labels)

    def draw_noise(self, n: int, seed: int) -> torch.Tensor:
        """The starting noise of ``generate(n, seed)``, drawn on the CPU."""
        gen = torch.Generator().manual_seed(seed)
        m = self.model
        if self.kind == "gan":
            return torch.randn(n, m.z_dim, generator=gen)
        return torch.randn(n, m.channels, m.image_size, m.image_size, generator=gen)

    @torch.no_grad()
    def generate(self, n: int = 16, seed: int = 0, steps: int = 25, sampler: str = "dpm++",
                 labels: Optional[Sequence[int | str]] = None, guidance: float = 1.0,
                 batch_size: int = 64, progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """Float images in [-1, 1], (n, C, H, W), on the CPU."""
        if n < 1:
            raise GenforgeError(f"n must be at least 1, got {n}")
        self.check_sampling(steps, sampler, guidance, seed)
        y = self._labels(n, labels)
        # all noise is drawn up front on the CPU so results do not depend on batch size or device
        return self.generate_from_noise(self.draw_noise(n, seed), y, seed=seed, steps=steps,
                                        sampler=sampler, guidance=guidance, batch_size=batch_size,
                                        progress=progress)

    @torch.no_grad()
    def generate_from_noise(self, noise: torch.Tensor, y: Optional[torch.Tensor] = None, seed: int = 0,
                            steps: int = 25, sampler: str = "dpm++", guidance: float = 1.0,
                            batch_size: int = 64,
                            progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """Run the model on given starting noise (``draw_noise``) and class indices (``label_tensor``).

        The server concatenates the noise of several requests, each drawn with its own seed, into
        one forward pass. ``seed`` only seeds the ddpm sampler's per-step noise (chunk ``i`` uses
        ``seed + i``); ddim, dpm++ and GANs are deterministic given the noise.
        """
        m = self.model
        out = []
        for i in range(0, len(noise), batch_size):
            z = noise[i:i + batch_size].to(self.device)
            yy = y[i:i + batch_size].to(self.device) if y is not None else None
            if self.kind == "gan":
                x = (self.compiled or m.generator)(z, yy)
            else:
                step_gen = torch.Generator(self.device).manual_seed(seed + i)
                x = m.sample(z, steps=steps, sampler=sampler, labels=yy, guidance=guidance,
                             generator=step_gen, progress=progress, denoiser=self.compiled)
            out.append(x.float().cpu())
        return torch.cat(out)

    def __call__(self, n: int = 16, seed: int = 0, **kwargs) -> list[Image.Image]:
        return to_pil_list(to_uint8(self.generate(n=n, seed=seed, **kwargs)))
