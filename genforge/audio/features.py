"""Log-mel spectrograms: the one audio feature every speech module agrees on.

The data layer caches these, the acoustic model predicts them and the vocoder turns them back into
waveforms, so all three must use the same analysis; ``MelConfig`` is that contract, and a run dir stores
it in its config so a voice is never paired with a vocoder trained on other frames. ``resample`` is the
one way audio changes rate here (corpus clips, teacher audio, Whisper's 16 kHz input).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch


def resample(wav: np.ndarray, rate: int, target: int) -> np.ndarray:
    """float32 ``wav`` from ``rate`` to ``target`` Hz with scipy's polyphase resampler; unchanged when
    the rates agree or there is nothing to resample."""
    wav = np.asarray(wav, dtype=np.float32)
    if int(rate) == int(target) or wav.size == 0:
        return wav
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    return resample_poly(wav, int(target) // g, int(rate) // g).astype(np.float32)


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "MelConfig":
        return cls(**(d or {}))

    def frames(self, samples: int) -> int:
        """Frames the centred STFT gives for ``samples`` samples."""
        return samples // self.hop_length + 1


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:  # Slaney's scale, as librosa's default
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), freqs)


@lru_cache(maxsize=8)
def mel_filterbank(cfg: MelConfig) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular Slaney-normalised filters."""
    n_freqs = cfg.n_fft // 2 + 1
    fft_freqs = torch.linspace(0, cfg.sample_rate / 2, n_freqs, dtype=torch.float64)
    mel_pts = torch.linspace(float(_hz_to_mel(torch.tensor(cfg.f_min, dtype=torch.float64))),
                             float(_hz_to_mel(torch.tensor(cfg.f_max, dtype=torch.float64))),
                             cfg.n_mels + 2, dtype=torch.float64)
    hz = _mel_to_hz(mel_pts)
    lower = (fft_freqs[None, :] - hz[:-2, None]) / (hz[1:-1, None] - hz[:-2, None])
    upper = (hz[2:, None] - fft_freqs[None, :]) / (hz[2:, None] - hz[1:-1, None])
    fb = torch.clamp(torch.minimum(lower, upper), min=0.0)
    fb *= (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return fb.float()


def log_mel(wav: torch.Tensor, cfg: MelConfig = MelConfig()) -> torch.Tensor:
    """Natural-log mel magnitudes of ``wav`` ((samples,) or (batch, samples), float in [-1, 1]):
    (n_mels, frames) or (batch, n_mels, frames), frames = samples // hop + 1, floored at log(1e-5)."""
    squeeze = wav.dim() == 1
    x = wav[None] if squeeze else wav
    window = torch.hann_window(cfg.win_length, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, cfg.n_fft, cfg.hop_length, cfg.win_length, window, center=True,
                      pad_mode="reflect", return_complex=True).abs()
    mel = mel_filterbank(cfg).to(x.device, x.dtype) @ spec
    out = torch.log(mel.clamp(min=1e-5))
    return out[0] if squeeze else out
