"""Acoustic model training (``tts``): phonemes -> log-mel, with learned alignment.

A step runs the aligner on the batch's phonemes and mels, takes monotonic-alignment-search durations
from it, and trains everything at once: mel L1 through the length-regulated decoder, the duration,
pitch and energy predictors against the per-phoneme targets those durations give, and the aligner
itself with the forward-sum (CTC) loss, guided early on by a beta-binomial diagonal prior.

The phoneme inventory is built from the training data and written to the run dir as phonemes.json
(after every check has passed, like the language model's tokenizer.json), so a resumed run and the
speech pipeline encode text exactly as training did. ``task_params.vocoder`` names the vocoder run
dir the speech pipeline should pair this voice with (absolute, or relative to this run dir).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ..audio.align import beta_binomial_prior
from ..audio.features import MelConfig
from ..audio.pitch import yin_f0
from ..errors import GenforgeError
from ..registry import register_task
from . import Task

PHONEMES_FILE = "phonemes.json"
SPEAKERS_FILE = "speakers.json"
#: log-mel value of silence (log_mel floors magnitudes at 1e-5): the padding of mel batches
MEL_FLOOR = math.log(1e-5)
#: examples whose statistics normalise pitch, energy and mel values
STATS_ITEMS = 128


def load_inventory(run_dir: Path):
    from ..speech.frontend import PhonemeInventory

    path = Path(run_dir) / PHONEMES_FILE
    if not path.is_file():
        raise GenforgeError(f"{run_dir} has no {PHONEMES_FILE}; it is not a complete tts run directory")
    return PhonemeInventory.load(path)


def load_speakers(run_dir: Path) -> list[str]:
    path = Path(run_dir) / SPEAKERS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


@register_task("tts")
class TTSTask(Task):
    models = ("fastspeech",)
    needs = ("phonemes", "mel")

    def __init__(self, cfg, data=None, run_dir=None, vocoder: Optional[str] = None, prior: bool = True,
                 duration_weight: float = 1.0, pitch_weight: float = 0.5, energy_weight: float = 0.5,
                 align_weight: float = 1.0, eval_items: int = 32):
        super().__init__(cfg, data, run_dir)
        if vocoder is not None and not isinstance(vocoder, str):
            raise GenforgeError(f"task_params.vocoder must be a vocoder run directory path, got {vocoder!r}")
        for name, w in (("duration_weight", duration_weight), ("pitch_weight", pitch_weight),
                        ("energy_weight", energy_weight), ("align_weight", align_weight)):
            if not isinstance(w, (int, float)) or w < 0:
                raise GenforgeError(f"task_params.{name} must be a number >= 0, got {w!r}")
        if isinstance(eval_items, bool) or not isinstance(eval_items, int) or eval_items < 0:
            raise GenforgeError(f"task_params.eval_items must be 0 (no evaluation) or more, got {eval_items!r}")
        self.prior, self.w = bool(prior), (duration_weight, pitch_weight, energy_weight, align_weight)
        self.held_out = None
        self.mel_cfg = MelConfig()
        # keyed by (id(dataset), index): the training and held-out sets share the caches
        self._f0: dict[tuple[int, int], torch.Tensor] = {}
        self._ids: dict[tuple[int, int], list[int]] = {}
        self.inventory, self.speakers = None, []
        if data is None:
            return
        from ..speech.frontend import PhonemeInventory

        fresh = run_dir is None or not (Path(run_dir) / PHONEMES_FILE).is_file()
        phonemes = list(data.column("phonemes"))
        self.inventory = PhonemeInventory.build(phonemes) if fresh else load_inventory(run_dir)
        if len(self.inventory) > self.model.vocab_size:
            raise GenforgeError(f"the data has {len(self.inventory)} phoneme ids but model.params.vocab_size="
                                f"{self.model.vocab_size}; set model.params.vocab_size={len(self.inventory)} or more")
        if data.has("speaker"):
            self.speakers = sorted(set(data.column("speaker"))) if fresh else load_speakers(run_dir)
            if len(self.speakers) > 1 and self.model.num_speakers < len(self.speakers):
                raise GenforgeError(f"the data has {len(self.speakers)} speakers but model.params.num_speakers="
                                    f"{self.model.num_speakers}; set it to {len(self.speakers)}")
        self._check(data, "training")
        if eval_items and cfg.data.val_fraction > 0:
            from ..data import load_dataset

            # loaded now, so a corpus too small to hold clips out fails before training, not after
            self.held_out = load_dataset(cfg.data.model_copy(update={"split": "test", "limit": eval_items}))
            self._check(self.held_out, "held-out")
        if fresh:
            self._set_stats(data)
            if run_dir is not None:
                Path(run_dir).mkdir(parents=True, exist_ok=True)
                self.inventory.save(Path(run_dir) / PHONEMES_FILE)
                if len(self.speakers) > 1:
                    (Path(run_dir) / SPEAKERS_FILE).write_text(json.dumps(self.speakers))

    def _check(self, data, which: str) -> None:
        mels = data.column("mel")
        for i in range(len(data)):
            n, t = len(self.ids(data, i)), int(mels[i].shape[-1])
            if mels[i].shape[0] != self.model.n_mels:
                raise GenforgeError(f"{which} example {i} has {mels[i].shape[0]} mel bins; model.params.n_mels="
                                    f"{self.model.n_mels}")
            if n > t:
                raise GenforgeError(f"{which} example {i} has {n} phoneme ids but only {t} mel frames: too "
                                    "short to align; remove it from the data")

    # ---- targets ----------------------------------------------------------------------------
    def ids(self, data, i: int) -> list[int]:
        key = (id(data), i)
        if key not in self._ids:
            self._ids[key] = list(self.inventory.encode(data.column("phonemes")[i]))
        return self._ids[key]

    def f0(self, data, i: int) -> Optional[torch.Tensor]:
        """Frame F0 of example ``i`` in Hz (0: unvoiced), computed once per example."""
        if not data.has("audio"):
            return None
        key = (id(data), i)
        if key not in self._f0:
            self._f0[key] = yin_f0(torch.as_tensor(data.column("audio")[i], dtype=torch.float32), self.mel_cfg)
        return self._f0[key]

    @torch.no_grad()
    def _set_stats(self, data) -> None:
        n = min(len(data), STATS_ITEMS)
        mels = [torch.as_tensor(data.column("mel")[i], dtype=torch.float32) for i in range(n)]
        values = torch.cat([m.flatten() for m in mels])
        energy = torch.cat([m.mean(0) for m in mels])
        self.model.mel_stats.copy_(torch.stack([values.mean(), values.std().clamp(min=1e-3)]))
        self.model.energy_stats.copy_(torch.stack([energy.mean(), energy.std().clamp(min=1e-3)]))
        if data.has("audio"):
            f0 = torch.cat([self.f0(data, i) for i in range(n)])
            voiced = torch.log(f0[f0 > 0])
            if len(voiced) > 1:
                self.model.pitch_stats.copy_(torch.stack([voiced.mean(), voiced.std().clamp(min=1e-3)]))

    def collate(self, data, idx, generator):
        idx = [int(i) for i in idx]
        ids = [self.ids(data, i) for i in idx]
        mels = [torch.as_tensor(data.column("mel")[i], dtype=torch.float32) for i in idx]
        N, T = max(map(len, ids)), max(m.shape[-1] for m in mels)
        batch = {"ids": torch.zeros(len(idx), N, dtype=torch.long),
                 "mel": torch.full((len(idx), mels[0].shape[0], T), MEL_FLOOR),
                 "mel_lens": torch.tensor([m.shape[-1] for m in mels]),
                 "energy": torch.zeros(len(idx), T)}
        e_mean, e_std = self.model.energy_stats.tolist()
        p_mean, p_std = self.model.pitch_stats.tolist()
        pitch = torch.zeros(len(idx), T) if data.has("audio") else None
        prior = torch.zeros(len(idx), N, T) if self.prior else None
        for b, (i, seq, m) in enumerate(zip(idx, ids, mels)):
            t = m.shape[-1]
            batch["ids"][b, :len(seq)] = torch.tensor(seq)
            batch["mel"][b, :, :t] = m
            batch["energy"][b, :t] = (m.mean(0) - e_mean) / e_std
            if pitch is not None:
                f0 = self.f0(data, i)[:t]
                pitch[b, :len(f0)] = torch.where(f0 > 0, (torch.log(f0.clamp(min=1e-3)) - p_mean) / p_std,
                                                 torch.zeros_like(f0))
            if prior is not None:
                prior[b, :len(seq), :t] = beta_binomial_prior(len(seq), t)
        if pitch is not None:
            batch["pitch"] = pitch
        if prior is not None:
            batch["prior"] = prior
        if len(self.speakers) > 1:
            names = data.column("speaker")
            batch["speaker"] = torch.tensor([self.speakers.index(names[i]) for i in idx])
        return batch

    # ---- the step -----------------------------------------------------------------------------
    def step(self, batch, optimize):
        out = self.nets["model"](batch["ids"], batch["mel"], batch["mel_lens"], batch.get("pitch"),
                                 batch["energy"], batch.get("speaker"), batch.get("prior"))
        losses = tts_losses(out, batch["mel"], batch["mel_lens"])
        wd, wp, we, wa = self.w
        loss = losses["mel_l1"] + wd * losses["dur"] + wp * losses["pitch"] + we * losses["energy"] \
            + wa * losses["align"]
        optimize("model", loss)
        return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}}

    @torch.no_grad()
    def evaluate(self, model):
        """On the held-out clips: the teacher-forced losses, and the length of free-running speech over
        the clip's (1.0: the predicted durations add up to the teacher's timing)."""
        if self.held_out is None or not len(self.held_out):
            return {}
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        sums: dict[str, float] = {}
        ratios = []
        try:
            for start in range(0, len(self.held_out), 8):
                idx = torch.arange(start, min(start + 8, len(self.held_out)))
                batch = {k: v.to(device) if torch.is_tensor(v) else v
                         for k, v in self.collate(self.held_out, idx, torch.Generator()).items()}
                out = model(batch["ids"], batch["mel"], batch["mel_lens"], batch.get("pitch"), batch["energy"],
                            batch.get("speaker"), batch.get("prior"))
                for k, v in tts_losses(out, batch["mel"], batch["mel_lens"]).items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
                _, frames = model.infer(batch["ids"], speaker=batch.get("speaker"))
                ratios += (frames.float() / batch["mel_lens"].float()).tolist()
        finally:
            model.train(was)
        n = len(self.held_out)
        return {**{f"val_{k}": v / n for k, v in sums.items()}, "val_length_ratio": sum(ratios) / len(ratios)}


def forward_sum_loss(logp: torch.Tensor, text_lens: torch.Tensor, mel_lens: torch.Tensor,
                     blank_logprob: float = -1.0) -> torch.Tensor:
    """CTC over the aligner's log P(phoneme | frame) (B, N, T): every monotonic path that visits each
    phoneme in order counts, so the aligner learns alignments without being told one (RAD-TTS)."""
    lp = F.pad(logp.transpose(1, 2), (1, 0), value=blank_logprob)  # (B, T, N + 1), blank first
    lp = F.log_softmax(lp.float(), dim=-1).transpose(0, 1)  # (T, B, N + 1)
    targets = torch.arange(1, logp.shape[1] + 1, device=logp.device).expand(len(text_lens), -1)
    return F.ctc_loss(lp, targets, mel_lens, text_lens, blank=0, zero_infinity=True)


def tts_losses(out: dict, mel: torch.Tensor, mel_lens: torch.Tensor) -> dict[str, torch.Tensor]:
    mask, mel_mask = out["mask"], out["mel_mask"]
    m = mask.float()
    frames = mel_mask[:, None].float().expand_as(mel)
    mel_l1 = ((out["mel"] - mel).abs() * frames).sum() / frames.sum()
    log_dur = torch.log(out["durations"].float() + 1)
    dur = (((out["log_dur"] - log_dur) ** 2) * m).sum() / m.sum()
    pitch = (((out["pitch_pred"] - out["pitch"]) ** 2) * m).sum() / m.sum()
    energy = (((out["energy_pred"] - out["energy"]) ** 2) * m).sum() / m.sum()
    align = forward_sum_loss(out["logp"], mask.sum(1), mel_lens)
    return {"mel_l1": mel_l1, "dur": dur, "pitch": pitch, "energy": energy, "align": align}
