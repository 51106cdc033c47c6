"""What the server serves: each loaded run directory wrapped by the ServedModel of its pipeline kind.

A new kind (text-to-image, captioning, speech) is a subclass registered for its pipeline class with
``@serves(ThatPipeline)``, giving ``kind``, ``run_batch`` and the async method its endpoint calls;
``Models.get(model_id, kind)`` then finds it. Model ids are run directory names and are only ever
looked up in the loaded dict, so a request can name nothing on disk.
"""
from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..data.transforms import to_pil_list, to_uint8
from ..errors import GenforgeError
from ..models.diffusion import SAMPLERS
from ..pipelines import Pipeline, load_pipeline, resolve_run_dir, shipped_models
from ..pipelines.classify import ClassifierPipeline
from ..pipelines.image import ImagePipeline
from .batching import Batcher, Cancelled
from .settings import Settings

KINDS: dict[type, type["ServedModel"]] = {}
JOB_CHUNK = 64  # ImagePipeline.generate's batch size: a job's images equal generate(n, seed)'s
# images x steps of one forward pass of a split request: a request queued behind it waits about this long
CHUNK_COST = 400


def serves(*pipeline_classes: type) -> Callable[[type["ServedModel"]], type["ServedModel"]]:
    def deco(cls: type[ServedModel]) -> type[ServedModel]:
        for p in pipeline_classes:
            KINDS[p] = cls
        return cls
    return deco


class ModelNotFound(Exception):
    pass


class NoModelChosen(Exception):
    """A request named no model and the server has none of that kind to fall back on (400)."""


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


OUTPUT_FORMATS = ("png", "webp", "jpeg")


def image_bytes(image: Image.Image, fmt: str = "png") -> bytes:
    """One image as a PNG (lossless), or a WebP / JPEG at quality 90, as OpenAI's output_format asks."""
    if fmt == "png":
        return png_bytes(image)
    buf = io.BytesIO()
    if fmt == "webp":
        image.convert("RGB").save(buf, format="WEBP", quality=90)
    elif fmt == "jpeg":
        image.save(buf, format="JPEG", quality=90)
    else:
        raise GenforgeError(f"unknown output format {fmt!r}; choose one of: {', '.join(OUTPUT_FORMATS)}")
    return buf.getvalue()


def encode_images(x: torch.Tensor, fmt: str = "png") -> list[bytes]:
    """uint8 images (n, C, H, W) -> encoded files; called on the encoding pool, never in a forward."""
    return [image_bytes(im, fmt) for im in to_pil_list(x)]


class ServedModel:
    kind: ClassVar[str] = "?"

    def __init__(self, model_id: str, pipe: Pipeline, settings: Settings, executor: Optional[Executor],
                 metrics: Any = None, encoder: Optional[Executor] = None):
        self.id, self.pipe, self.settings = model_id, pipe, settings
        self.encoder, self.metrics = encoder, metrics  # encoder None: the event loop's default pool
        # a forward and a compile warm-up must not trace the same graph at once on two threads
        self.forward_lock = threading.Lock()
        self.batcher = Batcher(model_id, self.run_batch, max_batch_size=settings.max_batch_size,
                               max_wait_ms=settings.max_wait_ms, wait_fraction=settings.wait_fraction,
                               queue_size=settings.queue_size,
                               executor=executor, metrics=metrics)

    def info(self) -> dict:
        created = int((self.pipe.run_dir / "config.json").stat().st_mtime)
        return {"id": self.id, "object": "model", "created": created, "owned_by": "genforge",
                "kind": self.kind, **self.details()}

    def details(self) -> dict:
        return {}

    def run_batch(self, payloads: Sequence[Any]) -> list[Any]:
        raise NotImplementedError


@dataclass
class GenItem:
    n: int
    seed: int
    y: Optional[torch.Tensor]
    steps: int
    sampler: str
    guidance: float
    noise: Optional[torch.Tensor] = None  # given by jobs, which draw all their noise up front
    step_seed: Optional[int] = None
    progress: Optional[Callable[[int, int], None]] = None
    cancel: Optional[threading.Event] = None  # set when nobody waits for the images any more


@serves(ImagePipeline)
class ImageGenerator(ServedModel):
    kind = "image-generation"
    pipe: ImagePipeline

    @property
    def image_size(self) -> int:
        return int(self.pipe.cfg.model.params.get("image_size", 32))

    @property
    def channels(self) -> int:
        return int(self.pipe.cfg.model.params.get("channels", 1))

    def details(self) -> dict:
        return {"task": self.pipe.kind, "architecture": self.pipe.cfg.model.name,
                "size": f"{self.image_size}x{self.image_size}", "channels": self.channels,
                "conditional": self.pipe.conditional,
                "classes": self.pipe.class_names if self.pipe.conditional else [],
                "samplers": list(SAMPLERS) if self.pipe.kind == "diffusion" else []}

    def label_for_prompt(self, prompt: Optional[str]) -> Optional[list[int]]:
        """A class-conditional model takes a class name (or index) as its prompt; others ignore it."""
        if not prompt or not prompt.strip() or not self.pipe.conditional:
            return None
        return [self.pipe.class_index(prompt, what="prompt")]

    def prepare(self, n: int, seed: int, steps: int = 25, sampler: str = "dpm++",
                guidance: Optional[float] = 1.0, labels: Optional[Sequence[int | str]] = None) -> GenItem:
        """Check a request before it is queued, so one bad request cannot fail a merged batch.
        No guidance given (None) means none: a scale of 1."""
        guidance = 1.0 if guidance is None else guidance
        self.pipe.check_sampling(steps, sampler, guidance, seed)
        return GenItem(n, seed, self.pipe.label_tensor(n, labels), steps, sampler, guidance)

    def batch_key(self, item: GenItem):
        if item.noise is not None or item.n >= self.settings.max_batch_size:
            return None
        if self.pipe.kind == "gan":
            return ("gan",)
        if item.sampler == "ddpm":
            return None  # ddpm draws fresh noise every step over the whole batch: never merge
        return (item.sampler, item.steps, float(item.guidance))

    def cost(self, n: int, steps: int) -> int:
        """Images x denoising steps: what a request costs the model (a GAN image is one step)."""
        return n * (steps if self.pipe.kind == "diffusion" else 1)

    def chunk_size(self, item: GenItem) -> int:
        """Images per forward pass when a request is split, so others queue behind one chunk, not all."""
        # Given noise marks a job's chunk, already split. ddpm and dpm++sde draw per-step noise over the
        # whole batch, so splitting their requests would change the images.
        if item.noise is not None or (self.pipe.kind == "diffusion" and item.sampler in ("ddpm", "dpm++sde")):
            return item.n
        per = CHUNK_COST // item.steps if self.pipe.kind == "diffusion" else self.settings.max_batch_size
        return max(1, min(item.n, self.settings.max_batch_size, per))

    def warm_up(self) -> dict[int, float]:
        """Compile each batch size a merged forward can have (``--compile``); seconds per bucket.
        Classifier-free guidance runs the conditional and null rows in one forward, doubling it."""
        guided = self.pipe.kind == "diffusion" and self.pipe.conditional
        with self.forward_lock:
            return self.pipe.warm_up(self.settings.max_batch_size * (2 if guided else 1))

    async def generate(self, item: GenItem, force: bool = False, output_format: str = "png") -> list[bytes]:
        """Queue ``item``, split into chunks with its noise drawn up front (same images as one piece).
        Cancelling the caller stops the model at its next denoising step and drops the other chunks.
        The model's pass returns pixels; they are encoded here on the encoding pool, so the next
        batch's forward does not wait for this one's compression."""
        cancel = item.cancel = item.cancel or threading.Event()
        k = self.chunk_size(item)
        try:
            if k >= item.n:
                x = await self.batcher.submit(item, item.n, self.batch_key(item), force=force)
            else:
                noise, parts = self.pipe.draw_noise(item.n, item.seed), []
                for i in range(0, item.n, k):
                    m = min(k, item.n - i)
                    chunk = GenItem(m, item.seed, item.y[i:i + m] if item.y is not None else None,
                                    item.steps, item.sampler, item.guidance, noise=noise[i:i + m],
                                    step_seed=item.seed, cancel=cancel)
                    parts.append(await self.batcher.submit(chunk, m, None, force=force))
                x = torch.cat(parts)
        except asyncio.CancelledError:
            cancel.set()  # read by run_batch's step callback in the worker thread
            raise
        start = time.perf_counter()
        files = await asyncio.get_running_loop().run_in_executor(self.encoder, encode_images, x, output_format)
        if self.metrics is not None:
            self.metrics.encode.labels(self.id).observe(time.perf_counter() - start)
        return files

    def run_batch(self, items: Sequence[GenItem]) -> list[torch.Tensor]:
        """One forward for the merged ``items``: uint8 images (n, C, H, W) per item, not yet encoded."""
        head = items[0]
        if len(items) == 1:
            noise = head.noise if head.noise is not None else self.pipe.draw_noise(head.n, head.seed)
            step_seed = head.seed if head.step_seed is None else head.step_seed
        else:  # each request's noise from its own seed; deterministic samplers only (see batch_key).
            # GAN images equal per-request ones exactly; diffusion ones can differ by one grey level in
            # about one pixel in 4000, because batched CPU kernels sum in another order.
            noise = torch.cat([self.pipe.draw_noise(it.n, it.seed) for it in items])
            step_seed = head.seed
        ys = [it.y for it in items]
        y = torch.cat(ys) if ys[0] is not None else None
        report = head.progress if len(items) == 1 else None

        def step(i: int, total: int) -> None:
            if all(it.cancel is not None and it.cancel.is_set() for it in items):
                raise Cancelled(f"{self.id}: every request of this batch was cancelled at step {i}/{total}")
            if report is not None:
                report(i, total)

        with self.forward_lock:
            x = self.pipe.generate_from_noise(noise, y, seed=step_seed, steps=head.steps, sampler=head.sampler,
                                              guidance=head.guidance, batch_size=max(len(noise), 1),
                                              progress=step)
        return list(to_uint8(x).split([it.n for it in items]))

    async def generate_job(self, item: GenItem, progress: Callable[[float], None]) -> list[bytes]:
        """A long request in chunks through the same queue (fair to interactive requests), with the
        noise drawn once up front so the images equal ``pipe.generate(n, seed, ...)``."""
        noise = self.pipe.draw_noise(item.n, item.seed)
        out: list[bytes] = []
        for i in range(0, item.n, JOB_CHUNK):
            k = min(JOB_CHUNK, item.n - i)

            def step_progress(step: int, total: int, i: int = i, k: int = k) -> None:
                progress((i + k * step / total) / item.n)

            chunk = GenItem(k, item.seed, item.y[i:i + k] if item.y is not None else None, item.steps,
                            item.sampler, item.guidance, noise=noise[i:i + k], step_seed=item.seed + i,
                            progress=step_progress)
            out += await self.generate(chunk, force=True)
            progress((i + k) / item.n)
        return out


@serves(ClassifierPipeline)
class ImageClassifier(ServedModel):
    kind = "image-classification"
    pipe: ClassifierPipeline

    def details(self) -> dict:
        return {"task": "classify", "architecture": self.pipe.cfg.model.name,
                "size": f"{self.pipe.image_size}x{self.pipe.image_size}", "classes": self.names}

    @property
    def names(self) -> list[str]:
        k = int(self.pipe.cfg.model.params.get("num_classes", 10))
        return self.pipe.class_names or [str(i) for i in range(k)]

    async def classify(self, image: Image.Image, top_k: int = 3) -> list[dict]:
        # resized before queueing, off the event loop, so merged batches share one shape
        x = await run_in_threadpool(self.pipe.preprocess, [image])
        probs = await self.batcher.submit(x, 1, ("classify",))
        vals, idx = probs.topk(min(top_k, len(self.names)))
        return [{"label": self.names[i], "index": int(i), "score": round(float(v), 6)}
                for v, i in zip(vals, idx)]

    def run_batch(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        probs = self.pipe.predict_uint8(torch.cat(list(xs)))
        return list(probs)


class Models:
    def __init__(self) -> None:
        self.by_id: dict[str, ServedModel] = {}
        self.defaults: dict[str, str] = {}  # kind -> model id used when a request names none

    def add(self, served: ServedModel) -> None:
        if served.id in self.by_id:
            raise GenforgeError(f"two models are named {served.id!r}: model ids are run directory names, "
                                "so serve run directories with different names")
        self.by_id[served.id] = served

    def set_default(self, model_id: str) -> None:
        m = self.by_id.get(model_id)
        if m is None:
            raise GenforgeError(f"--default-model {model_id!r} is not one of the served models: "
                                f"{', '.join(self.by_id)}")
        self.defaults[m.kind] = m.id

    def default(self, kind: str) -> Optional[ServedModel]:
        """--default-model for its kind; else the first diffusion model served (they sample best),
        else the first model of the kind, in the order they were given."""
        if kind in self.defaults:
            return self.by_id[self.defaults[kind]]
        of_kind = [m for m in self.by_id.values() if m.kind == kind]
        best = [m for m in of_kind if getattr(m.pipe, "kind", None) == "diffusion"] or of_kind
        return best[0] if best else None

    def get(self, model_id: Optional[str], kind: str) -> ServedModel:
        of_kind = [m for m in self.by_id.values() if m.kind == kind]
        if model_id is None:  # OpenAI's API makes model optional: the server's default answers
            chosen = self.default(kind)
            if chosen is None:
                raise NoModelChosen(f"this server has no {kind} model; loaded: {', '.join(self.by_id)}")
            return chosen
        names = ", ".join(m.id for m in of_kind) or "none loaded"
        m = self.by_id.get(model_id)
        if m is None or m.kind != kind:
            shown = model_id if len(model_id) <= 80 else model_id[:77] + "..."
            raise ModelNotFound(f"no such model {shown!r} for {kind}; loaded: {names}")
        return m

    def __iter__(self):
        return iter(self.by_id.values())


def load_models(settings: Settings, executor: Optional[Executor], metrics: Any = None,
                encoder: Optional[Executor] = None) -> Models:
    sources = settings.models or shipped_models()
    if not sources:
        raise GenforgeError("nothing to serve: no shipped models are installed; pass run directories "
                            "(genforge serve runs/NAME ...)")
    models = Models()
    for src in sources:
        run_dir = resolve_run_dir(src)
        pipe = load_pipeline(run_dir, device=settings.device, compile=settings.compile)
        cls = KINDS.get(type(pipe))
        if cls is None and not settings.models:
            continue  # serving "every shipped model": those without an endpoint yet are left out, not fatal
        if cls is None:
            raise GenforgeError(f"{run_dir}: genforge serve has no endpoint for {pipe.cfg.task!r} runs yet")
        models.add(cls(run_dir.name, pipe, settings, executor, metrics, encoder))
    if settings.default_model is not None:
        models.set_default(settings.default_model)
    return models
