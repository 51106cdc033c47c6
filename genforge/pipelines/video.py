"""Text-to-video generation from a ``video`` run directory.

``pipe(prompt="a red circle moving left", n=2)`` -> uint8 clips (n, T, 3, H, W); ``to_frames``
turns one into a list of PIL images, ``genforge.video_io.write_video`` into an .mp4/.gif file.
Prompt handling (warnings for cut prompts and unknown words, negative prompts, guidance) is
text2image's; ``first_frame`` makes it image-to-video.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Callable, Optional, Sequence

import torch
from PIL import Image

from ..data.transforms import to_float, to_pil_list, to_uint8
from ..errors import GenforgeError
from .text2image import TextToImagePipeline

MAX_FRAMES = 64
MAX_STEPS = 1000
MAX_CLIPS = 64


class VideoPipeline(TextToImagePipeline):
    """Clips from prompts; same prompt, seed and frame count, same clips."""

    def __init__(self, cfg, model, run_dir, device):
        super().__init__(cfg, model, run_dir, device)
        self.default_frames = int(model.frames)
        self.fps = int(getattr(cfg.data, "fps", 8) or 8)

    @property
    def kind(self) -> str:
        return "video"

    def compile(self, buckets=None) -> "VideoPipeline":
        warnings.warn(f"{self.run_dir.name}: compiled sampling is not available for video models; sampling eagerly")
        return self

    def check_frames(self, frames: Optional[int]) -> int:
        frames = self.default_frames if frames is None else frames
        if isinstance(frames, bool) or not isinstance(frames, numbers.Integral) or not 1 <= frames <= MAX_FRAMES:
            raise GenforgeError(f"frames must be a whole number from 1 to {MAX_FRAMES}, got {frames!r}")
        return int(frames)

    def check_sampling(self, steps, sampler, guidance=1.0, seed=0) -> None:
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= MAX_STEPS:
            raise GenforgeError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {steps!r}")
        super().check_sampling(steps, sampler, guidance, seed)

    def _first_frame(self, image, n: int) -> Optional[torch.Tensor]:
        """``image`` (PIL, or uint8 (C, H, W)) as (n, C, H, W) in [-1, 1] at the model's size."""
        if image is None:
            return None
        m = self.model
        if isinstance(image, Image.Image):
            image = image.convert("RGB" if m.channels == 3 else "L").resize((m.image_size, m.image_size),
                                                                              Image.BICUBIC)
            import numpy as np

            arr = torch.from_numpy(np.asarray(image).copy())
            image = arr.permute(2, 0, 1) if arr.dim() == 3 else arr[None]
        if not torch.is_tensor(image) or image.dtype != torch.uint8 or \
                tuple(image.shape) != (m.channels, m.image_size, m.image_size):
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise GenforgeError(f"first_frame must be a PIL image or a uint8 tensor of shape "
                                f"({m.channels}, {m.image_size}, {m.image_size}), got {shape}")
        return to_float(image)[None].expand(n, -1, -1, -1)

    def draw_noise(self, n: int, seed: int, frames: Optional[int] = None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        m = self.model
        return m.noise((n, frames or self.default_frames, m.channels, m.image_size, m.image_size), generator=gen)

    @torch.no_grad()
    def generate(self, n: int = 1, seed: int = 0, steps: Optional[int] = None, sampler: str = "dpm++",
                 prompt: str | Sequence[str] = "", negative_prompt: Optional[str] = None,
                 guidance: Optional[float] = None, batch_size: int = 8, frames: Optional[int] = None,
                 first_frame=None, progress: Optional[Callable[[int, int], None]] = None,
                 labels=None) -> torch.Tensor:
        """Float clips in [-1, 1], (n, T, C, H, W), on the CPU. ``progress(i, total)`` counts steps
        over all batches."""
        if labels:
            raise GenforgeError(f"{self.run_dir.name} takes a prompt, not labels")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_CLIPS:
            raise GenforgeError(f"n must be a whole number from 1 to {MAX_CLIPS}, got {n!r}")
        frames = self.check_frames(frames)
        steps = self.default_steps if steps is None else steps
        guidance = self.default_guidance if guidance is None else guidance
        self.check_sampling(steps, sampler, guidance, seed)
        if batch_size < 1:
            raise GenforgeError(f"batch_size must be at least 1, got {batch_size}")
        prompts = self.prompt_list(prompt, negative_prompt, n, "clips")
        first = self._first_frame(first_frame, n)
        self.warn_prompts(prompts, negative_prompt, "clips")
        noise = self.draw_noise(n, seed, frames)
        guided = guidance != 1.0 and (any(p.strip() for p in prompts) or bool(negative_prompt))
        chunks = range(0, n, batch_size)
        out = []
        for k, i in enumerate(chunks):
            chunk = prompts[i:i + batch_size]
            cond = tuple(t.to(self.device) for t in self._tokens(chunk))
            uncond = tuple(t.to(self.device) for t in self._tokens([negative_prompt or ""] * len(chunk)))
            gen = torch.Generator(self.device).manual_seed(seed + i)
            # the model counts its own total (an autoregressive one: steps per frame)
            report = None if progress is None else (
                lambda j, per, k=k: progress(k * per + j, per * len(chunks)))
            x = self.model.sample(noise[i:i + batch_size].to(self.device), cond, uncond,
                                  guidance=guidance if guided else 1.0, steps=steps, sampler=sampler,
                                  generator=gen, progress=report,
                                  first_frame=None if first is None else first[i:i + batch_size].to(self.device))
            out.append(x.float().cpu())
        return torch.cat(out)

    def __call__(self, prompt: str | Sequence[str] = "", n: int = 2, seed: int = 0, **kwargs) -> torch.Tensor:
        """uint8 clips (n, T, C, H, W)."""
        return to_uint8(self.generate(n=n, seed=seed, prompt=prompt, **kwargs))


def to_frames(clip: torch.Tensor) -> list[Image.Image]:
    """One clip (T, C, H, W), uint8 or float in [-1, 1], as a list of PIL frames."""
    if clip.dim() != 4:
        raise GenforgeError(f"a clip is (T, C, H, W); got shape {tuple(clip.shape)} (index one clip of a batch)")
    return to_pil_list(clip)
