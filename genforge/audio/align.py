"""Alignment of phonemes to mel frames: monotonic alignment search (Glow-TTS), the beta-binomial
prior that keeps a young aligner near the diagonal (RAD-TTS), and per-phoneme averages of frame
features (pitch, energy) once durations are known.

MAS is a dynamic programme over (phonemes x frames); it runs in numpy on the CPU, one column of
frames at a time over every phoneme at once, so a batch of 16 ten-second utterances takes tens of ms.
"""
from __future__ import annotations

import numpy as np
import torch


def mas(logp: np.ndarray) -> np.ndarray:
    """The monotonic path through ``logp`` ((phonemes, frames); frames >= phonemes) with the largest
    total: frame 0 on phoneme 0, the last frame on the last phoneme, each next frame on the same
    phoneme or the next one. Returns the durations (frames per phoneme, each >= 1, sum = frames)."""
    n, t = logp.shape
    if t < n:
        raise ValueError(f"cannot align {n} phonemes to {t} frames: every phoneme needs a frame")
    neg = -np.inf
    q = np.full((n, t), neg, dtype=np.float64)
    q[0, 0] = logp[0, 0]
    for j in range(1, t):
        prev = q[:, j - 1]
        step = np.concatenate([[neg], prev[:-1]])  # arrived from the phoneme before
        q[:, j] = np.maximum(prev, step) + logp[:, j]
    durations = np.zeros(n, dtype=np.int64)
    i = n - 1
    for j in range(t - 1, -1, -1):
        durations[i] += 1
        # ties stay on the same phoneme; phoneme i cannot start later than frame i
        if i > 0 and (i == j or q[i - 1, j - 1] > q[i, j - 1]):
            i -= 1
    return durations


def batch_mas(logp: torch.Tensor, text_lens: torch.Tensor, mel_lens: torch.Tensor) -> torch.Tensor:
    """``mas`` per item of ``logp`` (B, phonemes, frames): durations (B, phonemes), 0 past each item's
    length."""
    lp = logp.detach().float().cpu().numpy()
    out = torch.zeros(lp.shape[0], lp.shape[1], dtype=torch.long)
    for b, (n, t) in enumerate(zip(text_lens.tolist(), mel_lens.tolist())):
        out[b, :n] = torch.from_numpy(mas(lp[b, :n, :t]))
    return out.to(logp.device)


def beta_binomial_prior(n_text: int, n_mel: int, scale: float = 1.0) -> torch.Tensor:
    """log P(phoneme | frame) (n_text, n_mel) that puts frame j near phoneme j * n_text / n_mel: the
    beta-binomial pmf of k = 0..n_text-1 with a = scale * j, b = scale * (n_mel + 1 - j)."""
    k = torch.arange(n_text, dtype=torch.float64)
    j = torch.arange(1, n_mel + 1, dtype=torch.float64)
    a, b, n = scale * j, scale * (n_mel + 1 - j), n_text - 1
    lg = torch.lgamma
    # log C(n, k) + log B(k + a, n - k + b) - log B(a, b); since a + b is the same for every frame,
    # only two lgammas are (n_text, n_mel) arrays: this runs once per utterance per step
    lchoose = lg(torch.tensor(n + 1.0)) - lg(k + 1) - lg(n - k + 1)
    row = lg(a + b) - lg(a) - lg(b) - lg(torch.tensor(n + scale * (n_mel + 1.0)))
    grid = lg(k[:, None] + a[None]) + lg(n - k[:, None] + b[None])
    return (lchoose[:, None] + grid + row[None]).float()


def phoneme_average(values: torch.Tensor, durations: torch.Tensor, voiced_only: bool = False) -> torch.Tensor:
    """Mean of frame ``values`` (B, frames) over each phoneme's frames (durations (B, phonemes)).
    ``voiced_only``: frames where the value is 0 are left out (unvoiced F0); a phoneme without a
    voiced frame gets 0."""
    B, n = durations.shape
    ends = durations.cumsum(1)
    frame = torch.arange(values.shape[1], device=values.device)
    # (B, phonemes, frames) membership; small enough for utterance-length inputs
    member = (frame[None, None] < ends[..., None]) & (frame[None, None] >= (ends - durations)[..., None])
    weight = member.float()
    if voiced_only:
        weight = weight * (values != 0).float()[:, None]
    total = (weight * values[:, None]).sum(-1)
    count = weight.sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
