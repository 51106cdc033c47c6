"""What must never happen to a user's run: a resume that rewinds it or files newer weights under an
older step, a torn metrics line that blocks it, a full disk that leaves half a checkpoint, NaN weights
written to disk."""
import errno
import json
import math
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_DIFFUSION, TINY_GAN, finite_weights, poison
from genforge.config import config_from_json, load_config
from genforge.errors import GenforgeError
from genforge.train import checkpoint as ckpt
from genforge.train.trainer import Trainer


def _states(run: Path) -> dict[str, int]:
    """Each resume point's directory name -> the step its state.json records."""
    return {p.name: json.loads((p / "state.json").read_text())["step"]
            for p in sorted((run / "train_state").glob("step_*"))}


def _assert_consistent(run: Path) -> None:
    for name, step in _states(run).items():
        assert name == f"step_{step:08d}", (name, step)
    steps = [r["step"] for r in ckpt.read_metrics(run / "metrics.jsonl")[0]]
    assert steps == sorted(set(steps)), "metrics.jsonl must not repeat or rewind steps"


def _interrupt_at(trainer: Trainer, at_step: int) -> None:
    """Make the trainer stop as Ctrl-C would, once ``at_step`` steps are done."""
    real, count = trainer.task.step, [0]

    def step(batch, optimize):
        out = real(batch, optimize)
        count[0] += 1
        if trainer_start[0] + count[0] == at_step:
            trainer._stop_signal = signal.SIGINT
        return out

    trainer_start = [ckpt.state_step(ckpt.latest_state(trainer.run_dir))]
    trainer.task.step = step


def test_resume_with_more_steps_is_recorded_and_a_later_plain_resume_finishes(tmp_path, cli):
    run = tmp_path / "run"
    cfg = load_config(None, TINY_GAN + ["train.steps=6", "train.ckpt_every=3", "train.keep_last=5"])
    Trainer(cfg, run).fit()
    # resume asking for 12 steps, interrupted at step 9
    longer = config_from_json(run / "config.json")
    longer = longer.model_copy(update={"train": longer.train.model_copy(update={"steps": 12})})
    tr = Trainer(longer, run, resume=True)
    _interrupt_at(tr, 9)
    assert tr.fit()["status"] == "interrupted"
    conf = json.loads((run / "config.json").read_text())
    assert conf["train"]["steps"] == 12
    assert conf["resume_history"][-1]["step"] == 6
    assert conf["resume_history"][-1]["changed"] == {"train.steps": {"from": 6, "to": 12}}
    # a plain --resume goes on to 12 from 9: it neither stops at the first run's 6 nor rewrites step 6
    before6 = load_file(run / "train_state" / "step_00000006" / "model.safetensors")
    code, out, err = cli("train", "--resume", run, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["status"] == "completed" and res["step"] == 12
    assert (run / "train_state" / "latest").read_text() == "step_00000012"
    after6 = load_file(run / "train_state" / "step_00000006" / "model.safetensors")
    assert all(torch.equal(before6[k], after6[k]) for k in before6)
    _assert_consistent(run)
    assert [r["step"] for r in ckpt.read_metrics(run / "metrics.jsonl")[0]] == list(range(1, 13))
    assert len(json.loads((run / "config.json").read_text())["resume_history"]) == 2


def test_resume_below_the_current_step_is_refused_and_changes_nothing(tmp_path, cli):
    run = tmp_path / "run"
    Trainer(load_config(None, TINY_GAN + ["train.steps=4", "train.ckpt_every=2"]), run).fit()
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, out, err = cli("train", "--resume", run, "train.steps=2")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "train.steps=2" in err and "current step 4" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot
    # resuming a finished run without more steps rewrites nothing either
    code, out, err = cli("train", "--resume", run, "--json")
    assert code == 0 and json.loads(out)["step"] == 4
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot
    _assert_consistent(run)


def test_write_state_never_files_newer_weights_under_an_older_step(tmp_path):
    files = {"model": {"w": torch.ones(3)}}
    ckpt.write_state(tmp_path, 10, files, {"step": 10}, keep_last=3)
    with pytest.raises(GenforgeError, match="step 5"):
        ckpt.write_state(tmp_path, 5, files, {"step": 5}, keep_last=3)
    assert _states(tmp_path) == {"step_00000010": 10}


def test_torn_metrics_line_is_skipped_by_info_and_trimmed_by_resume(tmp_path, cli):
    run = tmp_path / "run"
    Trainer(load_config(None, TINY_GAN + ["train.steps=4", "train.ckpt_every=2"]), run).fit()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss_d": 0.6')  # what a power cut mid-write leaves
    code, out, err = cli("info", run)
    assert code == 0, err
    assert json.loads(out)["last_metrics"]["step"] == 4
    assert "unreadable" in err and "metrics.jsonl" in err
    code, out, err = cli("train", "--resume", run, "train.steps=6", "--json")
    assert code == 0, err
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5, 6]


class _DiskFull:
    """A file that takes half of what is written to it, then fails as a full disk does."""

    def __init__(self, path):
        self.f = open(path, "wb")

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_while_checkpointing_is_one_line_and_leaves_no_temp_files(tmp_path, cli, monkeypatch):
    run = tmp_path / "run"
    real_open = ckpt._open_tmp

    def open_tmp(path):
        return _DiskFull(path) if ".step_00000004" in str(path) else real_open(path)

    monkeypatch.setattr(ckpt, "_open_tmp", open_tmp)
    code, out, err = cli("train", *TINY_GAN, "train.steps=6", "train.ckpt_every=2", "--out", run)
    assert code == 2, err
    assert err.count("\n") == 1 and "no space left" in err and str(run / "train_state") in err
    assert "MB" in err and "--resume" in err
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    assert (run / "train_state" / "latest").read_text() == "step_00000002"
    _assert_consistent(run)
    monkeypatch.setattr(ckpt, "_open_tmp", real_open)  # space freed: the run goes on
    code, out, err = cli("train", "--resume", run, "--json")
    assert code == 0 and json.loads(out)["step"] == 6


def test_a_nan_step_is_skipped_and_counted(tmp_path):
    run = tmp_path / "run"
    tr = Trainer(load_config(None, TINY_DIFFUSION + ["train.steps=6", "train.ema_decay=0.9"]), run)
    poison(tr, {3})
    res = tr.fit()
    assert res["status"] == "completed" and res["metrics"]["nonfinite_steps"] == 1
    assert finite_weights(run / "model.safetensors")
    assert [r["step"] for r in ckpt.read_metrics(run / "metrics.jsonl")[0]] == [1, 2, 3, 4, 5, 6]


def test_nan_metrics_are_logged_as_null_so_the_file_stays_json(tmp_path):
    from genforge.train.logging import Logger

    log = Logger(tmp_path, tensorboard=False, progress=False)
    log.log(1, {"loss": math.nan, "acc": 0.5})
    log.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line and json.loads(line)["loss"] is None


def test_divergence_stops_the_run_without_saving_nan(tmp_path, cli, monkeypatch):
    run = tmp_path / "run"
    cfg = load_config(None, TINY_GAN + ["train.steps=20", "train.ckpt_every=3", "train.max_nonfinite_steps=3"])
    tr = Trainer(cfg, run)
    poison(tr, set(range(5, 21)))
    with pytest.raises(GenforgeError, match=r"diverged.*steps 5-7.*train\.lr.*grad_clip.*step_00000003"):
        tr.fit()
    assert (run / "train_state" / "latest").read_text() == "step_00000003"
    for p in (run / "train_state").rglob("*.safetensors"):
        assert finite_weights(p), p
    # the advice works: resume from the last good checkpoint with a lower learning rate
    code, out, err = cli("train", "--resume", run, "train.lr=5e-5", "--json")
    assert code == 0, err
    assert json.loads(out)["step"] == 20 and finite_weights(run / "model.safetensors")
    _assert_consistent(run)


def test_real_nan_gradients_are_caught_too(tmp_path):
    # a learning rate this large blows the weights up within a few steps: no injection involved
    cfg = load_config(None, TINY_DIFFUSION + ["train.steps=200", "train.lr=1e12", "train.ckpt_every=1000"])
    with pytest.raises(GenforgeError, match="diverged"):
        Trainer(cfg, tmp_path / "run").fit()
    assert not (tmp_path / "run" / "train_state").exists()
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_checkpoints_refuse_non_finite_weights(tmp_path):
    with pytest.raises(GenforgeError, match="NaN or inf"):
        ckpt.write_state(tmp_path, 1, {"model": {"w": torch.tensor([1.0, math.inf])}}, {"step": 1}, 2)
    assert not (tmp_path / "train_state").exists() or not list((tmp_path / "train_state").iterdir())


def test_a_run_directory_being_trained_refuses_a_second_trainer(tmp_path, cli):
    import fcntl

    run = tmp_path / "run"
    Trainer(load_config(None, TINY_GAN + ["train.steps=2", "train.ckpt_every=2"]), run).fit()
    with open(run / ".lock", "a+") as held:  # what a live `genforge train` process holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.seek(0)
        held.truncate()
        held.write("pid 4242\n")
        held.flush()
        code, out, err = cli("train", "--resume", run, "train.steps=4")
        assert code == 2 and "being trained by pid 4242" in err and len(err.strip().splitlines()) == 1
        assert config_from_json(run / "config.json").train.steps == 2  # nothing was touched
    code, out, err = cli("train", "--resume", run, "train.steps=4")  # lock released: it goes on
    assert code == 0, err
    assert json.loads((run / "train_state" / "step_00000004" / "state.json").read_text())["step"] == 4
    # a new run into a directory holding only a stale lock file is not "not empty"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".lock").write_text("pid 1\n")
    assert cli("train", *TINY_GAN, "train.steps=1", "--out", fresh)[0] == 0


def _record_durability(monkeypatch) -> list[tuple]:
    """Record, in order, each fsync as ("fsync", inode) and each rename as ("replace", inode of what
    moved, destination, inode of the destination's folder), then let the real call run; an inode names a
    file or folder across renames (the folder may be renamed itself later)."""
    import os

    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", os.stat(src).st_ino, Path(dst), os.stat(Path(dst).parent).st_ino))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _assert_durable(events: list[tuple], dst: Path) -> None:
    """The rename onto ``dst`` is preceded by an fsync of what was renamed (its data, or for a folder
    its entries, is on disk before the name points at it) and followed, before any later rename, by an
    fsync of the folder holding ``dst`` (the new name survives a power cut before anything builds on it)."""
    at = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == dst)
    _, moved, _, parent = events[at]
    nxt = next((i for i in range(at + 1, len(events)) if events[i][0] == "replace"), len(events))
    assert ("fsync", moved) in events[:at], f"{dst.name} renamed into place before its fsync"
    assert ("fsync", parent) in events[at + 1:nxt], f"{dst.parent} not fsynced right after {dst.name}'s rename"


def test_checkpoint_files_are_fsynced_before_the_rename_and_their_folder_after(tmp_path, monkeypatch):
    events = _record_durability(monkeypatch)
    files = {"model": {"w": torch.ones(3)}, "optim": {"m": torch.zeros(2)}}
    final = ckpt.write_state(tmp_path, 7, files, {"step": 7}, keep_last=2)
    root = tmp_path / "train_state"
    # each file of the resume point is durable inside the hidden folder before the folder is renamed ...
    tmp = root / ".step_00000007.tmp"
    for name in ("model.safetensors", "optim.safetensors", "state.json"):
        _assert_durable(events, tmp / name)
    # ... so the folder's rename publishes only complete files, and then the pointer to it moves
    _assert_durable(events, final)
    _assert_durable(events, root / "latest")
    renames = [e[2] for e in events if e[0] == "replace"]
    assert renames.index(final) < renames.index(root / "latest")
    assert ckpt.latest_state(tmp_path) == final and ckpt.state_step(final) == 7


def test_every_file_a_training_run_writes_is_fsynced_around_its_rename(tmp_path, monkeypatch):
    events = _record_durability(monkeypatch)
    run = tmp_path / "run"
    Trainer(load_config(None, TINY_GAN + ["train.steps=2", "train.ckpt_every=2"]), run).fit()
    renamed = [e[2] for e in events if e[0] == "replace"]
    # the atomic writers (weights, config, samples) as well as the resume point
    assert {run / "model.safetensors", run / "config.json", run / "train_state" / "latest"} <= set(renamed)
    for dst in renamed:
        _assert_durable(events, dst)
