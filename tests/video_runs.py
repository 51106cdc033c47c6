"""A tiny text-to-video run (6 frames of 16 px shapes_video, 3 steps), trained once per test process
for the video, serving and web tests; barely trained, so tests compare pipelines with each other and
with the server, never with what a clip shows."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

TINY_VIDEO = ["task=video", "model.name=video_unet", "model.params.widths=[16,16]",
              "model.params.cross_attention=[false,true]", "model.params.attention_heads=2",
              "model.params.vocab_size=64", "model.params.context=24", "model.params.text_dim=16",
              "model.params.text_layers=1", "model.params.text_heads=2", "model.params.num_train_timesteps=50",
              "task_params.sample_steps=3", "task_params.eval_prompts=2", "data.name=shapes_video",
              "data.image_size=16", "data.frames=6", "data.max_objects=1", "data.num_items=32",
              "train.steps=3", "train.batch_size=4", "train.tensorboard=false", "train.log_every=1"]
_trained: dict[str, Path] = {}


def video_run(root: Path) -> Path:
    """The tiny run's directory (trained under ``root`` the first time it is asked for)."""
    import torch

    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    if "run" not in _trained:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # untrained metrics, captions cut to the tiny context
                Trainer(load_config(None, TINY_VIDEO), root / "video").fit()
        finally:
            torch.set_num_threads(threads)
        _trained["run"] = root / "video"
    return _trained["run"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny video run's directory."""
    return video_run(tmp_path_factory.mktemp("video-runs"))


@pytest.fixture(scope="module")
def pipe(run):
    """Its pipeline on the CPU."""
    import genforge

    return genforge.load(run, device="cpu")
