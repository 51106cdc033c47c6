"""What training prints: results alone on stdout, progress and advice on stderr, a clock that goes on."""
import json
import torch
import os
import subprocess
import sys

from conftest import TINY_GAN
from genforge.config import load_config
from genforge.tasks import build_task
from genforge.train.checkpoint import read_metrics
from genforge.train.trainer import Trainer


def test_piped_train_prints_json_on_stdout_and_plain_progress_on_stderr(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GENFORGE_NO_PROGRESS"}
    res = subprocess.run([sys.executable, "-m", "genforge.cli", "train", *TINY_GAN, "train.steps=20",
                          "--out", str(tmp_path / "run"), "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["step"] == 20  # nothing but the result on stdout
    lines = [x for x in res.stderr.splitlines() if x.startswith("train ")]
    assert len(lines) >= 5 and lines[-1].startswith("train 20/20 (100%)"), res.stderr
    assert "\x1b[" not in res.stderr  # no terminal control codes in a log file
    # without --json a person gets one sentence
    res = subprocess.run([sys.executable, "-m", "genforge.cli", "train", "--resume", str(tmp_path / "run"),
                          "train.steps=22"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.startswith("completed 22/22 steps in "), res.stdout


def test_resume_continues_the_clock(tmp_path):
    run = tmp_path / "run"
    Trainer(load_config(None, TINY_GAN + ["train.steps=6", "train.ckpt_every=3"]), run).fit()
    rows = read_metrics(run / "metrics.jsonl")[0]
    rows[-1]["time"] = 1000.0  # as if the first session had run for a long time
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Trainer(load_config(None, TINY_GAN + ["train.steps=9", "train.ckpt_every=3"]), run, resume=True).fit()
    times = [r["time"] for r in read_metrics(run / "metrics.jsonl")[0]]
    assert times[6] >= 1000.0 and times == sorted(times)


def test_gan_task_says_when_the_discriminator_has_won():
    cfg = load_config(None, TINY_GAN + ["task_params.won_after=100"])
    task = build_task(cfg)
    assert task.monitor(50, {"d_fake": 0.001}) is None  # not yet for long
    assert task.monitor(100, {"d_fake": 0.3}) is None  # recovered: the count starts again
    assert task.monitor(200, {"d_fake": 0.001}) is None
    msg = task.monitor(300, {"d_fake": 0.005})
    assert msg and "discriminator has won" in msg and "since step 200" in msg and "sngan" in msg
    assert task.monitor(400, {"d_fake": 0.001}) is None  # said once


def test_task_advice_reaches_the_user(tmp_path, capsys):
    tr = Trainer(load_config(None, TINY_GAN + ["train.steps=3"]), tmp_path / "run")
    tr.task.monitor = lambda step, values: "look here" if step == 2 else None
    tr.fit()
    assert capsys.readouterr().err.count("warning: look here") == 1


def test_dataset_warnings_are_one_plain_line(tmp_path):
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(20):
        Image.new("RGB", (12, 12), (i * 10, 0, 0)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    res = subprocess.run([sys.executable, "-m", "genforge.cli", "train", *TINY_GAN, "data.name=folder",
                          f"data.path={folder}", "data.limit=null", "data.val_fraction=0", "train.steps=1", "--out", str(tmp_path / "run")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    warn = [x for x in res.stderr.splitlines() if "unreadable" in x]
    assert len(warn) == 1 and warn[0].startswith("warning: skipped 1 unreadable images of 21 in ")
    assert "UserWarning" not in res.stderr and "warnings.warn" not in res.stderr


def test_run_directory_has_real_images_beside_samples_and_a_loss_curve(tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    Trainer(load_config(None, TINY_GAN + ["train.steps=4", "train.sample_every=2"]), run).fit()
    real, first = Image.open(run / "samples" / "real.png"), Image.open(run / "samples" / "step_00000002.png")
    assert real.size == first.size == (2 + 8 * (32 + 2), 2 + 8 * (32 + 2))  # 16 px tiles at 2x, 8 a row
    assert real.getpixel((0, 0)) == 128  # grey padding shows on black and on white
    curve = Image.open(run / "loss.png")
    assert curve.size == (640, 360) and len(curve.getcolors(1 << 16)) > 3  # more than a blank canvas


def test_conditional_grids_put_one_class_on_each_row():
    cfg = load_config(None, ["task=gan", "model.name=cgan", "model.params.width=8", "model.params.d_width=8",
                             "model.params.z_dim=8", "model.params.num_classes=3", "model.params.image_size=16",
                             "model.params.channels=1"])
    task = build_task(cfg)
    seen = []
    task.model.generator.forward = lambda z, y: seen.append(y) or torch.zeros(len(y), 1, 16, 16)
    assert task.sample_images(task.model, n=64).shape[0] == 3 * task.grid_columns
    assert seen[0].tolist() == [0] * 8 + [1] * 8 + [2] * 8


def test_make_grid_scales_and_rejects_bad_scales():
    import pytest

    from genforge.data.transforms import make_grid

    g = make_grid(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), nrow=2, padding=1, scale=3)
    assert g.size == (1 + 2 * 13, 1 + 13) and g.getpixel((1, 1)) == (255, 255, 255)
    with pytest.raises(ValueError, match="scale"):
        make_grid(torch.zeros(1, 1, 4, 4), scale=0)


def test_tensorboard_keeps_every_step_once_across_a_crash_and_resume(tmp_path):
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cfg = load_config(None, TINY_GAN + ["train.tensorboard=true", "train.steps=8", "train.ckpt_every=3",
                                        "train.keep_last=5"])
    Trainer(cfg, run).fit()
    # as if killed after logging step 8 but with only step 6 saved: steps 7-8 are logged again
    shutil.rmtree(run / "train_state" / "step_00000008")
    (run / "train_state" / "latest").write_text("step_00000006")
    Trainer(cfg, run, resume=True).fit()
    ea = EventAccumulator(str(run / "tb"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("loss_d")] == list(range(1, 9))


def test_sample_shows_progress_warns_about_ignored_options_and_lays_out_classes(tmp_path):
    from PIL import Image

    env = {k: v for k, v in os.environ.items() if k != "GENFORGE_NO_PROGRESS"}
    res = subprocess.run([sys.executable, "-m", "genforge.cli", "sample", "diffusion-fashion-cond", "-n", "20",
                          "--steps", "2", "--grid", str(tmp_path / "g.png")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "sample 2/2 (100%)" in res.stderr  # 20 images are one batch of 2 denoising steps
    assert Image.open(tmp_path / "g.png").size == (2 + 2 * 34, 2 + 10 * 34)  # a row per class, 2 each
    res = subprocess.run([sys.executable, "-m", "genforge.cli", "sample", "dcgan-fashion", "-n", "2", "--steps", "5",
                          "--guidance", "3", "--grid", str(tmp_path / "d.png"), "--scale", "3"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "warning: --steps, --guidance ignored: a GAN" in res.stderr
    assert Image.open(tmp_path / "d.png").size == (2 + 2 * (96 + 2), 2 + 96 + 2)


def test_class_names_are_listed_by_info_and_models(cli):
    code, out, _ = cli("info", "diffusion-fashion-cond")
    assert code == 0 and "Sneaker" in json.loads(out)["classes"]
    code, out, _ = cli("info", "diffusion-fashion")
    assert json.loads(out)["classes"] is None  # unconditional: it takes no labels
    code, out, _ = cli("models")
    listing = json.loads(out)["classes"]
    assert "Sneaker" in listing["diffusion-fashion-cond"] and "diffusion-fashion" not in listing


def test_plain_progress_rates_count_only_timed_work(monkeypatch):
    """A progress that starts reporting at item 150 (e.g. the first 150 came from a cache) rates the
    items after that report, and a one-shot report prints its count without a made-up rate."""
    import io

    from genforge.train import logging as glog

    now = [100.0]
    monkeypatch.setattr(glog.time, "time", lambda: now[0])
    out = io.StringIO()
    with monkeypatch.context() as m:
        m.setattr(glog.sys, "stderr", out)
        m.delenv("GENFORGE_NO_PROGRESS", raising=False)
        with glog.step_progress("cache") as progress:
            progress(150, 300)  # first report: starts the clock at 100 s
            now[0] = 102.0
            progress(300, 300)  # 150 more items in 2 s
        with glog.step_progress("once") as progress:
            progress(32, 32)  # everything came from the cache
    assert out.getvalue().splitlines() == ["cache 300/300 (100%) 75.00 it/s eta 0:00:00", "once 32/32 (100%)"]


def test_a_generator_without_discriminator_samples_but_does_not_train(cli, tmp_path):
    """Shipped GANs keep the generator alone (model.params.discriminator=false)."""
    from genforge.models import build_model

    model = build_model("dcgan", width=8, d_width=8, z_dim=16, discriminator=False)
    assert model.discriminator is None and not any(k.startswith("discriminator.") for k in model.state_dict())
    code, _, err = cli("train", *TINY_GAN, "model.params.discriminator=false", "train.steps=1",
                       "--out", tmp_path / "g")
    assert code == 2 and "training needs the discriminator" in err and "Traceback" not in err
