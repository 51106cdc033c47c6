"""What the server serves for text models: text-to-image runs (diffusion and GAN) and captioners.

Concurrent text-to-image requests are merged into one forward pass when their sampler, steps and
guidance agree: the model conditions each row on its own tokens, so every request keeps its own
prompt, negative prompt and noise (drawn from its own seed). A request alone, or a job's chunk, makes
exactly the images of ``pipe.generate`` with the same arguments.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..data.transforms import to_uint8
from ..errors import GenforgeError
from ..models.diffusion import SAMPLERS
from ..pipelines.caption import CaptionPipeline
from ..pipelines.text2image import TextToImagePipeline
from ..pipelines.textgan import TextGANPipeline
from ..tasks.caption import caption_batch
from .batching import Cancelled
from .models import CHUNK_COST, JOB_CHUNK, ServedModel, encode_images, serves

# samplers that draw fresh noise at every step over the whole batch: merging or splitting their
# requests would change the images
_STOCHASTIC = ("ddpm", "dpm++sde")


@dataclass
class TextItem:
    n: int
    seed: int
    prompt: str
    negative: Optional[str]
    steps: Optional[int]
    sampler: str
    guidance: float  # the scale actually applied: 1 where guidance would change nothing
    layout: str = "off"  # how a multi-object caption's objects are placed (pipelines/layout.py)
    warnings: list[str] = field(default_factory=list)
    read_as: Optional[str] = None  # the text the model reads, when it differs from the prompt
    noise: Optional[torch.Tensor] = None  # given by jobs and split requests, drawn up front
    step_seed: Optional[int] = None
    first_row: int = 0  # a split request's chunk: its first image's index (layout plans are seeded per image)
    progress: Optional[Callable[[int, int], None]] = None
    cancel: Optional[threading.Event] = None


@serves(TextToImagePipeline, TextGANPipeline)
class TextImageGenerator(ServedModel):
    kind = "text-to-image"
    pipe: TextToImagePipeline

    @property
    def gan(self) -> bool:
        return isinstance(self.pipe, TextGANPipeline)

    @property
    def size(self) -> str:
        s = int(self.pipe.cfg.model.params.get("image_size", 32))
        return f"{s}x{s}"

    @property
    def default_steps(self) -> Optional[int]:
        return self.pipe.default_steps

    def details(self) -> dict:
        return {"task": self.pipe.cfg.task, "architecture": self.pipe.cfg.model.name, "size": self.size,
                "context": self.pipe.context, "samplers": [] if self.gan else list(SAMPLERS),
                "default_steps": self.pipe.default_steps, "default_guidance": self.pipe.default_guidance,
                "default_layout": self.pipe.default_layout}

    def prepare(self, n: int, seed: int, prompt: str, negative: Optional[str] = None,
                steps: Optional[int] = None, sampler: str = "dpm++",
                guidance: Optional[float] = None, layout: Optional[str] = None) -> TextItem:
        """Check a request before it is queued (one bad request cannot fail a merged batch) and
        collect what the response says about its prompt."""
        notes: list[str] = []
        negative = negative if negative and negative.strip() else None
        if self.gan:
            if negative:
                raise GenforgeError(f"{self.id} is a GAN: it has no guidance to steer away from a negative "
                                    "prompt; leave negative_prompt out")
            ignored = [k for k, given in (("steps", steps is not None), ("guidance", guidance not in (None, 1.0)),
                                          ("sampler", sampler != "dpm++")) if given]
            if ignored:
                notes.append(f"{' and '.join(ignored)} ignored: a GAN makes its images in one pass")
            self.pipe.check_sampling(None, None, guidance, seed)
            if layout == "grid":
                raise GenforgeError(f"{self.id} is a GAN: it draws the whole image in one pass, with no regions "
                                    "to lay out; leave layout out")
            steps, guidance, layout = None, 1.0, "off"
        else:
            layout = self.pipe.check_layout(layout)
            steps = self.pipe.default_steps if steps is None else steps
            guidance = self.pipe.default_guidance if guidance is None else guidance
            self.pipe.check_sampling(steps, sampler, guidance, seed)
        read = [prompt] if self.gan else self.pipe.read_texts(prompt, layout)  # planned: + each object's caption
        notes += self.pipe.check_prompt(read + ([negative] if negative else []))
        if not self.gan and not (prompt.strip() or negative):
            guidance = 1.0  # as the pipeline: guiding from the empty text towards itself changes nothing
        return TextItem(n, seed, prompt, negative, steps, sampler, float(guidance), layout,
                        warnings=list(dict.fromkeys(notes)), read_as=self.read_as(prompt))

    def read_as(self, prompt: str) -> Optional[str]:
        """The prompt as the model reads it when its context cut it, else None."""
        tok = self.pipe.tokenizer
        if tok is None or len(tok.encode(prompt)) + 2 <= self.pipe.context:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the cut is reported in the response's warnings
            return tok.decode(tok.batch([prompt], self.pipe.context)[0])

    def cost(self, n: int, steps: Optional[int]) -> int:
        return n * (1 if self.gan or steps is None else steps)

    def batch_key(self, item: TextItem):
        if item.noise is not None or item.n >= self.settings.max_batch_size:
            return None
        if self.gan:
            return ("gan",)
        if item.sampler in _STOCHASTIC:
            return None
        return (item.sampler, item.steps, item.guidance, item.layout)

    def chunk_size(self, item: TextItem) -> int:
        if item.noise is not None or (not self.gan and item.sampler in _STOCHASTIC):
            return item.n
        per = self.settings.max_batch_size if self.gan else CHUNK_COST // item.steps
        return max(1, min(item.n, self.settings.max_batch_size, per))

    def _sample(self, noise: torch.Tensor, prompts: list[str], negatives: list[str], item: TextItem,
                seed: int, progress: Callable[[int, int], None], rows: list[int]) -> torch.Tensor:
        """The pipeline's own sampling, with noise, texts and (for layout plans) seeds given per row."""
        pipe, dev = self.pipe, self.pipe.device
        if self.gan:
            return pipe.model.generate(noise.to(dev), pipe.tokens(prompts).to(dev)).float().cpu()
        gen = torch.Generator(dev).manual_seed(seed)
        return pipe.sample_rows(noise, prompts, negatives, item.guidance, item.steps, item.sampler, gen,
                                item.layout, rows, progress).float().cpu()

    @torch.no_grad()
    def run_batch(self, items: Sequence[TextItem]) -> list[torch.Tensor]:
        head = items[0]
        noise = torch.cat([it.noise if it.noise is not None else self.pipe.draw_noise(it.n, it.seed)
                           for it in items])
        prompts = [p for it in items for p in [it.prompt] * it.n]
        negatives = [p for it in items for p in [it.negative or ""] * it.n]
        rows = [it.seed + it.first_row + j for it in items for j in range(it.n)]
        step_seed = head.seed if head.step_seed is None else head.step_seed
        report = head.progress if len(items) == 1 else None

        def step(i: int, total: int) -> None:
            if all(it.cancel is not None and it.cancel.is_set() for it in items):
                raise Cancelled(f"{self.id}: every request of this batch was cancelled at step {i}/{total}")
            if report is not None:
                report(i, total)

        with self.forward_lock:
            x = self._sample(noise, prompts, negatives, head, step_seed, step, rows)
        return list(to_uint8(x).split([it.n for it in items]))

    async def generate(self, item: TextItem, force: bool = False, output_format: str = "png") -> list[bytes]:
        """Queue ``item``, split into chunks with its noise drawn up front (the same images as one
        piece), and encode the pixels on the encoding pool. A cancelled caller stops the model at its
        next step and drops its other chunks."""
        cancel = item.cancel = item.cancel or threading.Event()
        k = self.chunk_size(item)
        try:
            if k >= item.n:
                x = await self.batcher.submit(item, item.n, self.batch_key(item), force=force)
            else:
                noise, parts = self.pipe.draw_noise(item.n, item.seed), []
                for i in range(0, item.n, k):
                    m = min(k, item.n - i)
                    chunk = dataclasses.replace(item, n=m, noise=noise[i:i + m], step_seed=item.seed,
                                                first_row=i, progress=None)
                    parts.append(await self.batcher.submit(chunk, m, None, force=force))
                x = torch.cat(parts)
        except asyncio.CancelledError:
            cancel.set()
            raise
        start = time.perf_counter()
        files = await asyncio.get_running_loop().run_in_executor(self.encoder, encode_images, x, output_format)
        if self.metrics is not None:
            self.metrics.encode.labels(self.id).observe(time.perf_counter() - start)
        return files

    async def generate_job(self, item: TextItem, progress: Callable[[float], None]) -> list[bytes]:
        """A job in chunks of the pipeline's batch size through the shared queue; the images equal
        ``pipe.generate(n, seed, prompt=...)``'s, whose chunk i seeds its sampler with seed + i."""
        noise, out = self.pipe.draw_noise(item.n, item.seed), []
        for i in range(0, item.n, JOB_CHUNK):
            k = min(JOB_CHUNK, item.n - i)

            def step_progress(step: int, total: int, i: int = i, k: int = k) -> None:
                progress((i + k * step / total) / item.n)

            chunk = dataclasses.replace(item, n=k, noise=noise[i:i + k], step_seed=item.seed + i,
                                        progress=step_progress, cancel=None)
            out += await self.generate(chunk, force=True)
            progress((i + k) / item.n)
        return out


@serves(CaptionPipeline)
class ImageCaptioner(ServedModel):
    kind = "image-captioning"
    pipe: CaptionPipeline

    @property
    def image_size(self) -> int:
        return self.pipe.image_size

    def details(self) -> dict:
        return {"task": "caption", "architecture": self.pipe.cfg.model.name,
                "size": f"{self.image_size}x{self.image_size}", "channels": self.pipe.channels,
                "max_length": int(self.pipe.model.max_length)}

    async def caption(self, image: Image.Image, beam: int = 1) -> str:
        # converted and resized before queueing, off the event loop, so merged batches share one shape
        x = await run_in_threadpool(self.pipe.preprocess, [image])
        return await self.batcher.submit((x, beam), 1, ("caption", beam))

    @torch.no_grad()
    def run_batch(self, payloads: Sequence[tuple[torch.Tensor, int]]) -> list[str]:
        x = torch.cat([p[0] for p in payloads])
        with self.forward_lock:
            return caption_batch(self.pipe.model, self.pipe.tokenizer, x, beam=payloads[0][1])
