"""OpenAI's video API on text-to-video runs: ``POST /v1/videos`` queues a clip and returns a video
object (``status`` queued / in_progress / completed / failed, ``progress`` 0-100), ``GET
/v1/videos/{id}`` polls it, ``GET /v1/videos/{id}/content`` returns the MP4, ``GET /v1/videos``
lists the caller's videos.

A video is a row of the jobs store (type ``video``): it is run by the same job runner, survives a
restart (queued ones run after it, finished ones stay readable) and is encrypted at rest with
GENFORGE_JOBS_KEY like every job. ``create_app`` adds the routes and the job handler from here.
"""
from __future__ import annotations

import base64
import io
from typing import Any, Awaitable, Callable, Literal, Optional, Union

from fastapi import Depends, FastAPI, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from PIL import Image
from pydantic import Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload

from ..errors import GenforgeError
from .app import _ApiError, _note, _param, _seed, require
from .auth import KeyRecord
from .models import ModelNotFound
from .schemas import MAX_PROMPT_CHARS, MAX_SEED, Sampler, _Body
from .settings import Settings
from .video_models import VideoGenerator

JOB_TYPE = "video"
_STATUS = {"queued": "queued", "running": "in_progress", "succeeded": "completed", "failed": "failed"}


class VideoRequest(_Body):
    """OpenAI's ``POST /v1/videos`` body (JSON), with genforge's sampling options."""
    model_config = {**_Body.model_config, "extra": "ignore"}  # OpenAI clients may send fields we do not use
    model: Optional[str] = Field(None, max_length=200, description="A video model id from GET /v1/models; "
                                 "optional when one is loaded.")
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description="What the clip shows.")
    seconds: Optional[Union[str, int]] = Field(None, description="Clip length in whole seconds, \"4\" or 4 "
                                               "(OpenAI sends a string); at most 64 frames. Omitted: the "
                                               "model's training length.")
    size: Optional[str] = Field(None, max_length=20, description="WIDTHxHEIGHT; must be the model's size.")
    negative_prompt: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARS)
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="Same seed, same clip.")
    steps: Optional[int] = Field(None, ge=1, le=200, description="Denoising steps (default: the model's).")
    sampler: Sampler = "dpm++"
    guidance: Optional[float] = Field(None, ge=0.0, le=50.0, description="Classifier-free guidance "
                                      "(default: the model's).")
    layout: Optional[Literal["paths", "off"]] = Field(None, description="paths: plan each object's path from "
                                                      "the caption and draw each object on its own; off: leave "
                                                      "it to the model (default: the model's default_layout; "
                                                      "a given input_reference draws with off).")

    @field_validator("seconds")
    @classmethod
    def _whole(cls, v):
        if v is None:
            return v
        if isinstance(v, bool) or (isinstance(v, str) and not v.strip().isdigit()):
            raise ValueError("seconds must be a whole number of seconds, like \"4\"")
        return int(v)


def video_object(store, row: Any) -> dict:
    """The OpenAI video object of a ``video`` job row."""
    try:
        params = store.params(row)
    except GenforgeError:
        params = {}
    out = {"id": row.id, "object": "video", "model": row.model, "status": _STATUS.get(row.status, row.status),
           "progress": int(round(100 * (row.progress or 0.0))), "created_at": int(row.created),
           "completed_at": int(row.finished) if row.finished and row.status == "succeeded" else None,
           "seconds": str(params.get("seconds", "")), "size": params.get("size"), "error": None}
    if row.status == "failed":
        out["error"] = {"code": "video_generation_failed", "message": row.error or "failed"}
    return out


async def _owned(state: dict, video_id: str, key: KeyRecord) -> Any:
    store = state["store"]
    row = await run_in_threadpool(store.row, video_id[:64])
    if row is None or row.type != JOB_TYPE or (row.owner != key.id and not key.allows("admin")):
        raise _ApiError(404, f"no video {video_id[:64]!r} for this key", "video_not_found", "video_id")
    return row


def video_job_handler(state: dict) -> Callable[[dict, Callable[[float], None]], Awaitable[dict]]:
    async def run(params: dict, progress: Callable[[float], None]) -> dict:
        try:
            gen: VideoGenerator = state["models"].get(params["model"], VideoGenerator.kind)
        except ModelNotFound as e:  # queued before a restart that dropped the model
            raise GenforgeError(f"{e}; restart the server with it to run this video") from None
        item = gen.prepare(params["prompt"], params["seconds"], params["seed"], params.get("negative_prompt"),
                           params["steps"], params["sampler"], params["guidance"], params.get("layout", "off"),
                           first=bool(params.get("first_frame")))
        if params.get("first_frame"):
            item.first = gen.first_frame(Image.open(io.BytesIO(base64.b64decode(params["first_frame"]))))
        data = await gen.render(item, progress)
        return {"model": gen.id, "seed": item.seed, "frames": item.frames, "fps": gen.fps, "size": gen.size,
                "warnings": item.warnings, "video": base64.b64encode(data).decode("ascii")}
    return run


async def _read_body(request: Request, decode_upload: Callable[[UploadFile, int], Awaitable[Image.Image]],
                     size: Callable[[Optional[str]], int]) -> tuple[VideoRequest, Optional[Image.Image]]:
    """The request as JSON or, as OpenAI's client sends it, multipart form fields (whose values are
    all text, so numbers are parsed) with an optional ``input_reference`` image: the first frame."""
    upload = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        data: Any = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        upload = form.get("input_reference")
        upload = upload if isinstance(upload, StarletteUpload) else None
        strict = False
    else:
        try:
            data = await request.json()
        except ValueError:
            raise _ApiError(422, "the body is neither JSON nor multipart/form-data", "invalid_request") from None
        strict = True
    try:
        body = VideoRequest.model_validate(data, strict=strict)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
    image = await decode_upload(upload, size(body.model)) if upload is not None else None
    return body, image


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def add_video_routes(app: FastAPI, state: dict, settings: Settings,
                     decode_upload: Callable[[UploadFile, int], Awaitable[Image.Image]]) -> None:
    def model_size(model_id: Optional[str]) -> int:
        return int(state["models"].get(model_id, VideoGenerator.kind).pipe.model.image_size)

    @app.post("/v1/videos", tags=["videos"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": VideoRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "description": "the same fields as form "
                                           "values, plus input_reference: an image file used as the first frame"}}}}})
    async def create_video(request: Request, key: KeyRecord = Depends(require("generate"))):
        body, first = await _read_body(request, decode_upload, model_size)
        gen: VideoGenerator = state["models"].get(body.model, VideoGenerator.kind)
        seconds = gen.default_seconds if body.seconds is None else body.seconds
        if body.size is not None and body.size != gen.size:
            raise _ApiError(422, f"size {body.size} is not available: model {gen.id!r} makes {gen.size} clips",
                            "invalid_size", "size")
        seed = _seed(body.seed)
        with _param("seconds"):
            gen.frames_for(seconds)
        with _param("input_reference"):
            reference = gen.reference(first) if first is not None else None
        with _param("prompt"):
            item = gen.prepare(body.prompt, seconds, seed, body.negative_prompt, body.steps, body.sampler,
                               body.guidance, body.layout, first=reference is not None)
        _note(request, settings, model=gen.id, prompt=body.prompt, seconds=seconds)
        # everything fixed now, so a video re-run after a crash is the same clip
        params = {"model": gen.id, "prompt": body.prompt, "negative_prompt": item.negative, "seconds": seconds,
                  "size": gen.size, "seed": seed, "steps": item.steps, "sampler": item.sampler,
                  "guidance": item.guidance, "layout": item.layout,
                  "first_frame": _png_b64(reference) if reference else None}
        store = state["store"]
        job_id = await run_in_threadpool(store.create, JOB_TYPE, gen.id, params, key.id)
        state["runner"].notify()
        return video_object(store, await run_in_threadpool(store.row, job_id))

    @app.get("/v1/videos", tags=["videos"])
    async def list_videos(key: KeyRecord = Depends(require("any"))):
        store = state["store"]
        rows = await run_in_threadpool(store.list, None if key.allows("admin") else key.id)
        return {"object": "list", "data": [video_object(store, r) for r in rows if r.type == JOB_TYPE]}

    @app.get("/v1/videos/{video_id}", tags=["videos"])
    async def get_video(video_id: str, key: KeyRecord = Depends(require("any"))):
        return video_object(state["store"], await _owned(state, video_id, key))

    @app.get("/v1/videos/{video_id}/content", tags=["videos"], response_class=Response,
             responses={200: {"content": {"video/mp4": {}}}})
    async def video_content(video_id: str, key: KeyRecord = Depends(require("any")),
                            variant: str = Query("video", max_length=20, description="Only \"video\" (MP4).")):
        if variant != "video":
            raise _ApiError(422, f"variant {variant[:20]!r} is not available; this server keeps the video only",
                            "invalid_value", "variant")
        store = state["store"]
        row = await _owned(state, video_id, key)
        if row.status != "succeeded":
            status = _STATUS.get(row.status, row.status)
            raise _ApiError(409 if row.status != "failed" else 422, f"video {row.id} is {status}; its content "
                            "exists once GET /v1/videos/{id} says completed", "video_not_ready", "video_id")
        public = await run_in_threadpool(store.public, row)
        if "result_error" in public:  # sealed with a GENFORGE_JOBS_KEY this server lacks
            raise _ApiError(409, public["result_error"], "video_sealed", "video_id")
        data = base64.b64decode(public["result"]["video"])
        return Response(data, media_type="video/mp4",
                        headers={"Content-Disposition": f'inline; filename="{row.id}.mp4"',
                                 "Cache-Control": "private, max-age=3600"})
