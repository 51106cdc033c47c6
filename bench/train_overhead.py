"""Per-step overhead of genforge's trainer against a textbook loop over the same model and data.

For each recipe, both loops build the same task (same nets, same collate, same loss) and differ only
in what surrounds the step: the textbook loop is ``zero_grad; backward; AdamW.step`` on random
batches, with no EMA, clipping, non-finite guard, logging or checkpoints; the trainer runs its
whole loop (recipe settings, with checkpoints and sample grids pushed past the end so that the
rate measured is that of training steps). Runs alternate (plain, trainer, plain, trainer, ...) so
machine noise hits both alike; rates are taken between steps, after a warm-up.

    python bench/train_overhead.py [--steps 200] [--rounds 2] [--device cpu|cuda] [--batch 64]
                                   [--fused auto|on|off] [--set data.limit=4096 ...]
                                   [--trainer-set train.compile=true ...]

--trainer-set applies to the trainer's loop only: with train.compile=true it measures the compiled
trainer against the eager textbook loop (compiling happens in the warm-up steps, which are not timed).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, save  # noqa: E402

from genforge.config import load_config  # noqa: E402
from genforge.train.trainer import Trainer  # noqa: E402
from genforge.tuning import tune_malloc  # noqa: E402

WARMUP = 10
RECIPES = ("diffusion_shapes", "dcgan_fashion")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step_fn, device, stamps: list[float], steps: int):
    """Wrap a task's step so each call records when it finished. Only the end of the warm-up and
    the last step wait for the device: on CUDA the steps between are queued work, and a sync per
    step would hide exactly the host overhead this measures."""
    def step(batch, optimize):
        out = step_fn(batch, optimize)
        if len(stamps) in (WARMUP - 1, steps - 1):
            _sync(device)
        stamps.append(time.perf_counter())
        return out
    return step


def _rate(stamps: list[float]) -> float:
    return (len(stamps) - WARMUP) / (stamps[-1] - stamps[WARMUP - 1])


def trainer_rate(overrides: list[str], recipe: str, steps: int) -> float:
    cfg = load_config(recipe, overrides + [f"train.steps={steps}", f"train.ckpt_every={steps * 10}",
                                           "train.sample_every=0", "train.tensorboard=false"])
    out = Path(tempfile.mkdtemp(prefix="gf_overhead_"))
    try:
        tr = Trainer(cfg, out / "run")
        tr.task.sample_images = lambda *a, **k: None  # the end-of-run grid is not a training step
        tr.task.evaluate = lambda *a, **k: {}
        stamps: list[float] = []
        tr.task.step = _timed(tr.task.step, tr.device, stamps, steps)
        tr.fit()
        return _rate(stamps)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def plain_rate(overrides: list[str], recipe: str, steps: int) -> float:
    """The textbook loop: the same task's step with a bare AdamW update."""
    cfg = load_config(recipe, overrides + ["train.tensorboard=false"])
    out = Path(tempfile.mkdtemp(prefix="gf_overhead_"))
    try:
        # the trainer builds the data and the task exactly as a run would; its loop is not used
        tr = Trainer(cfg, out / "run")
        task, data, device, t = tr.task, tr.data, tr.device, tr.cfg.train
        opts = {k: torch.optim.AdamW(n.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
                for k, n in task.nets.items()}

        def optimize(name, loss):
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()

        gen = torch.Generator().manual_seed(0)
        stamps: list[float] = []
        step = _timed(task.step, device, stamps, steps)
        task.model.train()
        for _ in range(steps):
            idx = torch.randint(len(data), (t.batch_size,), generator=gen)
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in task.collate(data, idx, gen).items()}
            step(batch, optimize)
        return _rate(stamps)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for both loops, e.g. data.limit=4096 (a smaller dataset "
                         "loads faster and costs the same per step)")
    ap.add_argument("--trainer-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides for the trainer's loop only, e.g. train.compile=true")
    ap.add_argument("--fused", choices=["auto", "on", "off"], default="auto",
                    help="the trainer's AdamW: auto (fused, with the skip on the device, wherever the "
                         "kernel exists, else foreach with the host check), or force either path")
    ap.add_argument("--name", default=None, help="results file name (default train_overhead_<device>)")
    args = ap.parse_args()
    if args.steps <= WARMUP + 1:
        ap.error(f"--steps must be more than {WARMUP + 1}: the first {WARMUP} are warm-up")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_overhead: --device cuda needs a CUDA GPU and none is visible; nothing measured")
        return
    tune_malloc()  # as the CLI does at start-up, for both loops alike
    Trainer.fused = {"auto": None, "on": True, "off": False}[args.fused]
    overrides = [f"train.batch_size={args.batch}", f"train.device={args.device}", *args.set]
    results = {}
    for recipe in args.recipes:
        plain, trained = [], []
        for _ in range(args.rounds):
            plain.append(plain_rate(overrides, recipe, args.steps))
            trained.append(trainer_rate(overrides + args.trainer_set, recipe, args.steps))
            print(f"{recipe}: plain {plain[-1]:.2f} steps/s, trainer {trained[-1]:.2f} steps/s", flush=True)
        p, tr = statistics.median(plain), statistics.median(trained)
        results[recipe] = {"plain_steps_per_s": round(p, 3), "trainer_steps_per_s": round(tr, 3),
                           "trainer_over_plain": round(tr / p, 4),
                           "overhead_pct": round(100 * (p / tr - 1), 2),
                           "plain_rounds": [round(x, 3) for x in plain],
                           "trainer_rounds": [round(x, 3) for x in trained]}
        print(f"{recipe}: trainer/plain = {tr / p:.3f} (overhead {100 * (p / tr - 1):+.1f} %)", flush=True)
    save(args.name or f"train_overhead_{args.device}",
         {"steps": args.steps, "rounds": args.rounds, "batch_size": args.batch, "device": args.device,
          "overrides": args.set, "trainer_overrides": args.trainer_set, "fused": args.fused,
          "threads": torch.get_num_threads(), "results": results, "peak_rss_mb": round(peak_rss_mb(), 1)})


if __name__ == "__main__":
    main()
