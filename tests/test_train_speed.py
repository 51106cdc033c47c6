"""The trainer without per-step overhead: multi-tensor EMA and AdamW, the non-finite skip done on the
device (fused AdamW's found_inf) with the counts read only at log and checkpoint steps, optional
torch.compile. The guarantees of tests/test_trainer_reliability.py hold on both skip paths."""
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TINY_DIFFUSION, TINY_GAN, assert_resume_exact, finite_weights, poison
from genforge.config import load_config
from genforge.errors import GenforgeError
from genforge.train import checkpoint as ckpt
from genforge.train.trainer import EMA, BadSteps, Trainer, fused_adamw_works

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _losses(run: Path, key: str) -> list[float]:
    return [r[key] for r in ckpt.read_metrics(run / "metrics.jsonl")[0] if key in r]


# ---- EMA -----------------------------------------------------------------------------------------
def test_ema_matches_the_per_parameter_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    ema, ref = EMA(model, 0.99), EMA(model, 0.99)
    for step in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 5))  # moves the BatchNorm running stats (buffers)
        ema.update(model, step)
        d = min(0.99, (1 + step) / (10 + step))
        with torch.no_grad():  # the loop EMA.update replaced
            for e, p in zip(ref.module.parameters(), model.parameters()):
                e.lerp_(p, 1 - d)
            for e, b in zip(ref.module.buffers(), model.buffers()):
                e.copy_(b)
    got, want = ema.module.state_dict(), ref.module.state_dict()
    for k in want:  # same lerp element by element: equal up to float32 rounding at most
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)
    assert got["1.num_batches_tracked"] == 30


# ---- optimizers and the skip ----------------------------------------------------------------------
@pytest.mark.parametrize("fused", [None, False])
def test_optimizers_use_multi_tensor_kernels(tmp_path, monkeypatch, fused):
    monkeypatch.setattr(Trainer, "fused", fused)
    tr = Trainer(load_config(None, TINY_GAN + ["train.steps=1"]), tmp_path / "run")
    groups = [g for opt in tr.opts.values() for g in opt.param_groups]
    if fused is None and fused_adamw_works(tr.device):  # the default wherever the kernel exists
        assert tr.skip_on_device and all(g["fused"] for g in groups)
    else:  # the fallback: foreach, with the host check per update
        assert not tr.skip_on_device and all(g["foreach"] and not g["fused"] for g in groups)


def _snapshot(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"w{i}": p.detach().clone() for i, p in enumerate(tr.task.nets["model"].parameters())}
    for i, st in enumerate(tr.opts["model"].state.values()):
        out.update({f"s{i}.{k}": v.clone() for k, v in st.items()})
    return out


@pytest.mark.parametrize("fused", [False, True])
def test_a_skipped_update_changes_nothing(tmp_path, monkeypatch, fused):
    monkeypatch.setattr(Trainer, "fused", fused)
    cfg = load_config(None, TINY_DIFFUSION + ["train.steps=3", "train.grad_clip=1.0"])
    tr = Trainer(cfg, tmp_path / "run")
    batch = tr.batch(0)
    tr.task.step(batch, tr.optimize)  # a good update first: moments and step count exist
    before = _snapshot(tr)
    assert before["s0.step"].item() == 1
    tr._skipped = tr._no_skip
    tr.task.step(tr.batch(1), lambda name, loss: tr.optimize(name, loss * math.nan))
    assert bool(tr._skipped)
    after = _snapshot(tr)
    assert before.keys() == after.keys()
    for k in before:  # weights, exp_avg, exp_avg_sq and step: bit for bit as before
        assert torch.equal(before[k], after[k]), k
    tr._skipped = tr._no_skip
    tr.task.step(tr.batch(2), tr.optimize)  # and the next good update goes through
    assert not bool(tr._skipped) and _snapshot(tr)["s0.step"].item() == 2


def test_bad_step_counts_on_the_device_remember_a_run_that_ended_before_the_read():
    for device in (None, torch.device("cpu")):
        bad = BadSteps(limit=3, device=device)
        seq = [0, 1, 0, 0, 1, 1, 1, 0, 1]  # steps 5-7 are three in a row, then recovery
        for done, b in enumerate(seq, 1):
            bad.add(torch.tensor(bool(b)) if device is not None else bool(b), done)
        assert bad.read() == {"run": 1, "total": 5, "first": 2, "run_first": 9, "trip": 7, "trip_first": 5}


class _HostReads:
    """Counts the reads of tensor values into Python made by the trainer and torch's optimizers and
    clipping: each one is a host sync on a GPU."""

    WHERE = (os.sep + "trainer.py", os.sep + "optim" + os.sep, os.sep + "clip_grad.py")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in ("tolist", "item", "__bool__", "__float__", "__int__"):
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(real))

    def _wrap(self, real):
        def read(t, *a, **k):
            if sys._getframe(1).f_code.co_filename.endswith(self.WHERE):
                self.count += 1
            return real(t, *a, **k)
        return read


def test_the_device_skip_reads_nothing_back_between_log_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "fused", True)
    reads = []
    for steps in (4, 12):  # one log step (the last) each: only the length differs
        tr = Trainer(load_config(None, TINY_GAN + [f"train.steps={steps}", f"train.log_every={steps}",
                                                   "train.ckpt_every=1000"]), tmp_path / f"r{steps}")
        counter = _HostReads(monkeypatch)
        tr.fit()
        reads.append(counter.count)
        monkeypatch.undo()
        monkeypatch.setattr(Trainer, "fused", True)
    assert reads[0] > 0 and reads[0] == reads[1], reads


def test_device_skip_keeps_the_nan_guarantees(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "fused", True)
    run = tmp_path / "one"
    tr = Trainer(load_config(None, TINY_DIFFUSION + ["train.steps=6", "train.ema_decay=0.9",
                                                     "train.log_every=3"]), run)
    poison(tr, {2})
    res = tr.fit()
    assert res["status"] == "completed" and res["metrics"]["nonfinite_steps"] == 1
    assert "step 2: the loss or a gradient is NaN/inf" in capsys.readouterr().err  # named when read at 3
    assert finite_weights(run / "model.safetensors")
    # a run of 3 bad steps (5-7) that recovers before the next read still stops the run, and the
    # checkpoint due at step 6, inside the run, is not written
    run = tmp_path / "two"
    cfg = load_config(None, TINY_GAN + ["train.steps=20", "train.ckpt_every=3", "train.log_every=10",
                                        "train.max_nonfinite_steps=3"])
    tr = Trainer(cfg, run)
    poison(tr, {5, 6, 7})
    with pytest.raises(GenforgeError, match=r"diverged.*steps 5-7 \(3 in a row.*step_00000003"):
        tr.fit()
    assert (run / "train_state" / "latest").read_text() == "step_00000003"
    for p in (run / "train_state").rglob("*.safetensors"):
        assert finite_weights(p), p


def test_resume_is_exact_on_the_fused_path(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "fused", True)
    cfg = load_config(None, TINY_GAN + ["train.steps=8", "train.ckpt_every=5", "train.ema_decay=0.9"])
    assert_resume_exact(cfg, tmp_path, stop_at=5)


def test_a_checkpoint_keeps_the_kernel_choice_of_the_machine_that_resumes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = load_config(None, TINY_GAN + ["train.steps=3", "train.ckpt_every=3"])
    Trainer(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 2})}), run).fit()
    # a checkpoint from before the optimizers recorded foreach/fused
    state = run / "train_state" / "step_00000002" / "state.json"
    info = json.loads(state.read_text())
    for opt in info["optim"].values():
        for g in opt["param_groups"]:
            g.pop("foreach"), g.pop("fused")
    state.write_text(json.dumps(info))
    monkeypatch.setattr(Trainer, "fused", False)
    tr = Trainer(cfg, run, resume=True)
    assert tr.load_state() == 2
    assert all(g["foreach"] is True for opt in tr.opts.values() for g in opt.param_groups)
    # and the same checkpoint resumes on the fused path with the same moments
    monkeypatch.setattr(Trainer, "fused", True)
    fused = Trainer(cfg, run, resume=True)
    fused.load_state()
    assert all(g["fused"] is True for opt in fused.opts.values() for g in opt.param_groups)
    for name in tr.opts:
        for sa, sb in zip(tr.opts[name].state.values(), fused.opts[name].state.values()):
            assert all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)
    assert fused.fit()["step"] == 3


# ---- autocast precision ----------------------------------------------------------------------------
def test_amp_dtype_picks_the_autocast_precision_and_refuses_what_the_device_cannot_run(tmp_path, cli):
    cfg = load_config(None, TINY_DIFFUSION + ["train.steps=2", "train.amp=true", "train.amp_dtype=bf16",
                                              "train.device=cpu"])
    tr = Trainer(cfg, tmp_path / "bf16")
    assert tr.amp_dtype == torch.bfloat16 and not tr.scaler.is_enabled()
    tr.fit()
    assert finite_weights(tmp_path / "bf16" / "model.safetensors")
    # auto keeps what amp did before the option existed: bf16 on the CPU
    auto = Trainer(load_config(None, TINY_DIFFUSION + ["train.amp=true", "train.device=cpu"]), tmp_path / "auto")
    assert auto.amp_dtype == torch.bfloat16
    code, out, err = cli("train", *TINY_DIFFUSION, "train.amp=true", "train.amp_dtype=fp16", "train.device=cpu",
                         "--out", tmp_path / "fp16")
    assert code == 2 and "train.amp_dtype=fp16 needs a CUDA device" in err and err.count("\n") == 1, err
    assert not (tmp_path / "fp16").exists()


# ---- compile ----------------------------------------------------------------------------------------
def test_compile_without_a_compiler_warns_once_and_trains_eagerly(tmp_path, monkeypatch, capsys):
    def broken(*a, **k):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    res = Trainer(load_config(None, TINY_GAN + ["train.steps=2", "train.compile=true"]), tmp_path / "r").fit()
    assert res["status"] == "completed"
    warnings = [x for x in capsys.readouterr().err.splitlines() if "train.compile" in x]
    assert len(warnings) == 1 and "No working C++ compiler" in warnings[0] and "eager" in warnings[0]


@pytest.mark.skipif(os.environ.get("GENFORGE_SLOW_TESTS") != "1",
                    reason="compiling on CPU takes minutes; set GENFORGE_SLOW_TESTS=1")
def test_compiled_training_follows_eager_training(tmp_path):
    args = TINY_DIFFUSION + ["train.steps=4", "train.lr=1e-4"]
    Trainer(load_config(None, args), tmp_path / "eager").fit()
    Trainer(load_config(None, args + ["train.compile=true"]), tmp_path / "compiled").fit()
    eager, compiled = _losses(tmp_path / "eager", "loss"), _losses(tmp_path / "compiled", "loss")
    # inductor fuses and reorders float32 reductions, so the first loss differs by rounding only
    # (~1e-6 relative); a small learning rate keeps later steps from amplifying that, and 1e-3
    # relative is still far below what a wrong graph (a dropped term, wrong weights) would give
    assert len(eager) == len(compiled) == 4
    for e, c in zip(eager, compiled):
        assert c == pytest.approx(e, rel=1e-3)


# ---- CUDA -------------------------------------------------------------------------------------------
@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("fused", [None, False])
def test_cuda_training_on_both_skip_paths(tmp_path, monkeypatch, fused):
    monkeypatch.setattr(Trainer, "fused", fused)
    cfg = load_config(None, TINY_DIFFUSION + ["train.steps=6", "train.device=cuda", "train.log_every=3",
                                              "train.ema_decay=0.9"])
    tr = Trainer(cfg, tmp_path / "r")
    assert tr.skip_on_device == (fused is None)
    poison(tr, {2})
    res = tr.fit()
    assert res["status"] == "completed" and res["metrics"]["nonfinite_steps"] == 1
    assert finite_weights(tmp_path / "r" / "model.safetensors")


@CUDA
@pytest.mark.cuda
def test_cuda_resume_is_exact(tmp_path):
    cfg = load_config(None, TINY_GAN + ["train.steps=8", "train.ckpt_every=5", "train.ema_decay=0.9",
                                        "train.device=cuda"])
    assert_resume_exact(cfg, tmp_path, stop_at=5)
