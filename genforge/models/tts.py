"""FastSpeech 2 style acoustic model: phonemes -> log-mel frames, with durations learned by an aligner.

Encoder (transformer blocks with conv feed-forward) -> per-phoneme duration, pitch and energy
predictors (FastPitch: prosody is predicted per phoneme and embedded back by a 1-D conv) -> length
regulator (each phoneme's vector repeated for its frames) -> decoder blocks -> 80 mel bins.

Durations are not given by any external tool: an aligner (RAD-TTS, "One TTS alignment to rule them
all") scores every (frame, phoneme) pair by the distance of a small text encoding and a small mel
encoding; its soft alignment is trained with the forward-sum (CTC) loss, and monotonic alignment
search over it gives the hard durations that train the duration predictor and regulate the decoder.
Pitch is log-F0 normalised by the training data's statistics (buffers, so they travel with the
weights); ``pitch_shift`` semitones are added in that log domain at inference.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..audio.align import batch_mas
from ..registry import register_model


def sinusoids(length: int, dim: int, device=None) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out


def lengths_mask(lengths: torch.Tensor, max_len: Optional[int] = None) -> torch.Tensor:
    """(B, max_len) True at real positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None] < lengths[:, None]


def length_regulate(x: torch.Tensor, durations: torch.Tensor, max_len: Optional[int] = None) -> torch.Tensor:
    """Repeat each phoneme vector of ``x`` (B, N, C) for its integer ``durations`` (B, N) frames:
    (B, max frames, C), zero-padded."""
    rows = [torch.repeat_interleave(xb, db.clamp(min=0), dim=0) for xb, db in zip(x, durations)]
    T = max_len if max_len is not None else max(1, max(len(r) for r in rows))
    out = x.new_zeros(len(rows), T, x.shape[-1])
    for b, r in enumerate(rows):
        out[b, :min(T, len(r))] = r[:T]
    return out


class FFTBlock(nn.Module):
    """Pre-norm self-attention + a conv feed-forward (kernel ``kernel`` then 1), FastSpeech's block."""

    def __init__(self, dim: int, heads: int, ffn: int, kernel: int, dropout: float):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.conv1 = nn.Conv1d(dim, ffn, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(ffn, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):  # mask (B, T) True at real positions
        h = self.n1(x)
        a, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)
        x = (x + self.drop(a)) * mask[..., None]
        h = self.n2(x).transpose(1, 2)
        h = self.conv2(F.relu(self.conv1(h))).transpose(1, 2)
        return (x + self.drop(h)) * mask[..., None]


class VariancePredictor(nn.Module):
    """Two conv layers with LayerNorm -> one value per position (FastSpeech 2)."""

    def __init__(self, dim: int, hidden: int, kernel: int = 3, dropout: float = 0.1):
        super().__init__()
        self.c1 = nn.Conv1d(dim, hidden, kernel, padding=kernel // 2)
        self.c2 = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2)
        self.n1, self.n2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        h = self.drop(self.n1(F.relu(self.c1(x.transpose(1, 2))).transpose(1, 2)))
        h = self.drop(self.n2(F.relu(self.c2(h.transpose(1, 2))).transpose(1, 2)))
        return self.out(h)[..., 0] * mask


class Aligner(nn.Module):
    """log P(phoneme | frame) from the distance of conv encodings of phoneme embeddings and mels."""

    def __init__(self, dim: int, n_mels: int, attn_dim: int = 80, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature
        self.key = nn.Sequential(nn.Conv1d(dim, 2 * dim, 3, padding=1), nn.ReLU(), nn.Conv1d(2 * dim, attn_dim, 1))
        self.query = nn.Sequential(nn.Conv1d(n_mels, 2 * n_mels, 3, padding=1), nn.ReLU(),
                                   nn.Conv1d(2 * n_mels, n_mels, 1), nn.ReLU(), nn.Conv1d(n_mels, attn_dim, 1))

    def forward(self, emb, mel, text_mask, prior=None):
        """emb (B, N, dim), mel (B, n_mels, T) -> log-probabilities (B, N, T) over phonemes per frame."""
        k = self.key(emb.transpose(1, 2))  # (B, A, N)
        q = self.query(mel)  # (B, A, T)
        # |q - k|^2 expanded: a (B, A, N, T) difference tensor would be hundreds of MB per batch
        dist = (k.pow(2).sum(1)[..., None] + q.pow(2).sum(1)[:, None] - 2 * k.transpose(1, 2) @ q).clamp(min=0)
        logits = -self.temperature * dist
        logits = logits.masked_fill(~text_mask[..., None], -1e4)
        logp = F.log_softmax(logits, dim=1)
        if prior is not None:
            logp = F.log_softmax(logp + prior, dim=1).masked_fill(~text_mask[..., None], -1e4)
        return logp


@register_model("fastspeech")
class FastSpeech(nn.Module):
    def __init__(self, vocab_size: int = 64, dim: int = 192, heads: int = 2, enc_layers: int = 4,
                 dec_layers: int = 4, ffn: int = 384, kernel: int = 3, dropout: float = 0.1,
                 n_mels: int = 80, num_speakers: int = 0, predictor_hidden: int = 192,
                 max_duration: int = 50, align_temperature: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must split into heads={heads} equal heads")
        if vocab_size < 5:
            raise ValueError(f"vocab_size={vocab_size} leaves no phonemes beside the 4 special ids")
        self.vocab_size, self.n_mels, self.num_speakers = vocab_size, n_mels, num_speakers
        self.max_duration = max_duration
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.encoder = nn.ModuleList(FFTBlock(dim, heads, ffn, kernel, dropout) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(FFTBlock(dim, heads, ffn, kernel, dropout) for _ in range(dec_layers))
        self.speaker = nn.Embedding(num_speakers, dim) if num_speakers > 1 else None
        self.duration = VariancePredictor(dim, predictor_hidden, dropout=dropout)
        self.pitch = VariancePredictor(dim, predictor_hidden, dropout=dropout)
        self.energy = VariancePredictor(dim, predictor_hidden, dropout=dropout)
        self.pitch_embed = nn.Conv1d(1, dim, 3, padding=1)
        self.energy_embed = nn.Conv1d(1, dim, 3, padding=1)
        self.to_mel = nn.Linear(dim, n_mels)
        # the mels reach the aligner normalised (unit variance), so its distances are ~1000x smaller
        # than RAD-TTS's on raw log-mels, and so its temperature is larger than their 0.0005
        self.aligner = Aligner(dim, n_mels, temperature=align_temperature)
        # data statistics for (de)normalising the prosody targets, filled by the tts task
        self.register_buffer("pitch_stats", torch.tensor([5.0, 0.25]))  # mean, std of voiced log F0
        self.register_buffer("energy_stats", torch.tensor([0.0, 1.0]))  # mean, std of frame mean log-mel
        self.register_buffer("mel_stats", torch.tensor([-5.0, 2.0]))  # mean, std of log-mel values

    def encode(self, ids, speaker=None):
        mask = ids != 0
        emb = self.embed(ids)
        x = emb + sinusoids(ids.shape[1], emb.shape[-1], ids.device)[None]
        for blk in self.encoder:
            x = blk(x, mask)
        if self.speaker is not None:
            sp = speaker if speaker is not None else torch.zeros(len(ids), dtype=torch.long, device=ids.device)
            x = x + self.speaker(sp)[:, None]
        return x, emb, mask

    def _prosody(self, x, pitch, energy, mask):
        return x + (self.pitch_embed(pitch[:, None]) + self.energy_embed(energy[:, None])).transpose(1, 2) \
            * mask[..., None]

    def decode(self, h, mel_mask):
        h = h + sinusoids(h.shape[1], h.shape[-1], h.device)[None] * mel_mask[..., None]
        for blk in self.decoder:
            h = blk(h, mel_mask)
        mean, std = self.mel_stats
        return (self.to_mel(h) * std + mean).transpose(1, 2) * mel_mask[:, None]  # (B, n_mels, T)

    def forward(self, ids, mel, mel_lens, pitch_frames=None, energy_frames=None, speaker=None, prior=None):
        """Teacher-forced pass for training. ids (B, N) (0 = pad), mel (B, n_mels, T) with lengths,
        frame-level normalised pitch/energy (B, T) (pitch 0 where unvoiced). Returns a dict of
        predictions and targets for the task's losses."""
        from ..audio.align import phoneme_average  # the training-only half of the alignment helpers

        x, emb, mask = self.encode(ids, speaker)
        mel_mask = lengths_mask(mel_lens, mel.shape[-1])
        logp = self.aligner(emb, (mel - self.mel_stats[0]) / self.mel_stats[1], mask, prior)
        logp = logp.masked_fill(~mel_mask[:, None], 0.0)
        durations = batch_mas(logp, mask.sum(1), mel_lens)
        pitch = phoneme_average(pitch_frames, durations, voiced_only=True) if pitch_frames is not None \
            else torch.zeros_like(durations, dtype=x.dtype)
        energy = phoneme_average(energy_frames, durations) if energy_frames is not None \
            else torch.zeros_like(durations, dtype=x.dtype)
        log_dur = self.duration(x, mask)
        pitch_pred, energy_pred = self.pitch(x, mask), self.energy(x, mask)
        h = length_regulate(self._prosody(x, pitch, energy, mask), durations, mel.shape[-1])
        mel_pred = self.decode(h, mel_mask)
        return {"mel": mel_pred, "mel_mask": mel_mask, "logp": logp, "durations": durations, "mask": mask,
                "log_dur": log_dur, "pitch_pred": pitch_pred, "pitch": pitch, "energy_pred": energy_pred,
                "energy": energy}

    @torch.no_grad()
    def infer(self, ids, rate: float = 1.0, pitch_shift: float = 0.0, speaker=None):
        """ids (B, N) -> (mel (B, n_mels, T), frames per item (B,)). ``rate`` > 1 speaks faster
        (durations divided by it); ``pitch_shift`` semitones raise the predicted F0."""
        x, _, mask = self.encode(ids, speaker)
        dur = torch.round(torch.exp(self.duration(x, mask)) - 1).clamp(min=1, max=self.max_duration)
        dur = torch.round(dur / rate).clamp(min=1).long() * mask
        pitch = self.pitch(x, mask)
        if pitch_shift:
            pitch = pitch + (pitch_shift * math.log(2) / 12 / self.pitch_stats[1]) * mask
        h = self._prosody(x, pitch, self.energy(x, mask), mask)
        lens = dur.sum(1)
        h = length_regulate(h, dur, int(lens.max()))
        return self.decode(h, lengths_mask(lens, h.shape[1])), lens
