"""Speech from an acoustic (``tts``) run dir: ``pipe(text) -> (float32 wav, sample_rate)`` and
``pipe.stream(text)``, which yields the audio sentence by sentence (the first chunk is ready after one
sentence's synthesis, not the whole text's).

Which vocoder turns the mels into audio, in order: the ``vocoder=`` argument of ``load_speech`` /
``set_vocoder`` (a vocoder run dir; None for the default), else the acoustic run's
``task_params.vocoder`` (absolute, or relative to the acoustic run dir), else Griffin-Lim (no
training, audibly phasey: the floor a trained vocoder must beat). A vocoder run dir loaded alone gives
a ``VocoderPipeline`` (mel -> wav).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..audio.features import MelConfig
from ..errors import GenforgeError
from ..models.vocoder import griffin_lim
from ..tasks.tts import load_inventory, load_speakers
from . import Pipeline, load_model, resolve_run_dir

MIN_RATE, MAX_RATE = 0.25, 4.0
MAX_SHIFT = 12.0
#: silence between sentences when the whole text is returned at once, as a reader pauses
GAP_SECONDS = 0.15
#: the vocoder name that asks for Griffin-Lim even when the acoustic run names a trained vocoder
GRIFFIN_LIM = "griffin-lim"


class VocoderPipeline(Pipeline):
    """mel (n_mels, T) natural-log magnitudes -> float32 numpy waveform."""

    sample_rate = MelConfig().sample_rate

    @torch.no_grad()
    def __call__(self, mel) -> np.ndarray:
        x = torch.as_tensor(mel, dtype=torch.float32, device=self.device)
        if x.dim() != 2 or x.shape[0] != self.model.n_mels:
            raise GenforgeError(f"the vocoder takes a log-mel of shape ({self.model.n_mels}, frames), "
                                f"got {tuple(x.shape)}")
        return self.model(x[None])[0].cpu().numpy().astype(np.float32)


def check_controls(rate, pitch_shift) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not MIN_RATE <= rate <= MAX_RATE:
        raise GenforgeError(f"rate (speed) must be a number from {MIN_RATE} to {MAX_RATE}, got {rate!r}")
    if isinstance(pitch_shift, bool) or not isinstance(pitch_shift, (int, float)) \
            or not -MAX_SHIFT <= pitch_shift <= MAX_SHIFT:
        raise GenforgeError(f"pitch shift must be from {-MAX_SHIFT:g} to {MAX_SHIFT:g} semitones, "
                            f"got {pitch_shift!r}")


class SpeechPipeline(Pipeline):
    sample_rate = MelConfig().sample_rate

    def __init__(self, cfg, model, run_dir, device):
        super().__init__(cfg, model, run_dir, device)
        self.inventory = load_inventory(run_dir)
        self.speakers = load_speakers(run_dir)
        # resolved on first use, so ``set_vocoder`` can replace a run's named vocoder that is missing
        self._vocoder: Optional[VocoderPipeline] = None
        self._vocoder_set = False

    @property
    def vocoder(self) -> Optional[VocoderPipeline]:
        if not self._vocoder_set:
            self.set_vocoder(None)
        return self._vocoder

    # ---- vocoder ----------------------------------------------------------------------------
    def set_vocoder(self, path: Optional[str | Path]) -> None:
        """Use the vocoder run dir ``path``; None: the run's ``task_params.vocoder``, else Griffin-Lim;
        ``"griffin-lim"``: Griffin-Lim whatever the run names."""
        if str(path) == GRIFFIN_LIM:
            self._vocoder, self._vocoder_set = None, True
            return
        if path is None:
            named = self.cfg.task_params.get("vocoder")
            if not named:
                self._vocoder, self._vocoder_set = None, True
                return
            p = Path(named).expanduser()
            path = p if p.is_absolute() else (Path(self.run_dir) / p).resolve()  # no "voice/../vocoder"
            if not path.is_dir():
                raise GenforgeError(f"{self.run_dir} names vocoder {named!r} (task_params.vocoder), but "
                                    f"{path} does not exist; train it, or give another vocoder (--vocoder RUN_DIR, or "
                                    f"{GRIFFIN_LIM})")
        vdir = resolve_run_dir(path)
        cfg, model = load_model(vdir, self.device)
        if cfg.task != "vocoder":
            raise GenforgeError(f"{vdir} is a {cfg.task!r} run, not a vocoder; give a run dir trained with "
                                "task: vocoder")
        if getattr(model, "discriminators", None) is not None:
            model.discriminators = None  # training-only weights: no memory for them at inference
        self._vocoder, self._vocoder_set = VocoderPipeline(cfg, model, vdir, self.device), True

    @property
    def vocoder_name(self) -> str:
        return str(self.vocoder.run_dir) if self.vocoder is not None else GRIFFIN_LIM

    # ---- synthesis --------------------------------------------------------------------------
    def speaker_id(self, speaker) -> Optional[torch.Tensor]:
        if speaker is None or speaker == "":
            return None
        if isinstance(speaker, int) and not isinstance(speaker, bool) \
                and 0 <= speaker < max(1, len(self.speakers)):
            return torch.tensor([speaker], device=self.device) if self.speakers else None
        if isinstance(speaker, str) and speaker in self.speakers:
            return torch.tensor([self.speakers.index(speaker)], device=self.device)
        known = ", ".join(self.speakers) if self.speakers else "none: this voice has a single speaker"
        raise GenforgeError(f"unknown speaker {speaker!r}; speakers: {known}")

    @torch.no_grad()
    def mel(self, ids: Sequence[int], rate: float = 1.0, pitch_shift: float = 0.0, speaker=None) -> torch.Tensor:
        """Log-mel (n_mels, frames) of one sentence's phoneme ids."""
        check_controls(rate, pitch_shift)
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        mel, _ = self.model.infer(x, rate=float(rate), pitch_shift=float(pitch_shift),
                                  speaker=self.speaker_id(speaker))
        return mel[0]

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor) -> np.ndarray:
        if self.vocoder is not None:
            return self.vocoder(mel)
        return griffin_lim(mel.float().cpu()).numpy().astype(np.float32)

    def speak_ids(self, sentences: Sequence[Sequence[int]], rate: float = 1.0, pitch_shift: float = 0.0,
                  speaker=None) -> Iterator[np.ndarray]:
        """Audio per sentence of phoneme ids (the front end's ``text_to_ids`` output)."""
        check_controls(rate, pitch_shift)
        self.speaker_id(speaker)  # a bad speaker fails before any audio is made
        for ids in sentences:
            yield self.vocode(self.mel(ids, rate, pitch_shift, speaker))

    def ids(self, text: str) -> list[list[int]]:
        from ..speech.frontend import text_to_ids

        if not isinstance(text, str):
            raise GenforgeError(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise GenforgeError("the text is empty: give something to say")
        return text_to_ids(text, self.inventory)

    def stream(self, text: str, rate: float = 1.0, pitch_shift: float = 0.0, speaker=None) -> Iterator[np.ndarray]:
        """float32 audio chunks at ``sample_rate``, one per sentence, each as soon as it is made. Every
        argument is checked (and the text phonemized) when this is called, before any chunk is asked for."""
        check_controls(rate, pitch_shift)
        self.speaker_id(speaker)
        self.vocoder  # a missing vocoder fails now, not after the first sentence
        return self.speak_ids(self.ids(text), rate, pitch_shift, speaker)

    def __call__(self, text: str, rate: float = 1.0, pitch_shift: float = 0.0,
                 speaker=None) -> tuple[np.ndarray, int]:
        gap = np.zeros(int(GAP_SECONDS * self.sample_rate), dtype=np.float32)
        parts: list[np.ndarray] = []
        for chunk in self.stream(text, rate, pitch_shift, speaker):
            parts += [gap, chunk] if parts else [chunk]
        return np.concatenate(parts).astype(np.float32), self.sample_rate

    def __repr__(self) -> str:
        return f"SpeechPipeline({str(self.run_dir)!r}, vocoder={self.vocoder_name!r})"


def load_speech(model: str | Path, vocoder: Optional[str | Path] = None, device: str = "auto") -> SpeechPipeline:
    """The speech pipeline of acoustic run ``model``, with ``vocoder`` (a vocoder run dir) if given."""
    from . import load_pipeline

    pipe = load_pipeline(model, device=device)
    if not isinstance(pipe, SpeechPipeline):
        raise GenforgeError(f"{model} is a {pipe.cfg.task!r} run, not an acoustic model; give a run dir "
                            "trained with task: tts")
    if vocoder is not None:
        pipe.set_vocoder(vocoder)
    return pipe
