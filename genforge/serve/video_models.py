"""What the server serves for text-to-video runs: a clip per request, rendered as a background job
(OpenAI's video API is asynchronous) and stored in the jobs database as MP4 bytes.

A clip costs frames x steps UNet passes over all its frames at once, far more than an image, so
requests are never merged: each is one batch of the model's queue (shared with nothing else), and
the clip equals ``pipe.generate(n=1, seed=seed, frames=...)``'s.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from PIL import Image

from ..data.transforms import to_uint8
from ..errors import GenforgeError
from ..models.diffusion import SAMPLERS
from ..pipelines.video import MAX_FRAMES, VideoPipeline
from .models import ServedModel, serves


@dataclass
class VideoItem:
    seed: int
    prompt: str
    negative: Optional[str]
    frames: int
    steps: int
    sampler: str
    guidance: float
    warnings: list[str] = field(default_factory=list)
    first: Optional[torch.Tensor] = None  # (1, C, H, W) in [-1, 1]: the clip's given first frame
    layout: str = "off"  # where the objects go: planned paths or the model's (pipelines/video_layout.py)
    progress: Optional[Callable[[int, int], None]] = None


def mp4_bytes(clip: torch.Tensor, fps: int) -> bytes:
    """A uint8 clip (T, C, H, W) as MP4 bytes (written through video_io to a temporary file)."""
    from ..video_io import write_video

    with tempfile.TemporaryDirectory(prefix="genforge-video-") as d:
        path = write_video(os.path.join(d, "clip.mp4"), clip, fps)
        return path.read_bytes()


@serves(VideoPipeline)
class VideoGenerator(ServedModel):
    kind = "video-generation"
    pipe: VideoPipeline

    @property
    def size(self) -> str:
        s = int(self.pipe.model.image_size)
        return f"{s}x{s}"

    @property
    def fps(self) -> int:
        return self.pipe.fps

    @property
    def max_seconds(self) -> int:
        return max(1, MAX_FRAMES // self.fps)

    @property
    def default_seconds(self) -> int:
        return max(1, min(self.max_seconds, round(self.pipe.default_frames / self.fps)))

    def details(self) -> dict:
        return {"task": "video", "architecture": self.pipe.cfg.model.name, "size": self.size,
                "fps": self.fps, "frames": self.pipe.default_frames, "seconds": list(range(1, self.max_seconds + 1)),
                "default_seconds": self.default_seconds, "samplers": list(SAMPLERS),
                "default_steps": self.pipe.default_steps, "default_guidance": self.pipe.default_guidance,
                "default_layout": self.pipe.default_layout}

    def frames_for(self, seconds: int) -> int:
        if not 1 <= seconds <= self.max_seconds:
            raise GenforgeError(f"seconds must be from 1 to {self.max_seconds} for {self.id!r} "
                                f"({self.fps} frames per second, at most {MAX_FRAMES} frames), got {seconds}")
        return seconds * self.fps

    def prepare(self, prompt: str, seconds: int, seed: int, negative: Optional[str] = None,
                steps: Optional[int] = None, sampler: str = "dpm++", guidance: Optional[float] = None,
                layout: Optional[str] = None, first: bool = False) -> VideoItem:
        """Check a request before it is queued; the notes about its prompt go in the job's result.
        ``first``: the request gives a first frame, which fixes where the objects start (layout off)."""
        frames = self.frames_for(seconds)
        negative = negative if negative and negative.strip() else None
        steps = self.pipe.default_steps if steps is None else steps
        guidance = self.pipe.default_guidance if guidance is None else guidance
        self.pipe.check_sampling(steps, sampler, guidance, seed)
        layout = "off" if first else self.pipe.check_layout(layout)
        notes = self.pipe.check_prompt(self.pipe.read_texts(prompt, layout) + ([negative] if negative else []))
        return VideoItem(seed, prompt, negative, frames, steps, sampler, float(guidance),
                         warnings=list(dict.fromkeys(notes)), layout=layout)

    def reference(self, image: Image.Image) -> Image.Image:
        """An uploaded first frame at the model's size and channels (what the job stores)."""
        m = self.pipe.model
        return image.convert("RGB" if m.channels == 3 else "L").resize((m.image_size, m.image_size),
                                                                         Image.BICUBIC)

    def first_frame(self, image: Image.Image) -> torch.Tensor:
        return self.pipe._first_frame(self.reference(image), 1)

    def cost(self, item: VideoItem) -> int:
        return item.frames * item.steps

    @torch.no_grad()
    def run_batch(self, items: Sequence[VideoItem]) -> list[torch.Tensor]:
        """``pipe.generate(n=1, ...)``'s sampling without its prompt warnings (they were collected
        by ``prepare``); one item, as requests are never merged."""
        pipe, dev, out = self.pipe, self.pipe.device, []
        for it in items:
            guided = it.guidance != 1.0 and (bool(it.prompt.strip()) or bool(it.negative))
            gen = torch.Generator(dev).manual_seed(it.seed)
            with self.forward_lock:
                x = pipe.sample_clips(pipe.draw_noise(1, it.seed, it.frames), [it.prompt], it.negative or "",
                                      it.guidance if guided else 1.0, it.steps, it.sampler, gen, it.layout,
                                      [it.seed], it.progress, it.first)
            out.append(to_uint8(x.float().cpu())[0])
        return out

    async def render(self, item: VideoItem, progress: Callable[[float], None]) -> bytes:
        """The clip as MP4 bytes; ``progress`` gets 0..1 (encoding is the last 2 %)."""
        item.progress = lambda i, total: progress(0.98 * i / total)
        clip = await self.batcher.submit(item, 1, None, force=True)
        start = time.perf_counter()
        data = await asyncio.get_running_loop().run_in_executor(self.encoder, mp4_bytes, clip, self.fps)
        if self.metrics is not None:
            self.metrics.encode.labels(self.id).observe(time.perf_counter() - start)
        return data
