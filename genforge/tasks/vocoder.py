"""Vocoder training (``vocoder``): log-mel -> waveform on random audio crops.

A batch is ``segment`` samples cut at random (seeded per step, so a resumed run cuts the same) from
each example's audio, and the mel is computed from the crop on the fly with the shared ``MelConfig``,
so the vocoder sees exactly the frames the acoustic model predicts. The generator learns from a
multi-resolution STFT loss plus a mel L1 and, when the model has its discriminators, hinge GAN and
feature-matching losses against them (Vocos' recipe, minus the multi-period discriminator).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..audio.features import MelConfig, log_mel
from ..errors import GenforgeError
from ..registry import register_task
from . import Task

#: (n_fft, hop) of the multi-resolution STFT loss: short windows for timing, long ones for pitch
RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))


def stft_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over ``RESOLUTIONS``."""
    total = fake.new_zeros(())
    for n_fft, hop in RESOLUTIONS:
        win = torch.hann_window(n_fft, device=fake.device)
        f, r = (torch.stft(x.float(), n_fft, hop, window=win, return_complex=True).abs().clamp(min=1e-7)
                for x in (fake, real))
        sc = torch.linalg.norm(r - f) / torch.linalg.norm(r).clamp(min=1e-7)
        total = total + sc + F.l1_loss(torch.log(f), torch.log(r))
    return total / len(RESOLUTIONS)


@register_task("vocoder")
class VocoderTask(Task):
    models = ("vocos",)
    needs = ("audio",)

    def __init__(self, cfg, data=None, run_dir=None, segment: int = 8192, mel_weight: float = 15.0,
                 adversarial: bool = True, fm_weight: float = 2.0):
        super().__init__(cfg, data, run_dir)
        self.mel_cfg = MelConfig()
        hop = self.mel_cfg.hop_length
        shortest = max(n for n, _ in RESOLUTIONS)  # the loss's longest window must fit in a crop
        if isinstance(segment, bool) or not isinstance(segment, int) or segment < shortest or segment % hop:
            raise GenforgeError(f"task_params.segment must be a multiple of {hop} samples of at least "
                                f"{shortest}, got {segment!r}")
        if adversarial and self.model.discriminators is None:
            raise GenforgeError("task_params.adversarial=true needs model.params.discriminator=true; set one "
                                "or the other")
        self.segment, self.mel_weight, self.fm_weight = segment, mel_weight, fm_weight
        self.adversarial = bool(adversarial)
        self.nets = {"g": self.model.generator}
        if self.adversarial:
            self.nets["d"] = self.model.discriminators
        if data is not None:
            rate = data.meta.get("sample_rate", self.mel_cfg.sample_rate)
            if rate != self.mel_cfg.sample_rate:
                raise GenforgeError(f"the audio is at {rate} Hz but the mel features assume "
                                    f"{self.mel_cfg.sample_rate} Hz; resample the data")

    def collate(self, data, idx, generator):
        audio = data.column("audio")
        crops = torch.zeros(len(idx), self.segment)
        for b, i in enumerate(idx.tolist() if torch.is_tensor(idx) else idx):
            wav = torch.as_tensor(audio[int(i)], dtype=torch.float32)
            if len(wav) > self.segment:
                start = int(torch.randint(len(wav) - self.segment + 1, (1,), generator=generator))
                wav = wav[start:start + self.segment]
            crops[b, :len(wav)] = wav
        return {"audio": crops}

    def step(self, batch, optimize):
        real = batch["audio"]
        mel = log_mel(real.float(), self.mel_cfg)
        fake = self.nets["g"](mel, real.shape[-1])
        out = {}
        if self.adversarial:
            d = self.nets["d"]
            loss_d = real.new_zeros(())
            for disc in d:
                s_real, _ = disc(real)
                s_fake, _ = disc(fake.detach())
                loss_d = loss_d + F.relu(1 - s_real).mean() + F.relu(1 + s_fake).mean()
            optimize("d", loss_d)
            out["loss_d"] = loss_d.detach()
        rec = stft_loss(fake, real)
        mel_l1 = F.l1_loss(log_mel(fake.float(), self.mel_cfg), mel)
        loss_g = rec + self.mel_weight * mel_l1
        if self.adversarial:
            adv, fm = real.new_zeros(()), real.new_zeros(())
            for disc in self.nets["d"]:
                s_fake, f_fake = disc(fake)
                with torch.no_grad():
                    _, f_real = disc(real)
                adv = adv + F.relu(1 - s_fake).mean()
                fm = fm + sum(F.l1_loss(a, b) for a, b in zip(f_fake, f_real)) / len(f_fake)
            loss_g = loss_g + adv + self.fm_weight * fm
            out.update(adv=adv.detach(), fm=fm.detach())
        optimize("g", loss_g)
        return {"loss": loss_g.detach(), "stft": rec.detach(), "mel_l1": mel_l1.detach(), **out}
