"""The trainer: run directories, exact resume after SIGKILL, SIGTERM checkpoints, DDP."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_DIFFUSION, TINY_GAN, assert_resume_exact
from genforge.config import load_config
from genforge.errors import GenforgeError
from genforge.train.trainer import Trainer


def losses(run_dir: Path, keys=("loss_d", "loss_g")):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], *[r[k] for k in keys]) for r in rows if keys[0] in r]


def test_gan_run_directory(tmp_path):
    cfg = load_config(None, TINY_GAN + ["train.steps=6", "train.ckpt_every=3", "train.ema_decay=0.9"])
    res = Trainer(cfg, tmp_path / "run").fit()
    run = tmp_path / "run"
    assert res["status"] == "completed" and res["step"] == 6
    conf = json.loads((run / "config.json").read_text())
    assert conf["model"]["params"]["channels"] == 1 and conf["model"]["params"]["image_size"] == 16
    assert conf["genforge_version"] and conf["class_names"][0] == "0"
    weights = load_file(run / "model.safetensors")
    assert any(k.startswith("generator.") for k in weights)
    assert len(losses(run)) == 6
    assert list((run / "samples").glob("*.png"))
    assert (run / "train_state" / "latest").read_text() == "step_00000006"


def test_refuses_to_overwrite_and_resume_needs_a_run(tmp_path):
    cfg = load_config(None, TINY_GAN + ["train.steps=2"])
    Trainer(cfg, tmp_path / "run").fit()
    with pytest.raises(GenforgeError, match="already exists"):
        Trainer(cfg, tmp_path / "run")
    with pytest.raises(GenforgeError, match="nothing to resume"):
        Trainer(cfg, tmp_path / "empty", resume=True)


def test_resume_matches_uninterrupted(tmp_path):
    cfg = load_config(None, TINY_GAN + ["train.steps=12", "train.ckpt_every=5", "train.ema_decay=0.9",
                                        "data.flip=true"])
    assert_resume_exact(cfg, tmp_path, stop_at=7)  # the short run's last resume point is step 7


def _spawn(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1", GENFORGE_NO_PROGRESS="1")
    return subprocess.Popen([sys.executable, "-m", "genforge.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run_dir: Path, proc, timeout=120):
    latest = run_dir / "train_state" / "latest"
    t0 = time.time()
    while not latest.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path):
    # 64 items / batch 8 = 8 steps per epoch; checkpoints every 3 steps land mid-epoch
    args = TINY_DIFFUSION + ["train.steps=160", "train.ckpt_every=3", "train.ema_decay=0.99"]
    ref = load_config(None, args)
    proc = _spawn(["train", *args, "--out", str(tmp_path / "killed")], tmp_path)
    _wait_for_checkpoint(tmp_path / "killed", proc)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = json.loads((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert 0 < done < 160, "the run must be killed part-way"
    Trainer(ref, tmp_path / "ref").fit()
    Trainer(ref, tmp_path / "killed", resume=True).fit()
    assert losses(tmp_path / "ref", ("loss",)) == losses(tmp_path / "killed", ("loss",))


def test_sigterm_saves_a_checkpoint(tmp_path):
    args = TINY_GAN + ["train.steps=100000", "train.ckpt_every=100000"]
    run = tmp_path / "run"
    proc = _spawn(["train", *args, "--out", str(run), "--json"], tmp_path)
    t0 = time.time()
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 120
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    status = json.loads(out)
    assert status["status"] == "interrupted"
    state = json.loads((run / "train_state" / (run / "train_state" / "latest").read_text() / "state.json")
                       .read_text())
    assert state["step"] == status["step"] > 0


def test_ddp_two_cpu_processes(tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, GENFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "genforge.cli", "train", *TINY_GAN, "train.steps=4", "--out", str(run)]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(losses(run)) == 4
    assert (run / "model.safetensors").is_file()


def test_ddp_resume_is_exact(tmp_path):
    """Two processes stopped at step 2 and resumed with --resume log the same losses and end with
    the same weights as two processes run straight through (diffusion: each rank's own noise and
    timesteps, the sampler's per-rank shard and the optimizer state all come back)."""
    from safetensors.torch import load_file

    env = dict(os.environ, GENFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
           "-m", "genforge.cli", "train"]
    args = [*TINY_DIFFUSION, "train.steps=4", "train.ckpt_every=2", "train.ema_decay=0.9"]
    for cmd in ([*args, "--out", str(tmp_path / "a")],
                [*args, "train.steps=2", "--out", str(tmp_path / "b")],
                ["--resume", str(tmp_path / "b"), "train.steps=4"]):
        res = subprocess.run(ddp + cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stderr[-3000:]
    la, lb = losses(tmp_path / "a", ("loss",)), losses(tmp_path / "b", ("loss",))
    assert la == lb and len(la) == 4
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
