"""DCGAN training throughput: genforge's trainer vs a textbook minimal PyTorch loop, same run.

Both train the same Generator/Discriminator modules with Adam(W) at the same batch size on the same
in-memory Fashion-MNIST tensor; runs alternate (A, B, A, B, ...) so machine noise hits both alike.
Rates are measured between logged steps, excluding start-up and the final sample grid.

    python bench/dcgan_throughput.py [--steps 200] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, save  # noqa: E402

from genforge.config import load_config  # noqa: E402
from genforge.data import load_dataset  # noqa: E402
from genforge.data.transforms import to_float  # noqa: E402
from genforge.models.gan import Discriminator, Generator  # noqa: E402
from genforge.train.trainer import Trainer  # noqa: E402
from genforge.tuning import tune_malloc  # noqa: E402

WARMUP = 10


def plain_loop(images: torch.Tensor, steps: int, batch_size: int, seed: int = 0) -> float:
    """The textbook DCGAN loop (PyTorch tutorial): D on real and fake, then G, BCE losses."""
    torch.manual_seed(seed)
    g, d = Generator(z_dim=100, channels=1, image_size=32), Discriminator(channels=1, image_size=32)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    t0 = 0.0
    for step in range(steps + WARMUP):
        if step == WARMUP:
            t0 = time.perf_counter()
        idx = torch.randint(0, len(images), (batch_size,))
        real = to_float(images[idx])
        z = torch.randn(batch_size, 100)
        fake = g(z)
        d.zero_grad()
        out_r, out_f = d(real), d(fake.detach())
        loss_d = (F.binary_cross_entropy_with_logits(out_r, torch.ones_like(out_r))
                  + F.binary_cross_entropy_with_logits(out_f, torch.zeros_like(out_f)))
        loss_d.backward()
        opt_d.step()
        g.zero_grad()
        out = d(fake)
        loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        loss_g.backward()
        opt_g.step()
        loss_g.item()  # a real loop reads its losses
    return steps * batch_size / (time.perf_counter() - t0)


def genforge_run(steps: int, batch_size: int, ema: float, workdir: Path) -> float:
    cfg = load_config("dcgan_fashion", [f"train.steps={steps + WARMUP}", f"train.batch_size={batch_size}",
                                        f"train.ema_decay={ema}", f"train.log_every={WARMUP}",
                                        "train.sample_every=0", f"train.ckpt_every={10**9}"])
    run = workdir / f"run-{time.time_ns()}"
    Trainer(cfg, run).fit()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss_d" in r]
    first, last = rows[0], rows[-1]  # step WARMUP and the last step
    rate = (last["step"] - first["step"]) * batch_size / (last["time"] - first["time"])
    shutil.rmtree(run, ignore_errors=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    tune_malloc()  # both sides run in this process, so both get the same allocator settings
    images = load_dataset(load_config("dcgan_fashion").data).images
    work = Path(tempfile.mkdtemp(prefix="gf-bench-"))
    plain, gf, gf_ema = [], [], []
    for r in range(args.rounds):
        plain.append(plain_loop(images, args.steps, args.batch_size))
        gf.append(genforge_run(args.steps, args.batch_size, 0.0, work))
        gf_ema.append(genforge_run(args.steps, args.batch_size, 0.999, work))
        print(f"round {r}: plain {plain[-1]:.1f} img/s, genforge {gf[-1]:.1f}, genforge+EMA {gf_ema[-1]:.1f}")
    shutil.rmtree(work, ignore_errors=True)
    best = lambda xs: max(xs)  # noqa: E731  best-of-N is the least noisy estimate of capability
    save("dcgan_throughput", {
        "steps": args.steps, "rounds": args.rounds, "batch_size": args.batch_size,
        "plain_img_per_s": plain, "genforge_img_per_s": gf, "genforge_ema_img_per_s": gf_ema,
        "overhead_pct": round(100 * (1 - best(gf) / best(plain)), 2),
        "overhead_with_ema_pct": round(100 * (1 - best(gf_ema) / best(plain)), 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    })


if __name__ == "__main__":
    main()
