"""The routes of text models: text-to-image on OpenAI's ``POST /v1/images/generations`` (and as
``text2image`` jobs), and ``POST /v1/images/captions`` for captioning models.

``create_app`` calls ``add_text_routes`` and hands generation requests and jobs that name a
text-to-image model to the functions here; the request checks, upload decoding and error shapes are
app.py's, shared with the image routes.
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Optional

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..errors import GenforgeError
from .app import _ApiError, _b64, _check_cost, _note, _param, _seed, _while_connected, require
from .auth import KeyRecord
from .models import ImageGenerator, ModelNotFound, Models
from .schemas import CaptionResponse, ImageGenerationRequest, JobRequest, SamplesJobParams
from .settings import Settings
from .text_models import ImageCaptioner, TextImageGenerator

# Smaller than this on a side, an upload holds too little to describe: the shapes models read 32 px,
# and a 3x3 grid of objects needs a few pixels per cell at the very least.
MIN_CAPTION_SIDE = 8
MAX_BEAM = 16


def text_generator(models: Models, model_id: Optional[str]) -> Optional[TextImageGenerator]:
    """The text-to-image model a generation request is for, or None when an image model answers it.

    Named: that model, if it is a text-to-image one. Unnamed: --default-model when it is one of the
    two generation kinds; else a text-to-image model when one is loaded (a prompt is text), else the
    image models' default."""
    if model_id is not None:
        m = models.by_id.get(model_id)
        return m if isinstance(m, TextImageGenerator) else None
    if ImageGenerator.kind in models.defaults:
        return None
    return models.default(TextImageGenerator.kind)


def _steps(gen: TextImageGenerator, body: Any) -> int:
    """The request's steps, or the model's default when the client left them out."""
    return body.steps if "steps" in body.model_fields_set else gen.default_steps


async def text_generations(gen: TextImageGenerator, body: ImageGenerationRequest, request: Request,
                           settings: Settings) -> dict:
    prompt = body.prompt or ""
    _note(request, settings, model=gen.id, n=body.n, prompt=prompt)
    want = gen.size
    if body.size is not None and body.size != want:
        raise _ApiError(422, f"size {body.size} is not available: model {gen.id!r} makes {want} images",
                        "invalid_size", "size")
    seed, steps = _seed(body.seed), _steps(gen, body)
    with _param("prompt"):
        item = gen.prepare(body.n, seed, prompt, body.negative_prompt, steps, body.sampler, body.guidance,
                           body.layout)
    _check_cost(gen, body.n, steps, settings.max_request_cost)
    files = await _while_connected(request, gen.generate(item, output_format=body.output_format))
    data = [{"b64_json": b, "revised_prompt": item.read_as} for b in _b64(files)]
    return {"created": int(time.time()), "data": data, "model": gen.id, "seed": seed,
            "output_format": body.output_format, "warnings": item.warnings or None}


async def create_text_job(state: dict, settings: Settings, body: JobRequest, request: Request,
                          key: KeyRecord) -> dict:
    p = body.params
    gen = state["models"].get(p.model, TextImageGenerator.kind)
    if p.labels:
        raise _ApiError(422, "params.labels: text2image jobs take a prompt, not labels", "invalid_value",
                        "params.labels")
    if p.n > settings.max_job_images:
        raise _ApiError(422, f"params.n: at most {settings.max_job_images} images per job",
                        "invalid_value", "params.n")
    steps = _steps(gen, p)
    with _param("params.prompt"):  # refuse now, not when the job runs
        gen.prepare(p.n, 0, p.prompt or "", p.negative_prompt, steps, p.sampler, p.guidance, p.layout)
    _note(request, settings, model=gen.id, n=p.n, prompt=p.prompt)
    # seed and steps are fixed now, so a job re-run after a crash makes the same images (a GAN has
    # no steps: its params leave them out)
    params = {**p.model_dump(mode="json", exclude={"steps"}), "model": gen.id, "seed": _seed(p.seed)}
    if steps is not None:
        params["steps"] = steps
    store = state["store"]
    job_id = await run_in_threadpool(store.create, body.type, gen.id, params, key.id)
    state["runner"].notify()
    return store.public(await run_in_threadpool(store.row, job_id))


def text_job_handler(state: dict) -> Callable[[dict, Callable[[float], None]], Awaitable[dict]]:
    async def run(params: dict, progress: Callable[[float], None]) -> dict:
        p = SamplesJobParams.model_validate(params)
        try:
            gen = state["models"].get(p.model, TextImageGenerator.kind)
        except ModelNotFound as e:  # queued before a restart that dropped the model
            raise GenforgeError(f"{e}; restart the server with it to run this job") from None
        item = gen.prepare(p.n, p.seed, p.prompt or "", p.negative_prompt, _steps(gen, p), p.sampler, p.guidance,
                           p.layout)
        pngs = await gen.generate_job(item, progress)
        return {"model": gen.id, "seed": p.seed, "size": gen.size, "prompt": p.prompt or "",
                "warnings": item.warnings, "images": _b64(pngs)}
    return run


def add_text_routes(app: FastAPI, state: dict, settings: Settings,
                    decode_upload: Callable[[UploadFile, int], Awaitable[Image.Image]]) -> None:
    @app.post("/v1/images/captions", response_model=CaptionResponse, tags=["images"])
    async def captions(request: Request, image: UploadFile = File(..., description="The image to describe."),
                       model: Optional[str] = Form(None, max_length=200),
                       beam: int = Form(1, ge=1, le=MAX_BEAM, description="Beam width; 1 is greedy."),
                       key: KeyRecord = Depends(require("classify"))):
        cap: ImageCaptioner = state["models"].get(model, ImageCaptioner.kind)
        _note(request, settings, model=cap.id, beam=beam)
        im = await decode_upload(image, cap.image_size)
        if min(im.size) < MIN_CAPTION_SIDE:
            raise _ApiError(400, f"image is {im.width}x{im.height} pixels; a caption needs at least "
                                 f"{MIN_CAPTION_SIDE}x{MIN_CAPTION_SIDE} (the model reads "
                                 f"{cap.image_size}x{cap.image_size})", "image_too_small", "image")
        text = await _while_connected(request, cap.caption(im, beam))
        return {"model": cap.id, "caption": text, "beam": beam}
