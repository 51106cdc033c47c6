"""A speech run judged on sentences it never trained on: speed, closeness to its teacher, intelligibility.

``evaluate_speech(pipe, texts, teacher=..., voices=[...])`` measures, on the same ``texts``:

- the real-time factor (synthesis seconds / audio seconds) of the acoustic model, the vocoder and both,
  one sentence at a time as ``pipe.stream`` speaks, after one warm-up sentence;
- the mel-cepstral distortion (``speech_metrics.mcd``: DTW-aligned, cepstra 1-13) of genforge's audio
  against the teacher's audio of the same sentence, the teacher's audio resampled and silence-trimmed
  as the corpus loader prepares training clips; and of the vocoder alone on the teacher's mels (copy
  synthesis: the vocoder's own share of the distortion);
- Whisper tiny.en WER of genforge's audio, of the teacher's and of each other voice (Piper joe, Festival
  HTS, espeak-ng), with their RTFs. Festival and espeak-ng run as one process per sentence, as the
  corpus builder calls them, so their RTF includes process start and voice loading.

``genforge eval speech`` and ``bench/tts.py`` both call it; bench adds ONNX timing, first-chunk latency
and a mel picture from the audio it hands back (``audio=``).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import GenforgeError
from ..audio.features import resample
from .speech_metrics import Transcriber, intelligibility, mcd, rtf

#: the voices that can speak a text besides genforge (the corpus builder's teachers)
VOICES = ("piper-joe", "festival", "espeak")
DEFAULT_TEACHER = "piper-joe"


@dataclass
class Spoken:
    """Audio of one voice, one float32 wave per text, and what making it cost."""

    waves: list
    sample_rate: int
    seconds: float  # synthesis time, summed over the texts (warm-up excluded)
    seconds_acoustic: float = 0.0  # genforge only: the acoustic model's share of ``seconds``
    seconds_vocoder: float = 0.0
    ids: list = field(default_factory=list)  # genforge only: the phoneme ids of every sentence spoken

    @property
    def audio_seconds(self) -> float:
        return sum(len(w) for w in self.waves) / self.sample_rate

    @property
    def rtf(self) -> float:
        return rtf(self.seconds, self.audio_seconds)


def check_voices(names: Sequence[str]) -> list[str]:
    """``names`` without blanks and repeats, every one a known voice; else a GenforgeError naming them."""
    out = []
    for name in (n.strip() for n in names):
        if name and name not in out:
            if name not in VOICES:
                raise GenforgeError(f"unknown voice {name!r}; choose from: {', '.join(VOICES)}")
            out.append(name)
    return out


def open_voice(name: str, threads: int = 1):
    """The corpus builder's ``Teacher`` for ``name``: a GenforgeError saying how to install it if missing."""
    from ..data.speech_corpus import Teacher

    check_voices([name])
    return Teacher(name, threads)


def recorded_teacher(cfg) -> Optional[str]:
    """The teacher that spoke the run's training corpus: ``teacher`` in ``metadata.json`` beside its
    ``data.path`` (written by ``genforge data speech``), else the run's ``notes.teacher``; None if neither."""
    names = []
    if cfg.data.path:
        try:
            names.append(json.loads((Path(cfg.data.path) / "metadata.json").read_text(encoding="utf-8"))
                         .get("teacher"))
        except (OSError, ValueError, AttributeError):
            pass
    names.append((cfg.notes or {}).get("teacher"))
    return next((n for n in names if isinstance(n, str) and n in VOICES), None)


def speak_voice(voice, texts: Sequence[str]) -> Spoken:
    """``voice`` (a ``Teacher``) speaking each text, timed after one warm-up sentence."""
    voice.speak("Warm up.")
    waves, seconds, sr = [], 0.0, None
    for text in texts:
        t0 = time.perf_counter()
        wav, rate = voice.speak(text)
        seconds += time.perf_counter() - t0
        if sr not in (None, rate):
            raise GenforgeError(f"voice {voice.name} changed its sample rate from {sr} to {rate} Hz")
        sr = rate
        waves.append(np.asarray(wav, dtype=np.float32))
    return Spoken(waves, int(sr), seconds)


def speak_genforge(pipe, texts: Sequence[str]) -> Spoken:
    """``pipe`` speaking each text sentence by sentence (as ``pipe.stream``, without the gaps ``pipe()``
    puts between sentences), the acoustic model and the vocoder timed apart."""
    from ..speech.frontend import text_to_ids

    list(pipe.stream("Warm up."))  # first calls allocate and pick kernels
    waves, ids_all, t_ac, t_voc = [], [], 0.0, 0.0
    for text in texts:
        sentences = text_to_ids(text, pipe.inventory)
        ids_all += sentences
        parts = []
        for ids in sentences:
            t0 = time.perf_counter()
            mel = pipe.mel(ids)
            t1 = time.perf_counter()
            parts.append(pipe.vocode(mel))
            t_voc += time.perf_counter() - t1
            t_ac += t1 - t0
        waves.append(np.concatenate(parts).astype(np.float32))
    return Spoken(waves, pipe.sample_rate, t_ac + t_voc, t_ac, t_voc, ids_all)


def as_training_clip(wav: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``wav`` prepared as the corpus loader prepares a clip: resampled to ``target`` (``resample``, as ``load_wav``), leading and trailing
    silence trimmed, clipped to [-1, 1]."""
    from ..data.speech import trim_silence

    return np.clip(trim_silence(resample(wav, rate, target)), -1.0, 1.0).astype(np.float32)


def _log_mel(wav: np.ndarray):
    import torch

    from ..audio.features import log_mel

    return log_mel(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)))


def mcd_waves(a: np.ndarray, b: np.ndarray) -> float:
    """MCD (dB) between two waves at the mel sample rate (22.05 kHz), through their log-mels."""
    return mcd(_log_mel(a), _log_mel(b))


def _mean(xs: list) -> Optional[float]:
    return round(float(np.mean(xs)), 3) if xs else None


def evaluate_speech(pipe, texts: Sequence[str], teacher: Union[str, object, None] = DEFAULT_TEACHER,
                    voices: Sequence = (), threads: int = 1, reference: Optional[Sequence] = None,
                    whisper: bool = True, transcriber=None, audio: Optional[dict] = None) -> dict:
    """JSON-able report of speech pipeline ``pipe`` on ``texts`` (module docstring).

    ``teacher``: the voice (name or ``Teacher``) whose audio of ``texts`` MCD compares against; or
    ``reference``: that audio already prepared (waves at ``pipe.sample_rate``, trimmed, one per text;
    e.g. a corpus's recorded test clips), and ``teacher`` then only names it. ``voices``: other voices
    (names or ``Teacher``s) to score on the same texts; one that cannot start gets ``{"error": ...}``.
    ``threads``: PyTorch threads during synthesis (restored after), Whisper's and Piper's threads.
    ``whisper=False`` leaves out every WER. ``audio``, when a dict, receives the audio behind the
    figures: ``genforge`` (a ``Spoken``), ``reference`` (the prepared teacher waves)."""
    import torch

    from ..audio.features import MelConfig

    texts = list(texts)
    if not texts:
        raise GenforgeError("no sentences to evaluate: give at least one text")
    if reference is not None and len(reference) != len(texts):
        raise GenforgeError(f"one reference clip per text is needed, got {len(reference)} for {len(texts)}")
    voice_objs = {}
    for v in voices:
        name = v if isinstance(v, str) else v.name
        try:
            voice_objs[name] = open_voice(v, threads) if isinstance(v, str) else v
        except GenforgeError as e:
            voice_objs[name] = e
    teacher_name = teacher if isinstance(teacher, str) or teacher is None else teacher.name
    if reference is None and teacher is None:
        raise GenforgeError("MCD needs the teacher's audio: give teacher= (a voice) or reference= (clips)")

    sr = pipe.sample_rate
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = speak_genforge(pipe, texts)
        teacher_spoken = None
        if reference is None:
            t = voice_objs.get(teacher_name)
            if isinstance(t, GenforgeError):
                raise t
            t = t or (open_voice(teacher, threads) if isinstance(teacher, str) else teacher)
            teacher_spoken = speak_voice(t, texts)
            reference = [as_training_clip(w, teacher_spoken.sample_rate, sr) for w in teacher_spoken.waves]
        mcds, copy_mcds, skipped = [], [], 0
        shortest = MelConfig().n_fft  # the STFT's reflection padding needs this much audio
        for wav, ref in zip(ours.waves, reference):
            ref = np.asarray(ref, dtype=np.float32)
            if min(len(ref), len(wav)) < shortest:  # e.g. a silent clip, trimmed to nothing
                skipped += 1
                continue
            ref_mel = _log_mel(ref)
            mcds.append(mcd(_log_mel(wav), ref_mel))
            copy_mcds.append(mcd(_log_mel(pipe.vocode(ref_mel)), ref_mel))
    finally:
        torch.set_num_threads(before)

    audio_s = ours.audio_seconds
    report = {
        "model": str(pipe.run_dir), "vocoder": pipe.vocoder_name, "teacher": teacher_name,
        "clips": len(texts), "threads": threads, "audio_seconds": round(audio_s, 2),
        "rtf": round(ours.rtf, 4), "rtf_acoustic": round(rtf(ours.seconds_acoustic, audio_s), 4),
        "rtf_vocoder": round(rtf(ours.seconds_vocoder, audio_s), 4),
        # the teacher's speed on the same sentences in this same process (over its untrimmed audio)
        "rtf_teacher": round(teacher_spoken.rtf, 4) if teacher_spoken is not None else None,
        "mcd_db": _mean(mcds), "mcd_copy_synthesis_db": _mean(copy_mcds),
        "acoustic_params_m": round(sum(p.numel() for p in pipe.model.parameters()) / 1e6, 3),
        "vocoder_params_m": round(sum(p.numel() for p in pipe.vocoder.model.parameters()) / 1e6, 3)
        if pipe.vocoder is not None else 0,
    }
    if skipped:
        report["mcd_skipped_silent_clips"] = skipped

    asr = None
    if whisper:
        asr = transcriber or Transcriber(threads)
        report["whisper_genforge"] = intelligibility(texts, ours.waves, sr, asr, synth_seconds=ours.seconds)
        # Whisper hears the teacher as it spoke (untrimmed), so the same result serves it as a voice too
        heard = teacher_spoken.waves if teacher_spoken is not None else list(reference)
        report["whisper_teacher"] = intelligibility(
            texts, heard, teacher_spoken.sample_rate if teacher_spoken is not None else sr, asr)
        report["wer"] = report["whisper_genforge"]["wer"]
        report["wer_teacher"] = report["whisper_teacher"]["wer"]

    if voice_objs:
        report["voices"] = {}
        for name, voice in voice_objs.items():
            if isinstance(voice, GenforgeError):
                report["voices"][name] = {"error": str(voice)}
                continue
            spoken = teacher_spoken if teacher_spoken is not None and name == teacher_name else \
                speak_voice(voice, texts)
            entry = {"sample_rate": spoken.sample_rate, "audio_seconds": round(spoken.audio_seconds, 2),
                     "rtf": round(spoken.rtf, 4), "rtf_includes_process_start": name != "piper-joe"}
            if asr is not None:
                if spoken is teacher_spoken:
                    wer_part = {**report["whisper_teacher"], "rtf": entry["rtf"]}
                else:
                    wer_part = intelligibility(texts, spoken.waves, spoken.sample_rate, asr,
                                               synth_seconds=spoken.seconds)
                entry = {**entry, **wer_part}
            report["voices"][name] = entry
        report["wer_voices"] = {k: v.get("wer") for k, v in report["voices"].items()}
        report["rtf_voices"] = {k: v.get("rtf") for k, v in report["voices"].items()}
    # other processes' load changes every RTF here several-fold on a small machine: recorded with them
    report["load_average_1min"] = round(os.getloadavg()[0], 2)
    if audio is not None:
        audio.update(genforge=ours, reference=list(reference))
    return report

