"""Tiny speech runs for the tts, speak and serving tests, trained once per test session.

The data is synthetic, made here: each "phoneme" (a letter of ``LETTERS``) is a tone of its own pitch
held for a few frames, so an utterance has real structure to align and a real F0 to track, and it
takes milliseconds to make. It is registered under a test-only dataset name.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

NAME = "speech_synth"
LETTERS = "abcdefgh"
SR, HOP = 22050, 256


def synth_examples(n: int, seed: int = 0):
    """``n`` utterances: (phoneme string, float32 audio, frames per phoneme). No letter follows itself,
    so every phoneme boundary is audible."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        chars = ""
        for _ in range(int(rng.integers(3, 7))):
            chars += str(rng.choice([c for c in LETTERS if not chars or c != chars[-1]]))
        frames = [int(rng.integers(3, 8)) for _ in chars]
        parts = []
        for c, k in zip(chars, frames):
            f0 = 110.0 + 30.0 * LETTERS.index(c)
            t = np.arange(k * HOP) / SR
            parts.append(0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(4 * np.pi * f0 * t))
        out.append((chars, np.concatenate(parts).astype(np.float32), frames))
    return out


def _dataset(cfg):
    import torch

    from genforge.audio.features import log_mel
    from genforge.data import Examples

    items = synth_examples(min(cfg.num_items, cfg.limit or cfg.num_items), cfg.seed)
    audio = [torch.from_numpy(a) for _, a, _ in items]
    return Examples(text=[p for p, _, _ in items], phonemes=[p for p, _, _ in items], audio=audio,
                    mel=[log_mel(a) for a in audio], meta={"sample_rate": SR})


def dataset_name() -> str:
    from genforge.registry import DATASETS, register_dataset

    if NAME not in DATASETS:
        register_dataset(NAME)(_dataset)
    return NAME


def data_overrides() -> list[str]:
    return [f"data.name={dataset_name()}", "data.num_items=16", "train.tensorboard=false", "train.log_every=1"]


TTS = ["task=tts", "model.name=fastspeech", "model.params.dim=32", "model.params.heads=2",
       "model.params.enc_layers=1", "model.params.dec_layers=1", "model.params.ffn=32",
       "model.params.predictor_hidden=16", "train.steps=3", "train.batch_size=4", "train.lr=1e-3"]
VOCODER = ["task=vocoder", "model.name=vocos", "model.params.dim=16", "model.params.hidden=32",
           "model.params.layers=1", "model.params.disc_width=4", "model.params.disc_ffts=[256,512]",
           "task_params.segment=2048", "train.steps=2", "train.batch_size=4"]
_trained: dict[str, Path] = {}


@pytest.fixture(scope="session")
def speech_runs(tmp_path_factory) -> dict[str, Path]:
    """{"tts": acoustic run dir (its task_params.vocoder names the vocoder run), "vocoder": run dir}."""
    import torch

    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    if not _trained:
        root = tmp_path_factory.mktemp("speech-runs")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Trainer(load_config(None, VOCODER + data_overrides()), root / "vocoder").fit()
                Trainer(load_config(None, TTS + data_overrides() + ["task_params.vocoder=../vocoder"]),
                        root / "tts").fit()
        finally:
            torch.set_num_threads(threads)
        _trained.update(tts=root / "tts", vocoder=root / "vocoder")
    return dict(_trained)
