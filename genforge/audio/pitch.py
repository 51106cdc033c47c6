"""Frame-level F0 (YIN) on the frames of ``MelConfig``, the acoustic model's pitch target.

YIN's cumulative-mean-normalised difference is computed from each frame's autocorrelation (one FFT
for all frames), so a minute of audio takes a few milliseconds. Frames are centred exactly as
``log_mel`` centres them (reflect padding, ``n_fft`` window, ``hop_length`` hop), so frame i of the F0
track sits on frame i of the mel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import MelConfig


def yin_f0(wav: torch.Tensor, cfg: MelConfig = MelConfig(), fmin: float = 60.0, fmax: float = 500.0,
           threshold: float = 0.2, silence_db: float = -50.0) -> torch.Tensor:
    """F0 in Hz per mel frame of ``wav`` ((samples,) float), 0 where the frame is unvoiced: no lag of
    the normalised difference falls below ``threshold``, or the frame is ``silence_db`` below full scale."""
    if wav.dim() != 1:
        raise ValueError(f"yin_f0 takes one waveform (samples,), got shape {tuple(wav.shape)}")
    x = wav.float()
    win = cfg.n_fft
    pad = win // 2
    if x.numel() <= pad:  # reflect padding needs more samples than it pads
        x = F.pad(x, (0, pad + 1 - x.numel()))
    x = F.pad(x[None, None], (pad, pad), mode="reflect")[0, 0]
    n_frames = cfg.frames(wav.numel())
    frames = x.unfold(0, win, cfg.hop_length)[:n_frames]  # (F, win)
    frames = frames - frames.mean(dim=1, keepdim=True)
    max_lag = min(int(cfg.sample_rate / fmin), win // 2)
    min_lag = max(2, int(cfg.sample_rate / fmax))
    # difference d(tau) = sum (x_j - x_{j+tau})^2 over the first half of the window: energy terms
    # from cumulative sums, the cross term from the autocorrelation (one FFT)
    half = win - max_lag
    spec = torch.fft.rfft(frames, n=2 * win)
    head = torch.fft.rfft(frames[:, :half], n=2 * win)
    cross = torch.fft.irfft(head.conj() * spec, n=2 * win)[:, :max_lag + 1]
    sq = frames.pow(2)
    csum = torch.cat([torch.zeros(len(frames), 1), sq.cumsum(1)], dim=1)
    lags = torch.arange(max_lag + 1)
    e0 = csum[:, half:half + 1]
    e_tau = csum[:, lags + half] - csum[:, lags]
    d = (e0 + e_tau - 2 * cross).clamp(min=0)
    cum = d[:, 1:].cumsum(1)
    cmnd = torch.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] * lags[1:] / cum.clamp(min=1e-8)
    search = cmnd[:, min_lag:]
    below = search < threshold
    voiced = below.any(dim=1)
    first = below.float().argmax(dim=1)
    # from the first dip under the threshold, walk to its bottom (within half an octave)
    span = max(2, min_lag // 2)
    idx = (first[:, None] + torch.arange(span)[None]).clamp(max=search.shape[1] - 1)
    best = idx.gather(1, search.gather(1, idx).argmin(dim=1, keepdim=True))[:, 0]
    tau = (best + min_lag).float()
    # parabolic interpolation around the minimum for a sub-sample lag
    i = (best + min_lag).clamp(1, cmnd.shape[1] - 2)
    a, b, c = (cmnd.gather(1, (i + o)[:, None])[:, 0] for o in (-1, 0, 1))
    denom = a - 2 * b + c
    shift = torch.where(denom.abs() > 1e-8, 0.5 * (a - c) / denom, torch.zeros_like(denom)).clamp(-1, 1)
    tau = tau + shift
    rms_db = 10 * torch.log10(frames.pow(2).mean(dim=1).clamp(min=1e-12))
    voiced = voiced & (rms_db > silence_db)
    return torch.where(voiced, cfg.sample_rate / tau, torch.zeros_like(tau))
