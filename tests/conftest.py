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


def poison(trainer, bad_steps: set[int]) -> None:
    """Make the loss NaN at the given (1-based) steps of the trainer's next fit, as a diverging run's."""
    import math

    real, done = trainer.task.step, [0]

    def step(batch, optimize):
        done[0] += 1
        if done[0] in bad_steps:
            return real(batch, lambda name, loss: optimize(name, loss * math.nan))
        return real(batch, optimize)

    trainer.task.step = step


def finite_weights(path) -> bool:
    from safetensors.torch import load_file

    return all(torch.isfinite(v).all() for v in load_file(path).values() if v.is_floating_point())


def assert_resume_exact(cfg, root, stop_at: int) -> None:
    """A run stopped at ``stop_at`` and resumed logs the same losses and ends with the same weights
    as the uninterrupted run of ``cfg``."""
    from safetensors.torch import load_file

    from genforge.train.checkpoint import read_metrics
    from genforge.train.trainer import Trainer

    def losses(run):
        return [(r["step"], {k: v for k, v in r.items() if k.startswith("loss")})
                for r in read_metrics(run / "metrics.jsonl")[0]]

    Trainer(cfg, root / "a").fit()
    short = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": stop_at})})
    Trainer(short, root / "b").fit()
    Trainer(cfg, root / "b", resume=True).fit()
    assert losses(root / "a") == losses(root / "b")
    a, b = load_file(root / "a" / "model.safetensors"), load_file(root / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
