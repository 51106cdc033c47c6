"""Speech on OpenAI's route: ``POST /v1/audio/speech`` (text in, audio bytes out).

The answer is always streamed: WAV (16-bit, a header of unknown length first) and raw PCM (16-bit
little-endian mono at the model's sample rate, X-Sample-Rate header) go out sentence by sentence, so
the first audio arrives after one sentence's synthesis; FLAC is encoded once the whole text is done.
``stream_format: "sse"`` sends OpenAI's server-sent events instead (``speech.audio.delta`` with base64
PCM, then ``speech.audio.done``). Every check, phonemizing the text included, happens before the
status line, so a bad request is a 4xx JSON error, never a broken stream. Needs the `generate` scope.
"""
from __future__ import annotations

import base64
import json
from typing import AsyncIterator, Literal, Optional

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from .app import _ApiError, _note, _param, require
from .auth import KeyRecord
from .observability import error_body
from .settings import Settings
from .speech_models import AUDIO_FORMATS, MEDIA_TYPES, SpeechSynthesizer, flac_bytes, pcm16, wav_header

#: OpenAI's own bound on ``input``
MAX_INPUT_CHARS = 4096


class SpeechRequest(BaseModel):
    # OpenAI clients may send fields we have no use for (instructions): accepted, unused
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: Optional[str] = Field(None, max_length=200, description="A model id from GET /v1/models "
                                 "(kind text-to-speech); optional when one is loaded.")
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="The text to say.")
    voice: Optional[str] = Field(None, max_length=200, description="A speaker of a multi-speaker model "
                                 "(GET /v1/models: voices); ignored by single-speaker models (alloy ...).")
    response_format: str = Field("wav", max_length=20, description="wav, pcm (16-bit LE mono at the "
                                 "X-Sample-Rate header's rate) or flac; mp3, opus and aac are not available.")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="Speaking rate: 2 is twice as fast.")
    stream_format: Literal["audio", "sse"] = Field("audio", description="audio: the file's bytes as they "
                                                   "are made; sse: server-sent speech.audio.delta events.")
    pitch: float = Field(0.0, ge=-12.0, le=12.0, description="genforge: pitch shift in semitones.")


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def add_speech_routes(app: FastAPI, state: dict, settings: Settings) -> None:
    @app.post("/v1/audio/speech", tags=["audio"], response_class=StreamingResponse, description=(
        "OpenAI's text to speech: the audio of `input`, streamed sentence by sentence (first audio after "
        "the first sentence). Formats: " + ", ".join(AUDIO_FORMATS) + ". Needs the `generate` scope."))
    async def speech(body: SpeechRequest, request: Request, key: KeyRecord = Depends(require("generate"))):
        synth: SpeechSynthesizer = state["models"].get(body.model, SpeechSynthesizer.kind)
        fmt = body.response_format
        if fmt not in AUDIO_FORMATS:
            raise _ApiError(400, f"response_format {fmt!r} is not available; choose one of: "
                                 f"{', '.join(AUDIO_FORMATS)}", "unsupported_value", "response_format")
        if body.stream_format == "sse" and fmt != "pcm" and "response_format" in body.model_fields_set:
            raise _ApiError(400, "stream_format sse sends base64 PCM: use response_format pcm or leave it out",
                            "unsupported_value", "response_format")
        _note(request, settings, model=synth.id, prompt=body.input, format=fmt, stream=body.stream_format)
        param = "voice" if body.voice and synth.pipe.speakers and body.voice not in synth.pipe.speakers \
            else "input"
        with _param(param):  # phonemizing takes espeak a moment: off the event loop
            sentences = await run_in_threadpool(synth.prepare, body.input, body.speed, body.pitch, body.voice)
        sr = synth.sample_rate
        headers = {"X-Sample-Rate": str(sr), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

        async def audio() -> AsyncIterator[bytes]:
            if fmt == "flac":
                parts = [w async for w in synth.stream(sentences)]
                yield await run_in_threadpool(flac_bytes, np.concatenate(parts), sr)
                return
            if fmt == "wav":
                yield wav_header(sr)
            async for wav in synth.stream(sentences):
                yield pcm16(wav)

        async def events() -> AsyncIterator[str]:
            samples = 0
            try:
                async for wav in synth.stream(sentences):
                    samples += len(wav)
                    yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(pcm16(wav)).decode()})
                yield _sse({"type": "speech.audio.done", "usage": {
                    "input_tokens": sum(len(s.ids) for s in sentences), "output_tokens": samples,
                    "total_tokens": sum(len(s.ids) for s in sentences) + samples}})
            except Exception as e:  # noqa: BLE001 - the status was sent: the error goes in the stream
                yield _sse(error_body(f"synthesis failed: {type(e).__name__}", "synthesis_failed", "server_error"))

        if body.stream_format == "sse":
            return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
        return StreamingResponse(audio(), media_type=MEDIA_TYPES[fmt], headers=headers)
