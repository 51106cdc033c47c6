"""The HTTP server: ``create_app(Settings(...))`` returns a FastAPI app; its lifespan loads every
model once, starts one batching worker per model and the background-job runner.

Routes: /v1/models, /v1/images/generations (OpenAI's shape), /v1/samples, /v1/images/classify,
/v1/jobs; /healthz, /readyz and /metrics for operators; the web page at /; API docs at /docs and
/redoc (see docs.py). Text models (text-to-image, /v1/images/captions) are in text_routes.py.
Every /v1 route needs ``Authorization: Bearer <key>`` (see auth.py); errors are OpenAI-style JSON.
"""
from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Optional

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from ..data.transforms import _flatten
from ..errors import GenforgeError
from ..tuning import malloc_trim
from .auth import KeyRecord, KeyStore, RateLimiter, retry_after_header
from .batching import QueueFull
from .docs import add_docs
from .jobs import JobRunner, JobStore, fernet_from_env
from .models import ImageClassifier, ImageGenerator, ModelNotFound, Models, NoModelChosen, load_models
from .observability import (AuthMiddleware, BodyLimitMiddleware, Metrics, ObserveMiddleware, error_body,
                            event)
from .schemas import (ClassifyResponse, ImageGenerationRequest, ImagesResponse, JobRequest, ModelList, SamplesJobParams,
                      SamplesRequest, SamplesResponse)
from .settings import Settings

WEB_DIR = Path(__file__).resolve().parent / "web"
# the OpenAI error ``type`` of a status; anything else is an invalid_request_error
_ERROR_KIND = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               503: "server_overloaded"}
_bearer = HTTPBearer(auto_error=False, description="An API key from `genforge keys create`.")
_CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class _ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def require(scope: str) -> Callable[..., KeyRecord]:
    """Route dependency: the caller's key (checked by AuthMiddleware) must carry ``scope``."""
    def dep(request: Request, _creds: Any = Depends(_bearer)) -> KeyRecord:
        key = getattr(request.state, "key", None)
        if key is None:  # the middleware guards every /v1 path; this is a second lock on the door
            raise _ApiError(401, "missing API key", "missing_api_key")
        if not key.allows(scope):
            raise _ApiError(403, f"API key {key.id} lacks the {scope!r} scope (it has: "
                                 f"{', '.join(key.scopes)})", "insufficient_scope")
        return key
    return dep


def _note(request: Request, settings: Settings, **fields: Any) -> None:
    """Add fields to this request's log line; prompts and labels only without --redact-inputs."""
    for k in ("prompt", "labels"):
        if k in fields and fields[k] is not None and settings.redact_inputs:
            fields[k] = "[redacted]"
    if isinstance(fields.get("prompt"), str):
        fields["prompt"] = fields["prompt"][:200]
    request.state.log = {**getattr(request.state, "log", {}), **fields}


@contextmanager
def _param(name: str) -> Iterator[None]:
    """A GenforgeError from checking the request becomes a 422 naming ``name``."""
    try:
        yield
    except GenforgeError as e:
        raise _ApiError(422, str(e), "invalid_value", name) from None


def _seed(seed: Optional[int]) -> int:
    return secrets.randbelow(2**31) if seed is None else seed


def _b64(pngs: list[bytes]) -> list[str]:
    return [base64.b64encode(p).decode("ascii") for p in pngs]


# A decode at least this large sets _trim_due; the heap is trimmed (malloc_trim) once no upload is
# waiting or decoding, so a burst's peak is given back to the OS. Trimming after each decode instead
# doubled a burst's decode time: the next decode faulted the same pages back in.
_TRIM_PIXELS = 1024 * 1024
_trim_due = threading.Event()


def _read_image(data: bytes, max_pixels: int, size: int = 0) -> Image.Image:
    """Decode an upload, already shrunk to at least twice ``size`` on its shorter side when that is
    smaller (the model resamples to ``size`` itself): a large upload costs one decode buffer for as
    long as this call runs, not a full-size image for the rest of the request."""
    if not data:
        raise _ApiError(400, "the uploaded file is empty", "invalid_image", "image")
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size  # from the header, before any pixels are decoded
        if w * h > max_pixels:
            raise _ApiError(413, f"image is {w}x{h} pixels; at most {max_pixels} pixels are accepted",
                            "image_too_large", "image")
        if size and im.format == "JPEG":
            im.draft(im.mode, (2 * size, 2 * size))  # JPEG decodes at 1/2 to 1/8 scale in the DCT
        im.load()
        if w * h >= _TRIM_PIXELS:
            _trim_due.set()
        factor = min(im.size) // (2 * size) if size else 0
        if factor >= 2:  # a box filter averages factor x factor blocks, as Image.reduce, in every mode
            im = im.resize((-(-im.width // factor), -(-im.height // factor)), Image.Resampling.BOX)
        if im.mode.startswith("I;16") or im.mode in ("I", "F"):
            im = _flatten(im)  # to 8 bits now, on the small image: resampling lacks some 16-bit modes
    except _ApiError:
        raise
    except Image.DecompressionBombError:
        raise _ApiError(413, "image would decompress to too many pixels", "image_too_large", "image")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise _ApiError(400, "the upload is not an image this server can read (PNG, JPEG, GIF, BMP, "
                             "WebP ...)", "invalid_image", "image") from None
    return im


def _check_cost(gen: ImageGenerator, n: int, steps: int, limit: int) -> None:
    cost = gen.cost(n, steps)
    if cost > limit:
        raise _ApiError(422, f"n x steps = {n} x {steps} = {cost} is more than one request may ask of "
                             f"{gen.id!r} ({limit}); lower n or steps, or send the same parameters to "
                             "POST /v1/jobs, which runs large requests in the background",
                        "request_too_large", "n")


class _ClientGone(Exception):
    pass


async def _while_connected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work`` unless the client hangs up first: then cancel it (the model stops at its next
    step) and answer 499 into the void, so logs and metrics show who left."""
    task = asyncio.ensure_future(work)

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass  # the body was read already: the next message is the disconnect

    watch = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # its clean-up (the cancel flag run_batch reads) has run
    if task.cancelled():
        raise _ClientGone()
    return task.result()


SETTINGS_ENV, LOG_LEVEL_ENV = "GENFORGE_SERVE_SETTINGS", "GENFORGE_SERVE_LOG_LEVEL"


def app_from_env() -> FastAPI:
    """The app of one worker of `genforge serve --workers N`: uvicorn imports this in every worker
    process, and the settings come from the environment the CLI set before starting them."""
    from .connections import configure
    from .observability import configure_logging

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(os.environ.get(LOG_LEVEL_ENV, "INFO"), redact=settings.redact_inputs)
    configure(settings.header_timeout, settings.body_timeout, settings.max_connections)
    return create_app(settings)


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    # text_routes builds on this module's helpers, so it is imported once they exist
    from .text_routes import add_text_routes, create_text_job, text_generations, text_generator, text_job_handler
    from .lm_routes import add_lm_routes
    from .video_routes import add_video_routes, video_job_handler
    from .speech_routes import add_speech_routes

    settings = settings or Settings()
    keys = KeyStore(settings.keys_path, tolerant=True)  # a bad file later keeps the last good keys
    metrics = Metrics()
    state: dict[str, Any] = {"ready": False}
    uploads = [0]  # waiting for or in a decode

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="genforge-infer")
        # Uploads decode on threads of their own: each decode holds a full-size buffer, so this bounds
        # how many exist at once, and only these threads' malloc arenas ever hold such buffers.
        decoder = ThreadPoolExecutor(max_workers=settings.decode_threads(), thread_name_prefix="genforge-decode")
        state["decoder"] = decoder
        # encoding on threads of its own: the model's threads go straight on to the next forward
        encoder = ThreadPoolExecutor(max_workers=settings.encode_threads, thread_name_prefix="genforge-encode")
        models: Models = await run_in_threadpool(load_models, settings, executor, metrics, encoder)
        for m in models:
            m.batcher.start()
        store = await run_in_threadpool(JobStore, settings.resolved_jobs_url(), fernet_from_env())
        runner = JobRunner(store, {"samples": run_samples_job, "text2image": text_job_handler(state),
                                   "video": video_job_handler(state)},
                           max_attempts=settings.job_max_attempts, metrics=metrics)
        state.update(models=models, store=store, runner=runner)
        recovered = await runner.start()
        if keys.loaded and not any(not k.revoked for k in keys.list()):
            event("no API keys yet: every /v1 request will get 401; create one with "
                  "`genforge keys create --name NAME --scopes generate,classify`", logging.WARNING,
                  keys=str(keys.path))

        async def become_ready() -> None:
            if settings.compile:
                # compiled after start-up, so /readyz can say "compiling" meanwhile; the forward lock
                # keeps an early request from compiling the same graph beside the warm-up
                state["warming"] = True
                loop = asyncio.get_running_loop()
                for m in models:
                    if not isinstance(m, ImageGenerator):
                        continue
                    try:
                        secs = await loop.run_in_executor(executor, m.warm_up)
                    except Exception as e:  # the model still serves, compiling at first use instead
                        event("warm-up failed", logging.ERROR, model=m.id, error=f"{type(e).__name__}: {e}")
                        continue
                    event("compiled", model=m.id, buckets=sorted(secs),
                          seconds=round(sum(secs.values()), 2), fell_back=m.pipe.compiled.failed)
                state["warming"] = False
            event("ready", models=[m.id for m in models], jobs_db=store.safe_url, recovered=recovered,
                  max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
                  wait_fraction=settings.wait_fraction, compiled=settings.compile)
            state["ready"] = True

        warm = asyncio.get_running_loop().create_task(become_ready(), name="warm-up")
        try:
            yield
        finally:
            warm.cancel()
            state["ready"] = False
            await runner.stop()
            for m in models:
                await m.batcher.stop()
            executor.shutdown(wait=False, cancel_futures=True)
            decoder.shutdown(wait=False, cancel_futures=True)
            encoder.shutdown(wait=False, cancel_futures=True)
            store.close()

    app = FastAPI(title="genforge", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Generate images, text, speech, translations and video, and classify and "
                              "caption images, with genforge models. Send `Authorization: Bearer <key>` on "
                              "every /v1 route.")
    app.state.settings, app.state.keys, app.state.metrics, app.state.serve = settings, keys, metrics, state

    async def run_samples_job(params: dict, progress: Callable[[float], None]) -> dict:
        p = SamplesJobParams.model_validate(params)
        try:
            gen = state["models"].get(p.model, ImageGenerator.kind)
        except ModelNotFound as e:  # queued before a restart that dropped the model
            raise GenforgeError(f"{e}; restart the server with it to run this job") from None
        seed = _seed(p.seed)
        item = gen.prepare(p.n, seed, p.steps, p.sampler, p.guidance, p.labels)
        pngs = await gen.generate_job(item, progress)
        return {"model": gen.id, "seed": seed, "size": gen.details()["size"], "images": _b64(pngs)}

    # -- errors ------------------------------------------------------------------------------------
    @app.exception_handler(_ApiError)
    async def _api_error(request: Request, e: _ApiError):
        kind = _ERROR_KIND.get(e.status, "invalid_request_error")
        return JSONResponse(error_body(e.message, e.code, kind, e.param), e.status, headers=e.headers)

    @app.exception_handler(ModelNotFound)
    async def _not_found(request: Request, e: ModelNotFound):
        return JSONResponse(error_body(str(e), "model_not_found", "not_found_error", "model"), 404)

    @app.exception_handler(NoModelChosen)
    async def _no_model(request: Request, e: NoModelChosen):
        return JSONResponse(error_body(str(e), "model_required", param="model"), 400)

    @app.exception_handler(GenforgeError)
    async def _genforge_error(request: Request, e: GenforgeError):
        return JSONResponse(error_body(str(e), "invalid_value"), 422)

    @app.exception_handler(_ClientGone)
    async def _client_gone(request: Request, e: _ClientGone):
        return JSONResponse(error_body("the client closed the connection before the answer was ready",
                                       "client_closed_request"), 499)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, e: QueueFull):
        return JSONResponse(error_body(str(e), "queue_full", "server_overloaded"), 503,
                            headers={"Retry-After": retry_after_header(e.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errs = e.errors()
        parts, first = [], None
        for err in errs[:5]:
            if err["type"] == "json_invalid":  # loc holds a character offset, not a field
                where = err["loc"][-1] if len(err["loc"]) > 1 else "?"
                parts.append(f"the body is not valid JSON (error at character {where}: "
                             f"{err.get('ctx', {}).get('error', err['msg'])})")
                continue
            loc = ".".join(str(x) for x in err["loc"] if x not in ("body", "query", "path"))
            first = first or loc or None
            parts.append(f"{loc or 'body'}: {err['msg']}")
        body = error_body("; ".join(parts), "invalid_request", param=first)
        body["error"]["details"] = [{"loc": list(x["loc"]), "msg": x["msg"], "type": x["type"]} for x in errs[:20]]
        return JSONResponse(body, 422)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        message, kind = str(e.detail), _ERROR_KIND.get(e.status_code, "invalid_request_error")
        path = request.url.path if len(request.url.path) <= 100 else request.url.path[:97] + "..."
        if e.status_code == 404 and e.detail == "Not Found":  # the router's own: no such route
            message = (f"no route {request.method} {path}; the routes are listed at /docs "
                       "(OpenAPI schema at /openapi.json)")
        elif e.status_code == 405 and e.detail == "Method Not Allowed":
            message = f"{path} does not take {request.method}; see /docs for its methods"
        return JSONResponse(error_body(message, f"http_{e.status_code}", kind), e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        # ObserveMiddleware logs and answers route errors; what still gets here (an error after the
        # response started, or in that middleware) is re-raised by Starlette and logged by the server.
        return JSONResponse(error_body("internal server error; see the server log", "internal_error",
                                       "server_error"), 500)

    # -- operators -------------------------------------------------------------------------------
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:  # on the event loop: no worker thread to wait for when they are all busy
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz():
        if not state["ready"]:
            if state.get("warming"):
                return JSONResponse({"status": "starting", "reason": "compiling the models (--compile); "
                                     "ready once each batch size is compiled"}, 503)
            return JSONResponse({"status": "starting"}, 503)
        keys.reload()
        if not keys.loaded:  # it can check no key at all: the balancer should send traffic elsewhere
            return JSONResponse({"status": "not ready", "reason": "the API keys file cannot be read (see "
                                 "the server log); no key is accepted until it is fixed"}, 503)
        out: dict[str, Any] = {"status": "ready", "models": [m.id for m in state["models"]]}
        # ready, with warnings: taking every replica that shares a bad keys file out of the balancer
        # would stop the service, while the keys read before still work
        warnings = ["the API keys file cannot be read (see the server log); the keys read before it "
                    "went bad stay in force, so new or revoked keys are not seen"] if keys.error else []
        if state["runner"].sealed_waiting:
            warnings.append(f"{state['runner'].sealed_waiting} queued job(s) are encrypted with a "
                            "GENFORGE_JOBS_KEY this server lacks; a server with that key runs them")
        if warnings:
            out["warnings"] = warnings
        return out

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus(request: Request):
        if not settings.metrics_open:
            key = getattr(request.state, "key", None)
            if key is None or not key.allows("admin"):
                raise _ApiError(403, "/metrics needs a key with the 'admin' scope (or start the server "
                                     "with --metrics-open)", "insufficient_scope")
        for m in state.get("models") or []:
            metrics.queue_depth.labels(m.id).set(m.batcher.depth)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    # -- the API ---------------------------------------------------------------------------------
    @app.get("/v1/models", response_model=ModelList, tags=["models"])
    def list_models(key: KeyRecord = Depends(require("any"))):
        return {"object": "list", "data": [m.info() for m in state["models"]]}

    @app.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True,
              tags=["images"])
    async def images_generations(body: ImageGenerationRequest, request: Request,
                                 key: KeyRecord = Depends(require("generate"))):
        text_gen = text_generator(state["models"], body.model)
        if text_gen is not None:
            return await text_generations(text_gen, body, request, settings)
        gen: ImageGenerator = state["models"].get(body.model, ImageGenerator.kind)
        for extra in ("negative_prompt", "layout"):
            if getattr(body, extra) is not None:
                raise _ApiError(422, f"model {gen.id!r} takes no {extra} (only text-to-image models do); "
                                     "leave it out", "invalid_value", extra)
        _note(request, settings, model=gen.id, n=body.n, prompt=body.prompt)
        want = f"{gen.image_size}x{gen.image_size}"
        if body.size is not None and body.size != want:
            raise _ApiError(422, f"size {body.size} is not available: model {gen.id!r} makes {want} images",
                            "invalid_size", "size")
        seed = _seed(body.seed)
        with _param("prompt"):
            item = gen.prepare(body.n, seed, body.steps, body.sampler, body.guidance,
                               gen.label_for_prompt(body.prompt))
        _check_cost(gen, body.n, body.steps, settings.max_request_cost)
        files = await _while_connected(request, gen.generate(item, output_format=body.output_format))
        return {"created": int(time.time()), "data": [{"b64_json": b} for b in _b64(files)],
                "model": gen.id, "seed": seed, "output_format": body.output_format}

    @app.post("/v1/samples", response_model=SamplesResponse, tags=["images"])
    async def samples(body: SamplesRequest, request: Request, key: KeyRecord = Depends(require("generate"))):
        gen: ImageGenerator = state["models"].get(body.model, ImageGenerator.kind)
        _note(request, settings, model=gen.id, n=body.n, labels=body.labels)
        seed = _seed(body.seed)
        with _param("labels"):
            item = gen.prepare(body.n, seed, body.steps, body.sampler, body.guidance, body.labels)
        _check_cost(gen, body.n, body.steps, settings.max_request_cost)
        pngs = await _while_connected(request, gen.generate(item))
        return {"model": gen.id, "seed": seed, "size": f"{gen.image_size}x{gen.image_size}",
                "images": _b64(pngs)}

    @app.post("/v1/images/classify", response_model=ClassifyResponse, tags=["images"])
    async def classify(request: Request, image: UploadFile = File(..., description="The image to label."),
                       model: Optional[str] = Form(None, max_length=200),
                       top_k: int = Form(3, ge=1, le=100),
                       key: KeyRecord = Depends(require("classify"))):
        clf: ImageClassifier = state["models"].get(model, ImageClassifier.kind)
        _note(request, settings, model=clf.id)
        im = await decode_upload(image, clf.pipe.image_size)
        return {"model": clf.id, "labels": await clf.classify(im, top_k)}

    async def decode_upload(image: UploadFile, size: int) -> Image.Image:
        """An upload decoded on the decode threads, within the pixel limit, shrunk towards ``size``:
        every route that reads an image goes through here."""
        data = await image.read()
        uploads[0] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                state["decoder"], _read_image, data, settings.max_image_pixels, size)
        finally:
            uploads[0] -= 1
            del data
            if uploads[0] == 0 and _trim_due.is_set():
                _trim_due.clear()
                await run_in_threadpool(malloc_trim)

    @app.post("/v1/jobs", status_code=202, tags=["jobs"])
    async def create_job(body: JobRequest, request: Request, key: KeyRecord = Depends(require("generate"))):
        if body.type == "text2image":
            return await create_text_job(state, settings, body, request, key)
        if any(v is not None for v in (body.params.prompt, body.params.negative_prompt, body.params.layout)):
            raise _ApiError(422, "params.prompt: samples jobs take labels; send a prompt to a text-to-image "
                                 "model with \"type\": \"text2image\"", "invalid_value", "params.prompt")
        gen: ImageGenerator = state["models"].get(body.params.model, ImageGenerator.kind)
        p = body.params
        if p.n > settings.max_job_images:
            raise _ApiError(422, f"params.n: at most {settings.max_job_images} images per job",
                            "invalid_value", "params.n")
        with _param("params.labels"):
            gen.prepare(p.n, 0, p.steps, p.sampler, p.guidance, p.labels)  # refuse now, not later
        _note(request, settings, model=gen.id, n=p.n, labels=p.labels)
        # the seed is fixed now, so a job re-run after a crash makes the same images
        params = {**p.model_dump(mode="json"), "model": gen.id, "seed": _seed(p.seed)}
        store: JobStore = state["store"]
        job_id = await run_in_threadpool(store.create, body.type, gen.id, params, key.id)
        state["runner"].notify()
        return store.public(await run_in_threadpool(store.row, job_id))

    @app.get("/v1/jobs", tags=["jobs"])
    async def list_jobs(key: KeyRecord = Depends(require("any"))):
        store: JobStore = state["store"]
        rows = await run_in_threadpool(store.list, None if key.allows("admin") else key.id)
        return {"object": "list", "data": [store.public(r, with_result=False) for r in rows]}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str, key: KeyRecord = Depends(require("any"))):
        store: JobStore = state["store"]
        row = await run_in_threadpool(store.row, job_id[:64])
        if row is None or (row.owner != key.id and not key.allows("admin")):
            raise _ApiError(404, f"no job {job_id[:64]!r} for this key", "job_not_found", "job_id")
        return store.public(row)

    add_text_routes(app, state, settings, decode_upload)
    add_lm_routes(app, state, settings)
    add_video_routes(app, state, settings, decode_upload)
    add_speech_routes(app, state, settings)

    # -- the web page ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    add_docs(app)

    # outermost last: observe -> body limit -> auth -> routes
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(AuthMiddleware, store=keys, limiter=RateLimiter(settings.rate_limit, settings.rate_burst),
                       auth_fail_rate=settings.auth_fail_rate,
                       auth_fail_global_rate=settings.auth_fail_global_rate,
                       metrics_open=settings.metrics_open)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ObserveMiddleware, metrics=metrics)
    return app


_HSTS = b"max-age=31536000"


class _SecurityHeaders:
    """nosniff everywhere; the strict CSP on the web page and its files (the docs pages set their own);
    HSTS on every answer sent over TLS."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        page = scope["path"] == "/" or scope["path"].startswith("/web/")
        tls = scope.get("scheme") == "https"

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                headers.append((b"x-content-type-options", b"nosniff"))
                if page:
                    headers += [(b"content-security-policy", _CSP.encode()), (b"referrer-policy", b"no-referrer")]
                if tls:  # browsers then refuse a later downgrade to plain HTTP for this host
                    headers.append((b"strict-transport-security", _HSTS))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)

