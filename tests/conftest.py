import os
import sys

import pytest
import torch

os.environ.setdefault("GENFORGE_NO_PROGRESS", "1")
# Tiny test models run fastest single-threaded, and a busy machine makes extra threads much slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the genforge CLI in-process; returns (exit code, stdout, stderr)."""
    from genforge.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["genforge", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


TINY_GAN = ["task=gan", "model.name=dcgan", "model.params.width=8", "model.params.d_width=8",
            "model.params.z_dim=16", "data.name=digits", "data.image_size=16", "data.limit=128",
            "train.batch_size=16", "train.tensorboard=false", "train.log_every=1"]

TINY_DIFFUSION = ["task=diffusion", "model.name=diffusion", "model.params.widths=[16,16]",
                  "model.params.attention=[false,true]", "model.params.num_train_timesteps=50",
                  "data.name=digits", "data.image_size=16", "data.limit=64", "train.batch_size=8",
                  "train.tensorboard=false", "train.log_every=1", "train.lr=1e-3",
                  "task_params.sample_steps=4"]
