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
from ..models.video import keep_to
from .text2image import TextToImagePipeline
from .video_layout import VIDEO_LAYOUTS, composite, plan_layers

MAX_FRAMES = 64
MAX_STEPS = 1000
MAX_CLIPS = 64
#: path-planned layers: each frame after the first is redrawn from the one before, moved to its place,
#: over the last half of the steps (``VideoModel.sample(refine=...)``): the same verifier scores at about
#: 0.6 of the time (README, "Text to video")
PATH_REFINE = 0.5


class VideoPipeline(TextToImagePipeline):
    """Clips from prompts; same prompt, seed and frame count, same clips."""

    def __init__(self, cfg, model, run_dir, device):
        super().__init__(cfg, model, run_dir, device)
        self.default_frames = int(model.frames)
        self.fps = int(getattr(cfg.data, "fps", 8) or 8)
        # path-planned sampling (pipelines/video_layout.py) reads the shapes_video grammar
        self.default_layout = "paths" if cfg.data.name == "shapes_video" else "off"
        # with paths, a text2image run (a path or shipped name) may draw each object's first frame
        self.first_frame_model = (cfg.task_params or {}).get("first_frame_model")
        self._stills = None

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

    def check_layout(self, layout: Optional[str]) -> str:
        layout = self.default_layout if layout is None else layout
        if layout not in VIDEO_LAYOUTS:
            raise GenforgeError(f"unknown layout {layout!r} for a video model; choose one of: "
                                f"{', '.join(VIDEO_LAYOUTS)}")
        return layout

    def read_texts(self, prompt: str, layout: str = "off") -> list[str]:
        """What the model reads for ``prompt``: where paths are planned, each object's own caption."""
        layers = plan_layers(prompt, 0, self.default_frames, self.model.image_size) if layout == "paths" else None
        return [layer.prompt for layer in layers] if layers else [prompt]

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
                 labels=None, layout: Optional[str] = None) -> torch.Tensor:
        """Float clips in [-1, 1], (n, T, C, H, W), on the CPU. ``progress(i, total)`` counts steps
        over all batches. ``layout``: "paths" plans where each object of a shapes_video caption is
        in every frame and draws each from its own caption (``pipelines/video_layout.py``); "off"
        leaves it all to the model; default: the run's. A given ``first_frame`` already fixes
        where the objects start, so it is drawn with "off"."""
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
        layout = self.check_layout(layout)
        first = self._first_frame(first_frame, n)
        if first is not None:
            layout = "off"
        self.warn_prompts(prompts, negative_prompt, "clips", layout)
        noise = self.draw_noise(n, seed, frames)
        guided = guidance != 1.0 and (any(p.strip() for p in prompts) or bool(negative_prompt))
        chunks = range(0, n, batch_size)
        out = []
        for k, i in enumerate(chunks):
            chunk = prompts[i:i + batch_size]
            gen = torch.Generator(self.device).manual_seed(seed + i)
            # the model counts its own total (an autoregressive one: steps per frame)
            report = None if progress is None else (
                lambda j, per, k=k: progress(k * per + j, per * len(chunks)))
            x = self.sample_clips(noise[i:i + batch_size], chunk, negative_prompt or "",
                                  guidance if guided else 1.0, steps, sampler, gen, layout,
                                  [seed + i + j for j in range(len(chunk))], report,
                                  None if first is None else first[i:i + batch_size])
            out.append(x.float().cpu())
        return torch.cat(out)

    def sample_clips(self, noise: torch.Tensor, prompts: Sequence[str], negative: str, guidance: float, steps: int,
                     sampler: str, generator: torch.Generator, layout: str, seeds: Sequence[int],
                     progress: Optional[Callable[[int, int], None]] = None,
                     first: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One denoising run for a batch of clips, one prompt and seed per row of ``noise``. With
        ``layout="paths"``, a row whose prompt plans (``video_layout.plan_layers``, with the row's
        seed) is drawn as one clip per layer (object, or colour of a changing object), each kept
        to its planned path, then composited; its first layer starts from the row's noise, the
        others from noise drawn with the row's seed and the layer's place."""
        dev, m = self.device, self.model
        frames, size = noise.shape[1], m.image_size
        plans = [plan_layers(p, s, frames, size) if layout == "paths" else None for p, s in zip(prompts, seeds)]
        jobs = []  # (row, layer or None: the row's prompt as it is, seed of its noise)
        for r, (layers, s) in enumerate(zip(plans, seeds)):
            jobs += [(r, layer, 1_000_003 * j + s) for j, layer in enumerate(layers or [None])]
        noise_all = torch.stack([noise[r] if seed_j == seeds[r] else self.draw_noise(1, seed_j, frames)[0]
                                 for r, _, seed_j in jobs])
        drawn = torch.empty_like(noise_all)
        # an autoregressive model draws a layer shown over part of the clip (a colour of a changing
        # object) only as far as it is shown, in a batch of its own
        short = m.context_frames > 0
        span = [None if layer is None else layer.stop - layer.start for _, layer, _ in jobs]
        layered = [k for k in range(len(jobs)) if span[k] is not None]
        # every layer's first frame in one call of the first-frame model (none without one)
        firsts = self.first_frames([jobs[k][1].still for k in layered], [jobs[k][2] for k in layered], negative,
                                   torch.stack([jobs[k][1].path[0] for k in layered]).to(dev)) if layered else None
        starts = {} if firsts is None else dict(zip(layered, firsts))
        # a layer that stays put (a colour change's) is its first frame held, where a still model drew one
        held = [k for k in layered if k in starts and jobs[k][1].held]
        plain = [k for k in range(len(jobs)) if span[k] is None]
        planned = [k for k in layered if k not in held and not (short and span[k] < frames)]
        partial = [k for k in layered if k not in held and short and span[k] < frames]
        if held:
            drawn[held] = torch.stack([starts[k] for k in held]).cpu()[:, None].expand(-1, frames, -1, -1, -1) \
                .to(drawn)
        reporter = planned or partial or plain
        for part in (plain, planned, partial):
            if not part:
                continue
            texts = [prompts[jobs[k][0]] if jobs[k][1] is None else jobs[k][1].prompt for k in part]
            cond = tuple(t.to(dev) for t in self._tokens(texts))
            uncond = tuple(t.to(dev) for t in self._tokens([
                negative or (jobs[k][1].avoid if jobs[k][1] is not None else None) or "" for k in part]))
            start, path = None, None
            if part is not plain:
                path = torch.stack([jobs[k][1].path for k in part]).to(dev)
                start = torch.stack([starts[k] for k in part]) if starts else None
            elif first is not None:
                start = first[[jobs[k][0] for k in part]].to(dev)
            drawn[part] = m.sample(noise_all[part].to(dev), cond, uncond, guidance=guidance, steps=steps,
                                   sampler=sampler, generator=generator,
                                   progress=progress if part is reporter else None, first_frame=start,
                                   paths=path, upto=max(span[k] for k in part) if part is partial else None,
                                   refine=0.0 if path is None else PATH_REFINE).cpu()
        out = []
        for r in range(len(prompts)):
            mine = [k for k, job in enumerate(jobs) if job[0] == r]
            out.append(drawn[mine[0]] if jobs[mine[0]][1] is None
                       else composite(drawn[mine], [jobs[k][1] for k in mine]))
        return torch.stack(out)

    def stills(self):
        """The text2image pipeline of ``task_params.first_frame_model``, loaded once; None if unset."""
        if self.first_frame_model is None:
            return None
        if self._stills is None:
            from . import load_pipeline
            from .text2image import TextToImagePipeline

            pipe = load_pipeline(self.first_frame_model, device=str(self.device))
            m = self.model
            if not isinstance(pipe, TextToImagePipeline) or pipe.kind != "text2image" or \
                    (pipe.model.image_size, pipe.model.channels) != (m.image_size, m.channels):
                raise GenforgeError(f"task_params.first_frame_model={self.first_frame_model!r} must be a text2image "
                                    f"run drawing {m.channels}-channel {m.image_size}-px images")
            self._stills = pipe
        return self._stills

    def first_frames(self, captions: Sequence[str], seeds: Sequence[int], negative: str,
                     path: torch.Tensor) -> Optional[torch.Tensor]:
        """First frames (B, C, H, W) drawn by the first-frame model from still ``captions`` (one
        noise draw per seed) and moved to their planned places ``path`` (B, 3); None without a
        first-frame model (the video model then draws frame 0 itself)."""
        stills = self.stills()
        if stills is None:
            return None
        noise = torch.cat([stills.draw_noise(1, s) for s in seeds])
        gen = torch.Generator(self.device).manual_seed(int(seeds[0]))
        x = stills.sample_rows(noise, list(captions), [negative] * len(captions), stills.default_guidance,
                               stills.default_steps, "dpm++", gen, "off", list(seeds))
        return keep_to(x.clamp(-1, 1), path.to(x))

    def __call__(self, prompt: str | Sequence[str] = "", n: int = 2, seed: int = 0, **kwargs) -> torch.Tensor:
        """uint8 clips (n, T, C, H, W)."""
        return to_uint8(self.generate(n=n, seed=seed, prompt=prompt, **kwargs))


def to_frames(clip: torch.Tensor) -> list[Image.Image]:
    """One clip (T, C, H, W), uint8 or float in [-1, 1], as a list of PIL frames."""
    if clip.dim() != 4:
        raise GenforgeError(f"a clip is (T, C, H, W); got shape {tuple(clip.shape)} (index one clip of a batch)")
    return to_pil_list(clip)
