"""What the server serves for speech: an acoustic run (with its vocoder) as a text-to-speech model.

A request's text is phonemized up front (every bad input is refused before any audio is sent), then
each sentence is one item through the model's queue: concurrent requests take turns sentence by
sentence, so a long text cannot hold the model while a short one waits, and a streamed response's
first chunk leaves after the first sentence. A sentence's audio equals ``pipe.speak_ids``'s.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import AsyncIterator, Optional, Sequence

import numpy as np
import torch

from ..errors import GenforgeError
from ..pipelines.speech import GAP_SECONDS, SpeechPipeline, check_controls
from .models import ServedModel, serves

#: what /v1/audio/speech can send: streamable WAV (16-bit) and raw 16-bit PCM, and FLAC (sent whole)
AUDIO_FORMATS = ("wav", "pcm", "flac")
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}


def pcm16(wav: np.ndarray) -> bytes:
    return (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int = 0xFFFFFFFF - 36) -> bytes:
    """A 16-bit mono WAV header; the default sizes mean "unknown length", as streamed WAVs carry
    (players read to the end of the stream)."""
    riff = min(0xFFFFFFFF, data_bytes + 36)
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
                                                                          sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


def flac_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wav, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@dataclass
class Sentence:
    ids: list[int]
    rate: float
    pitch_shift: float
    speaker: Optional[str]


@serves(SpeechPipeline)
class SpeechSynthesizer(ServedModel):
    kind = "text-to-speech"
    pipe: SpeechPipeline

    @property
    def sample_rate(self) -> int:
        return self.pipe.sample_rate

    def details(self) -> dict:
        return {"task": "tts", "architecture": self.pipe.cfg.model.name, "vocoder": self.pipe.vocoder_name,
                "sample_rate": self.sample_rate, "voices": self.pipe.speakers, "formats": list(AUDIO_FORMATS)}

    def voice(self, voice: Optional[str]) -> Optional[str]:
        """A multi-speaker voice's speaker named by ``voice``; OpenAI's voice names (alloy, ...) and
        anything else are ignored by a single-speaker voice, which has one way to speak."""
        if not self.pipe.speakers or not voice:
            return None
        if voice not in self.pipe.speakers:
            raise GenforgeError(f"unknown voice {voice!r}; {self.id} speaks as: {', '.join(self.pipe.speakers)}")
        return voice

    def prepare(self, text: str, rate: float = 1.0, pitch_shift: float = 0.0,
                voice: Optional[str] = None) -> list[Sentence]:
        """Check the request and phonemize its text: one item per sentence."""
        check_controls(rate, pitch_shift)
        speaker = self.voice(voice)
        return [Sentence(ids, float(rate), float(pitch_shift), speaker) for ids in self.pipe.ids(text)]

    @torch.no_grad()
    def run_batch(self, items: Sequence[Sentence]) -> list[np.ndarray]:
        with self.forward_lock:
            return [next(self.pipe.speak_ids([s.ids], s.rate, s.pitch_shift, s.speaker)) for s in items]

    async def stream(self, sentences: Sequence[Sentence]) -> AsyncIterator[np.ndarray]:
        """float32 audio per sentence, each followed (but the last) by the pipeline's pause."""
        gap = np.zeros(int(GAP_SECONDS * self.sample_rate), dtype=np.float32)
        for i, s in enumerate(sentences):
            wav = await self.batcher.submit(s, 1, None)
            yield np.concatenate([gap, wav]) if i else wav
