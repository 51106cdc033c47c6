"""The one training loop: AdamW per net, EMA, grad clipping, optional autocast, DDP, checkpoints.

Resuming is exact because nothing random carries state from one step to the next: the data order
of epoch e is a permutation seeded by (seed, e), and every step reseeds torch from
(seed, step, rank). A resumed run therefore replays the same batches and the same noise as an
uninterrupted one, and with the optimizer, EMA and BatchNorm states restored its losses match.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import __version__
from ..config import RunConfig
from ..data import Examples, load_dataset
from ..data.transforms import make_grid, to_uint8
from ..device import pick_device
from ..errors import GenforgeError
from ..tasks import build_task, preflight, resolve_model_params
from . import checkpoint as ckpt
from .plots import write_loss_curve
from .logging import Logger


#: held (flock) while a process trains the run; it only ever holds the holder's pid
LOCK_FILE = ".lock"
GRID_SCALE = 2  # progress grids (samples/step_*.png): each sample pixel a 2x2 block, 32 px is hard to see at 1x


def lr_at(cfg, step: int) -> float:
    """Learning rate of a step; a pure function of the step, so resuming needs no scheduler state."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        span = max(1, t.steps - t.warmup_steps)
        return t.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - t.warmup_steps) / span)))
    return t.lr


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1)


def fused_adamw_works(device: torch.device) -> bool:
    """Whether this build has a fused AdamW kernel for ``device`` that honours ``found_inf``."""
    try:
        p = torch.zeros(1, device=device, requires_grad=True)
        p.grad = torch.ones_like(p)
        opt = torch.optim.AdamW([p], fused=True)
        opt.found_inf = torch.ones((), device=device)
        opt.step()
        return bool((p == 0).all())
    except (RuntimeError, ValueError, TypeError, NotImplementedError, AssertionError):
        return False


def _compiled(nets: dict[str, nn.Module], device: torch.device) -> dict[str, nn.Module]:
    """torch.compile'd nets, or the eager ones (with one warning) where this machine cannot compile."""
    try:
        # inductor needs a working C++ (CPU) or Triton (CUDA) toolchain; a tiny graph finds out in seconds
        probe = torch.compile(lambda x: torch.relu(x) * 2 + 1)
        probe(torch.ones(8, device=device))
    except Exception as e:  # noqa: BLE001 - any compiler failure means eager, never a crashed run
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"warning: train.compile=true but torch.compile does not work here ({reason}); "
              "training eagerly", file=sys.stderr, flush=True)
        return nets
    return {k: torch.compile(v) for k, v in nets.items()}


class BadSteps:
    """Bookkeeping of skipped (non-finite) steps that works on Python ints or on device tensors.

    With device tensors every update is a few queued kernels and nothing waits for the device;
    ``read()`` is the one host sync, made only where the loop needs the numbers (log, checkpoint
    and final steps). A run of ``limit`` bad steps is remembered as a trip (its first and last
    step) even when good steps follow before the next read, so a deferred read still stops the run.
    """

    NAMES = ("run", "total", "first", "run_first", "trip", "trip_first")

    def __init__(self, limit: int, device: torch.device | None = None):
        self.limit = limit
        zero = (lambda: torch.zeros((), dtype=torch.int64, device=device)) if device is not None else int
        self.run, self.total, self.first, self.run_first, self.trip, self.trip_first = (
            zero() for _ in self.NAMES)

    def add(self, bad, done: int) -> None:
        """Count step ``done`` (1-based); ``bad`` is a bool or a 0-d bool tensor."""
        bad = bad.long() if torch.is_tensor(bad) else int(bad)
        # arithmetic instead of branches, so the same lines serve ints and tensors without a sync
        self.run = (self.run + 1) * bad
        self.total = self.total + bad
        self.run_first = self.run_first + (self.run == 1) * (done - self.run_first)
        self.first = self.first + (self.total == 1) * bad * (done - self.first)
        newly = (self.trip == 0) * (self.run >= self.limit)
        self.trip_first = self.trip_first + newly * (self.run_first - self.trip_first)
        self.trip = self.trip + newly * (done - self.trip)

    def read(self) -> dict[str, int]:
        values = [getattr(self, k) for k in self.NAMES]
        if torch.is_tensor(values[0]):
            values = torch.stack(values).tolist()
        return dict(zip(self.NAMES, map(int, values)))


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # warm-up so early weights do not dominate for thousands of steps
        d = min(self.decay, (1 + step) / (10 + step))
        # one multi-tensor kernel per list instead of two small ops per parameter: the same lerp
        # arithmetic element by element, without a Python loop launching hundreds of kernels a step
        torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in model.parameters()], 1 - d)
        buffers = list(self.module.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(model.buffers()))


def _amp_dtype(t, device: torch.device) -> torch.dtype:
    """The autocast dtype ``train.amp_dtype`` asks for on ``device``; a choice the device cannot run
    is a one-line error (whether or not train.amp is on, so a recipe fails where it is written)."""
    name = t.amp_dtype if t.amp_dtype != "auto" else ("fp16" if device.type == "cuda" else "bf16")
    if name == "fp16" and device.type != "cuda":
        raise GenforgeError(f"train.amp_dtype=fp16 needs a CUDA device (training on {device.type}); use "
                            "train.amp_dtype=bf16 or auto")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GenforgeError("train.amp_dtype=bf16: this GPU has no bf16 support; use train.amp_dtype=fp16 "
                            "or auto")
    return torch.bfloat16 if name == "bf16" else torch.float16


class Trainer:
    #: fused AdamW, with the non-finite skip done where the update runs (no host sync per update);
    #: None uses it wherever this build has the kernel: on CUDA a sync per update stalls the GPU, and
    #: on CPU the fused kernel steps the diffusion UNet in 8 ms where foreach takes 30 and the
    #: per-tensor default 54. False forces foreach AdamW with the host-side check.
    fused: bool | None = None

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False):
        self.run_dir, self.resume = Path(run_dir).expanduser(), resume
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device(cfg.train.device)
        if self.world > 1:
            self.device = self._init_distributed(cfg)
        self.amp_dtype = _amp_dtype(cfg.train, self.device)
        self._check_run_dir()
        preflight(cfg)  # a bad key or value fails here, before the data is loaded
        source = None
        if cfg.train.init_from and not resume:
            from ..pipelines import resolve_run_dir

            source = resolve_run_dir(cfg.train.init_from)
        self.data: Examples = load_dataset(cfg.data)
        if len(self.data) < cfg.train.batch_size * self.world:
            raise GenforgeError(
                f"dataset {cfg.data.name!r} has {len(self.data)} items, fewer than one batch of "
                f"{cfg.train.batch_size * self.world}; lower train.batch_size or add data"
            )
        self.cfg = resolve_model_params(cfg, self.data)
        torch.manual_seed(self.cfg.train.seed)
        self.task = build_task(self.cfg, self.data, run_dir=self.run_dir)
        if source is not None:
            from .warmstart import describe, warm_start

            report = warm_start(self.task.model, source, getattr(self.task, "tokenizer", None))
            if self.rank == 0:
                print(describe(report), file=sys.stderr)
        self.model = self.task.model.to(self.device)
        t = self.cfg.train
        # fp16 needs loss scaling against underflowing gradients; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=t.amp and self.amp_dtype == torch.float16)
        self.fused = self.fused is not False and fused_adamw_works(self.device)
        # the fused kernel can skip a non-finite update on the device (found_inf); fp16 loss scaling
        # brings its own inf check and host sync, so with the scaler on the loop keeps the host check
        self.skip_on_device = self.fused and not self.scaler.is_enabled()
        impl = {"fused": True} if self.fused else {"foreach": True}
        self.opts = {
            name: torch.optim.AdamW(net.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay,
                                    **impl)
            for name, net in self.task.nets.items()
        }
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.task.nets = {k: DDP(v, device_ids=ids) for k, v in self.task.nets.items()}
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        if t.compile:
            self.task.nets = _compiled(self.task.nets, self.device)
        self._stop_signal: int | None = None
        self._perm: tuple[int, torch.Tensor | None] = (-1, None)
        self._no_skip = (torch.zeros((), dtype=torch.bool, device=self.device) if self.skip_on_device
                         else False)
        self._skipped = self._no_skip  # set by optimize() when a loss or gradient is not finite

    # ---- set-up -------------------------------------------------------------------------------
    def _init_distributed(self, cfg: RunConfig) -> torch.device:
        cuda = torch.cuda.is_available() and cfg.train.device != "cpu"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")

    def _check_run_dir(self) -> None:
        has_config = (self.run_dir / "config.json").is_file()
        if self.resume and not has_config:
            raise GenforgeError(f"nothing to resume in {self.run_dir}: no config.json there")
        if not self.resume and self.run_dir.exists() \
                and any(p.name != LOCK_FILE for p in self.run_dir.iterdir()):
            raise GenforgeError(
                f"run directory {self.run_dir} already exists and is not empty; "
                "pass --resume to continue it or choose another --out"
            )
        ckpt.check_writable(self.run_dir, hint="; choose a writable --out directory")

    # ---- pieces of a step ---------------------------------------------------------------------
    def batch(self, step: int) -> dict[str, Any]:
        """This rank's examples of ``step``, collated by the task and moved to the device."""
        t = self.cfg.train
        per_epoch = len(self.data) // (t.batch_size * self.world)
        epoch, i = divmod(step, per_epoch)
        if self._perm[0] != epoch:  # the order is a pure function of (seed, epoch); cache it per epoch
            self._perm = (epoch, torch.randperm(len(self.data),
                                                generator=torch.Generator().manual_seed(t.seed + epoch)))
        perm = self._perm[1]
        start = (i * self.world + self.rank) * t.batch_size
        idx = perm[start:start + t.batch_size]
        gen = torch.Generator().manual_seed(_step_seed(t.seed, step, self.rank))
        batch = self.task.collate(self.data, idx, gen)
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """Backward and step, unless the loss or the gradient is NaN/inf: then the update is skipped
        (weights, moments and step count stay as they were) and fit() counts the step."""
        opt, net = self.opts[name], self.task.nets[name]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=False):
            self.scaler.scale(loss).backward()
        scaling = self.scaler.is_enabled()
        if scaling:
            self.scaler.unscale_(opt)
        params = [p for p in net.parameters() if p.grad is not None]
        if self.cfg.train.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in params])
        if self.skip_on_device:
            ok = torch.isfinite(loss.detach()).all() & torch.isfinite(norm)
            # the fused kernel does nothing where found_inf is 1 and takes its step count back, so a
            # bad update is dropped without the host ever reading the flag
            opt.found_inf = (~ok).float()
            try:
                opt.step()
            finally:
                del opt.found_inf
            self._skipped = self._skipped | ~ok
            return
        # one host sync per update; GradScaler makes the same one for its own inf check
        finite_loss, finite_grad = torch.stack([torch.isfinite(loss.detach()).all(),
                                                torch.isfinite(norm)]).tolist()
        if not finite_loss or (not finite_grad and not scaling):
            opt.zero_grad(set_to_none=True)
            self._skipped = True
            if scaling:
                self.scaler.update()  # forget this step's unscale so the next one starts clean
            return
        # with fp16 loss scaling an overflowing gradient is routine: the scaler skips it and lowers its scale
        self.scaler.step(opt)
        self.scaler.update()

    @property
    def inference_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # ---- checkpoints --------------------------------------------------------------------------
    def save(self, step: int) -> None:
        if self.rank != 0:
            return
        files: dict[str, dict[str, torch.Tensor]] = {"model": self.model.state_dict()}
        if self.ema is not None:
            files["ema"] = self.ema.module.state_dict()
        optim_tensors, optim_info = {}, {}
        for name, opt in self.opts.items():
            tensors, info = ckpt.optimizer_to_tensors(name, opt)
            optim_tensors.update(tensors)
            optim_info[name] = info
        files["optim"] = optim_tensors
        info = {"step": step, "optim": optim_info, "scaler": self.scaler.state_dict()}
        ckpt.write_state(self.run_dir, step, files, info, self.cfg.train.keep_last)
        ckpt.save_tensors(self.run_dir / "model.safetensors", self.inference_model.state_dict(),
                          metadata={"step": str(step), "format": "pt"})

    def load_state(self) -> int:
        state_dir = ckpt.latest_state(self.run_dir)
        if state_dir is None:
            return 0
        info = json.loads((state_dir / "state.json").read_text())
        ckpt.load_weights(self.model, state_dir / "model.safetensors")
        if self.ema is not None:
            ckpt.load_weights(self.ema.module, state_dir / "ema.safetensors")
        optim = ckpt.load_tensors(state_dir / "optim.safetensors")
        for name, opt in self.opts.items():
            ckpt.optimizer_from_tensors(name, opt, optim, info["optim"][name])
        if info.get("scaler"):
            self.scaler.load_state_dict(info["scaler"])
        return int(info["step"])

    def write_config(self, resumed_at: int | None = None) -> None:
        """config.json always holds the effective config; a resume appends what it changed (with the
        step it resumed from) to ``resume_history``, so the run's whole history stays readable."""
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {"genforge_version": __version__, **self.cfg.model_dump(mode="json")}
        if resumed_at is not None:
            old = json.loads((self.run_dir / "config.json").read_text())
            history = old.pop("resume_history", [])
            old.pop("genforge_version", None)
            before, after = _flatten(old), _flatten(self.cfg.model_dump(mode="json"))
            changed = {k: {"from": before.get(k), "to": after.get(k)}
                       for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}
            history.append({"step": resumed_at, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "genforge_version": __version__, "changed": changed})
            data["resume_history"] = history
        ckpt.atomic_write_json(self.run_dir / "config.json", data)

    # ---- the loop -----------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def save_samples(self, logger: Logger, step: int) -> None:
        if self.rank != 0:
            return
        images = self.task.sample_images(self.inference_model, n=64, seed=self.cfg.train.seed)
        if images is None:
            return
        grid = self._grid(to_uint8(images.cpu()), self.run_dir / "samples" / f"step_{step:08d}.png")
        logger.image("samples", grid, step)
        write_loss_curve(self.run_dir, ckpt.read_metrics(self.run_dir / "metrics.jsonl", warn=False)[0])

    def _grid(self, images: torch.Tensor, path: Path):
        grid = make_grid(images, nrow=self.task.grid_columns, scale=GRID_SCALE)
        path.parent.mkdir(exist_ok=True)
        ckpt.atomic_write_png(path, grid)
        return grid

    def _result(self, status: str, step: int, metrics: dict) -> dict[str, Any]:
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        return {"status": status, "step": step, "peak_rss_mb": round(rss_mb, 1),
                "signal": self._stop_signal, "run_dir": str(self.run_dir), "metrics": metrics}

    def _diverged(self, step: int, first: int, run: int) -> GenforgeError:
        t = self.cfg.train
        last = ckpt.latest_state(self.run_dir)
        where = f"--resume continues from {last.name}" if last is not None else "no checkpoint was written"
        fix = f"lower train.lr (now {t.lr:g})" + ("" if t.grad_clip else " or set train.grad_clip=1.0")
        return GenforgeError(
            f"training diverged: the loss or its gradient was NaN/inf at steps {first}-{step} ({run} in a "
            f"row, each skipped); {fix}. Nothing non-finite was saved: {where}, e.g. "
            f"genforge train --resume {self.run_dir} train.lr={t.lr / 4:g}")

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps``, holding the run directory's lock so a second ``train`` or
        ``--resume`` of the same directory (another terminal, a cron job) is refused, not interleaved."""
        lock = self._lock_run_dir() if self.rank == 0 else None
        try:
            return self._fit()
        finally:
            if lock is not None:
                lock.close()  # closing the descriptor releases the lock

    def _lock_run_dir(self):
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; nothing else depends on this one
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.run_dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = (f.read().strip().splitlines() or ["another process"])[0]
            f.close()
            raise GenforgeError(f"{self.run_dir} is being trained by {holder}; wait for it to finish "
                                "(or stop it) before training or resuming this run directory") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        return f

    def _fit(self) -> dict[str, Any]:
        t = self.cfg.train
        if self.resume:
            start = self.load_state()
            if start > t.steps:
                raise GenforgeError(
                    f"train.steps={t.steps} is below this run's current step {start}; a resumed run can only "
                    f"go on: pass train.steps={start} or more")
            if start == t.steps:  # already finished: touch nothing (no checkpoint is rewritten)
                return self._result("completed", start, {})
            self.write_config(resumed_at=start)
        else:
            start = 0
            self.write_config()
            real = self.task.preview(self.data) if self.rank == 0 else None
            if real is not None:  # what the samples should come to look like, beside them
                self._grid(real, self.run_dir / "samples" / "real.png")
        if self.world > 1:
            dist.barrier()
        logger = Logger(self.run_dir, enabled=self.rank == 0, tensorboard=t.tensorboard,
                        total=t.steps, start=start)
        logger.truncate_after(start)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        status, done, last = "completed", start, {}
        bad = BadSteps(t.max_nonfinite_steps, self.device if self.skip_on_device else None)
        bad_run, bad_total, warned = 0, 0, False
        self.model.train()
        try:
            for step in range(start, t.steps):
                torch.manual_seed(_step_seed(t.seed, step, self.rank))
                random.seed(_step_seed(t.seed, step, self.rank))
                np.random.seed(_step_seed(t.seed, step, self.rank) % 2**32)
                for opt in self.opts.values():
                    for group in opt.param_groups:
                        group["lr"] = lr_at(self.cfg, step)
                batch = self.batch(step)
                self._skipped = self._no_skip
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=t.amp):
                    out = self.task.step(batch, self.optimize)
                done = step + 1
                bad.add(self._skipped, done)
                # with the skip on the device the counts are read (one sync) only where they are used
                if (not self.skip_on_device or done % t.log_every == 0 or done == t.steps
                        or done % t.ckpt_every == 0 or self._stop_signal is not None):
                    counts = bad.read()
                    bad_run, bad_total = counts["run"], counts["total"]
                    if bad_total and not warned:
                        warned = True
                        logger.warn(f"step {counts['first']}: the loss or a gradient is NaN/inf; "
                                    "the update was skipped")
                    if counts["trip"]:
                        raise self._diverged(counts["trip"], counts["trip_first"], t.max_nonfinite_steps)
                if self.ema is not None:
                    self.ema.update(self.model, step)
                if done % t.log_every == 0 or done == t.steps:
                    last = {k: float(v) for k, v in out.items()}
                    if bad_total:
                        last["nonfinite_steps"] = float(bad_total)
                    logger.log(done, last, images=t.batch_size * self.world)
                    advice = self.task.monitor(done, last)
                    if advice:
                        logger.warn(advice)
                logger.advance(done)
                if t.sample_every and done % t.sample_every == 0 and done != t.steps:
                    self.save_samples(logger, done)
                # no resume point inside a run of skipped steps: the last one stays before the trouble
                if done % t.ckpt_every == 0 and done != t.steps and bad_run == 0:
                    self.save(done)
                if self._stop_signal is not None:
                    self.save(done)
                    status = "interrupted"
                    break
            else:
                self.save(t.steps)
                self.save_samples(logger, t.steps)
                if self.rank == 0:
                    metrics = self.task.evaluate(self.inference_model)
                    if metrics:
                        last.update(metrics)
                        logger.log(t.steps, metrics)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            logger.close()
            if self.world > 1 and dist.is_initialized():
                dist.barrier()
        return self._result(status, done, last)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
