"""Diffusion: training throughput, and per sampler/step count the sampling speed and FID-<featurenet>.

    python bench/diffusion.py [--run diffusion-fashion] [-n 500] [--train-steps 30]

Defaults compare DDPM-1000, DDIM-50 and DPM-Solver++-20 on the shipped `diffusion-fashion` model
with the shipped `classifier-fashion` feature net, all on the same reference images and seeds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, save  # noqa: E402

import genforge  # noqa: E402
from genforge.config import load_config  # noqa: E402
from genforge.data import load_dataset  # noqa: E402
from genforge.data.transforms import to_uint8  # noqa: E402
from genforge.eval import fid_report  # noqa: E402
from genforge.eval.runner import classifier_feature_net  # noqa: E402
from genforge.train.trainer import Trainer  # noqa: E402
from genforge.tuning import tune_malloc  # noqa: E402

SETTINGS = [("ddpm", 1000), ("ddim", 50), ("dpm++", 20), ("dpm++sde", 20)]


def train_throughput(recipe: str, steps: int) -> float:
    cfg = load_config(recipe, [f"train.steps={steps}", "train.log_every=5", "train.sample_every=0",
                               "train.ckpt_every=1000000", "train.tensorboard=false"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        t0 = time.perf_counter()
        trainer.fit()
        # the final checkpoint and sample grid are included: this is what a user waits for
        return steps * cfg.train.batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="diffusion-fashion")
    ap.add_argument("--recipe", default="diffusion_fashion")
    ap.add_argument("--feature-net", default="classifier-fashion")
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--settings", default=",".join(f"{s}:{k}" for s, k in SETTINGS))
    ap.add_argument("--name", default="diffusion", help="result file: bench/results/NAME.json")
    args = ap.parse_args()
    tune_malloc()
    pipe = genforge.load(args.run)
    net = classifier_feature_net(args.feature_net)
    ref = load_dataset(pipe.cfg.data.model_copy(update={"split": "test", "limit": args.n}))
    real = net.features(ref.images)
    rows = []
    for item in args.settings.split(","):
        sampler, steps = item.split(":")
        t0 = time.perf_counter()
        fake = to_uint8(pipe.generate(n=args.n, seed=0, steps=int(steps), sampler=sampler))
        secs = time.perf_counter() - t0
        rep = fid_report(real, net.features(fake), net.name)
        rows.append({"sampler": sampler, "steps": int(steps), "seconds": round(secs, 2),
                     "img_per_s": round(args.n / secs, 3), "fid": rep["fid"], "kid_mean": rep["kid_mean"],
                     "precision": rep["precision"], "recall": rep["recall"]})
        print(rows[-1], flush=True)
    by = {r["sampler"]: r for r in rows}
    ratio = by["dpm++"]["fid"] / by["ddpm"]["fid"] if "dpm++" in by and "ddpm" in by else None
    train_ips = train_throughput(args.recipe, args.train_steps)
    save(args.name, {"run": args.run, "n": args.n, "metric": f"FID-{net.name}", "samplers": rows,
                       "dpmpp_over_ddpm_fid": ratio, "train_img_per_s": round(train_ips, 2),
                       "peak_rss_mb": round(peak_rss_mb(), 1)})


if __name__ == "__main__":
    main()
