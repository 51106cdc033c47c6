"""Language models on OpenAI's routes: ``POST /v1/completions`` and ``POST /v1/chat/completions``
(streamed as server-sent events with ``stream: true``), and genforge's ``POST /v1/translations``.

Our language models are plain text models, not chat-tuned ones, so a chat is written out as a text
for them to continue (``render_chat``) and the reply ends where the model starts the user's next turn.
Generation goes through the model's decode loop (lm_models.py), so concurrent requests share forward
passes. Request checks, error shapes and keys are app.py's, as for the image routes.
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Any, AsyncIterator, Literal, Optional, Union

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..pipelines.image import MAX_SEED
from .app import _ApiError, _note, _param, _seed, _while_connected, require
from .auth import KeyRecord
from .lm_models import Generation, TextGenerator, TextTranslator
from .observability import error_body
from .settings import Settings

MAX_TEXT_CHARS = 100_000  # a bound on the request; the model's context cuts far sooner
ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
#: the reply ends where the model starts writing the next turn itself
CHAT_STOPS = ("\nUser:", "\nSystem:")
CHAT_TEMPLATE = ("Chat messages are written out as one text for the model to continue, one line "
                 "per message, `System: ...`, `User: ...` or `Assistant: ...` (developer messages count "
                 "as System), ending with a line `Assistant:`; the reply stops where the model writes "
                 "`\\nUser:` or `\\nSystem:` (besides your own stop strings), and its leading spaces are "
                 "dropped. genforge's language models are plain text models, not chat-tuned ones: "
                 "expect a continuation in the style of their training text.")


class _LMBody(BaseModel):
    # OpenAI clients send fields we have no use for (user, logprobs, penalties): accepted, unused
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(_LMBody):
    include_usage: bool = False


class _Sampling(_LMBody):
    model: Optional[str] = Field(None, max_length=200, description="A model id from GET /v1/models; "
                                 "optional when one language model is loaded.")
    max_tokens: Optional[int] = Field(None, ge=1, le=1_000_000, description="Tokens to write at most; at "
                                      "most the model's context - 1 (GET /v1/models: max_tokens). Omitted: "
                                      "16 for completions; for chat what the context has room for after the messages, up to 256 "
                                      "(at least 16, cutting the messages).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy (always the likeliest token).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: 1 is off.")
    top_k: int = Field(0, ge=0, le=1_000_000, description="genforge: only the k likeliest tokens; 0 is off.")
    stop: Optional[Union[str, list[str]]] = Field(None, description="Up to 4 strings; the text ends just "
                                                  "before the first one written.")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="Same seed, same text. Omitted: a "
                                "random seed, returned in the response.")
    n: int = Field(1, ge=1, le=128, description="Only 1: one text per request.")
    stream: bool = Field(False, description="Send the text as it is written, as server-sent events "
                         "(`data: {chunk}` lines, then `data: [DONE]`).")
    stream_options: Optional[StreamOptions] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]] = Field("", description="The text to continue (a list of one string "
                                          "is accepted too). Cut from the left to fit the context.")


class ContentPart(_LMBody):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT_CHARS)


class ChatMessage(_LMBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: Optional[Union[str, list[ContentPart]]] = Field(None)
    name: Optional[str] = Field(None, max_length=64)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=1_000_000, description="Same as max_tokens.")


class TranslationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    model: Optional[str] = Field(None, max_length=200)
    input: Union[str, list[str]] = Field(description="One text or a list of up to 64.")
    beam: int = Field(4, ge=1, le=16, description="Beam width; 1 is greedy.")
    length_penalty: float = Field(1.0, ge=0.0, le=5.0)
    max_len: Optional[int] = Field(None, ge=2, le=1024, description="Tokens per translation at most, "
                                   "[BOS] and [EOS] included. Omitted: twice the source's plus 10.")


def _content(m: ChatMessage) -> str:
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    return "".join(p.text for p in m.content)


def render_chat(messages: list[ChatMessage]) -> str:
    """The text a plain language model continues for a chat (see CHAT_TEMPLATE)."""
    lines = [f"{ROLES[m.role]}: {_content(m).strip()}" for m in messages]
    return "\n".join(lines + ["Assistant:"])


def _stops(stop: Union[str, list[str], None]) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
        raise _ApiError(400, "stop takes up to 4 non-empty strings of at most 200 characters", "invalid_value",
                        "stop")
    return stops


def _check_common(body: _Sampling) -> None:
    if body.n != 1:
        raise _ApiError(400, f"n={body.n}: this server writes one text per request; send n=1 (or leave it "
                             "out) and make several requests", "unsupported_value", "n")


def _max_tokens(gen: TextGenerator, given: Optional[int], default: int, prompt: str, fit: bool) -> int:
    """The request's max_tokens, checked; omitted: ``default``, or with ``fit`` what the context has
    room for after the prompt, up to ``default`` (and at least 16, cutting the prompt)."""
    bound = gen.context - 1
    if given is None:
        if fit:
            default = max(16, min(default, gen.context - gen.count_tokens(prompt)))
        return min(default, bound)
    if given > bound:
        raise _ApiError(400, f"max_tokens={given} is more than model {gen.id!r} can write: at most {bound} "
                             f"(its context is {gen.context} tokens and the prompt needs at least one)",
                        "max_tokens_too_large", "max_tokens")
    return given


def _usage(g: Generation) -> dict:
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


def add_lm_routes(app: FastAPI, state: dict, settings: Settings) -> None:
    def start(request: Request, body: _Sampling, prompt: str, extra_stops: tuple = (),
              default_tokens: int = 16, fit: bool = False) -> tuple[TextGenerator, Generation, int, list[str]]:
        gen: TextGenerator = state["models"].get(body.model, TextGenerator.kind)
        _check_common(body)
        stops = _stops(body.stop) + list(extra_stops)
        given = body.max_tokens if body.max_tokens is not None else getattr(body, "max_completion_tokens", None)
        with _param("prompt"):
            max_tokens = _max_tokens(gen, given, default_tokens, prompt, fit)
        _note(request, settings, model=gen.id, prompt=prompt, max_tokens=max_tokens, stream=body.stream)
        seed = _seed(body.seed)
        with _param("prompt"):
            ids, warnings = gen.prompt_ids(prompt, max_tokens)
        with _param("temperature"):
            handle = gen.start(ids, max_tokens, body.temperature, body.top_k, body.top_p, stops, seed)
        return gen, handle, seed, warnings

    def headers(warnings: list[str]) -> dict:
        # header values are latin-1: a model id in another script must not turn the answer into a 500
        text = " | ".join(warnings).encode("ascii", "replace").decode()
        return {"X-Genforge-Warning": text} if warnings else {}

    def stream_response(handle: Generation, chunk, first: Optional[dict], include_usage: bool,
                        warnings: list[str]) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            try:
                if first is not None:
                    yield _sse(chunk(first, None))
                async for piece in handle:
                    yield _sse(chunk(piece, None))
                yield _sse(chunk(None, handle.finish_reason))
                if include_usage:
                    yield _sse({**chunk(None, None), "choices": [], "usage": _usage(handle)})
                yield "data: [DONE]\n\n"
            except Exception as e:  # noqa: BLE001  the status was sent: the error goes in the stream
                yield _sse(error_body(f"generation failed: {type(e).__name__}", "generation_failed",
                                      "server_error"))
            finally:
                handle.cancel()  # a client that left mid-stream frees its row at the next step

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                          **headers(warnings)})

    @app.post("/v1/completions", tags=["text"], description=(
        "OpenAI's completions: the continuation of `prompt`. `temperature` 0 is greedy; `seed` makes it "
        "repeatable. The prompt is cut from the left so prompt and max_tokens fit the model's context "
        "(the response's `warnings` and the X-Genforge-Warning header say so). Needs the `text` scope."))
    async def completions(body: CompletionRequest, request: Request, key: KeyRecord = Depends(require("text"))):
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise _ApiError(400, f"prompt is a list of {len(prompt)} strings; send one string per "
                                     "request", "unsupported_value", "prompt")
            prompt = prompt[0]
        if len(prompt) > MAX_TEXT_CHARS:
            raise _ApiError(400, f"prompt is {len(prompt)} characters; at most {MAX_TEXT_CHARS}",
                            "prompt_too_long", "prompt")
        gen, handle, seed, warnings = start(request, body, prompt)
        rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())

        def chunk(text: Optional[str], finish: Optional[str]) -> dict:
            return {"id": rid, "object": "text_completion", "created": created, "model": gen.id, "seed": seed,
                    "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return stream_response(handle, chunk, None, include, warnings)
        text = await _while_connected(request, handle.text())
        out = {**chunk(text, handle.finish_reason), "usage": _usage(handle)}
        if warnings:
            out["warnings"] = warnings
        return JSONResponse(out, headers=headers(warnings))

    @app.post("/v1/chat/completions", tags=["text"], description="OpenAI's chat completions. " + CHAT_TEMPLATE
              + " Sampling, limits and streaming as /v1/completions. Needs the `text` scope.")
    async def chat_completions(body: ChatRequest, request: Request, key: KeyRecord = Depends(require("text"))):
        prompt = render_chat(body.messages)
        if len(prompt) > MAX_TEXT_CHARS:
            raise _ApiError(400, f"the messages come to {len(prompt)} characters; at most {MAX_TEXT_CHARS}",
                            "prompt_too_long", "messages")
        gen, handle, seed, warnings = start(request, body, prompt, CHAT_STOPS, default_tokens=256, fit=True)
        rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        started = [False]

        def chunk(delta: Any, finish: Optional[str]) -> dict:
            if isinstance(delta, str):  # the reply's leading spaces are dropped, across pieces
                delta = delta if started[0] else delta.lstrip()
                started[0] = started[0] or bool(delta)
                delta = {"content": delta}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": gen.id,
                    "seed": seed, "choices": [{"index": 0, "delta": delta or {}, "logprobs": None,
                                               "finish_reason": finish}]}

        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return stream_response(handle, chunk, {"role": "assistant", "content": ""}, include, warnings)
        text = (await _while_connected(request, handle.text())).lstrip()
        out = {"id": rid, "object": "chat.completion", "created": created, "model": gen.id, "seed": seed,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                            "finish_reason": handle.finish_reason}], "usage": _usage(handle)}
        if warnings:
            out["warnings"] = warnings
        return JSONResponse(out, headers=headers(warnings))

    @app.post("/v1/translations", tags=["text"], description=(
        "genforge's own: translate `input` (one text or a list) with a translation model; beam search "
        "of width `beam`. Concurrent requests with the same settings share a forward pass. Needs the "
        "`text` scope."))
    async def translations(body: TranslationRequest, request: Request, key: KeyRecord = Depends(require("text"))):
        tr: TextTranslator = state["models"].get(body.model, TextTranslator.kind)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not 1 <= len(texts) <= 64 or any(len(t) > 5000 for t in texts):
            raise _ApiError(400, "input takes one text or a list of 1 to 64 texts of at most 5000 characters "
                                 "each", "invalid_value", "input")
        _note(request, settings, model=tr.id, prompt=texts[0], n=len(texts), beam=body.beam)
        with _param("beam"):
            tr.check(body.beam, body.length_penalty, body.max_len)
        out = await _while_connected(request, tr.translate(texts, body.beam, body.length_penalty, body.max_len))
        return {"object": "list", "model": tr.id, "beam": body.beam,
                "data": [{"index": i, "translation": t} for i, t in enumerate(out)]}
