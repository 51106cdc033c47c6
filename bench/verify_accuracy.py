"""Accuracy and speed of the pixel checker (genforge.eval.verify) on rendered shapes scenes.

Ground truth is the scene each image was rendered from, so every miss is the checker's. Besides
clean renders, each size is also scored with Gaussian pixel noise plus a whole-image colour shift,
the kind of imperfection a generator's output carries.

    python bench/verify_accuracy.py [-n 1000] [--sizes 16 32 64] [--seed 0] [--sigma 8] [--shift 15]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from genforge.data.shapes import render_batch, scene_for_item  # noqa: E402
from genforge.eval.verify import score  # noqa: E402


def perturb(images: torch.Tensor, sigma: float, shift: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = images.numpy().astype(np.float64)
    x += rng.uniform(-shift, shift, size=(x.shape[0], 3, 1, 1)) + rng.normal(0, sigma, x.shape)
    return torch.from_numpy(np.clip(x + 0.5, 0, 255).astype(np.uint8))


def timed_score(images: torch.Tensor, scenes: list) -> dict:
    t0 = time.perf_counter()
    out = score(images, scenes)
    seconds = time.perf_counter() - t0
    return {"all_correct": out["all_correct"], "accuracy": out["accuracy"],
            "scenes_per_s": round(len(scenes) / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="scenes per image size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--seed", type=int, default=0, help="scene stream (split 'test') and noise seed")
    ap.add_argument("--sigma", type=float, default=8.0, help="Gaussian noise std, in 0..255 units")
    ap.add_argument("--shift", type=float, default=15.0, help="max whole-image shift per channel")
    args = ap.parse_args()

    scenes = [scene_for_item(i, seed=args.seed, split="test") for i in range(args.n)]
    results = {}
    for px in args.sizes:
        images = render_batch(scenes, px)
        clean = timed_score(images, scenes)
        noisy = timed_score(perturb(images, args.sigma, args.shift, args.seed), scenes)
        results[str(px)] = {"clean": clean, "noisy": noisy}
        print(f"{px:3d} px: exact {clean['all_correct']:.2%} clean, {noisy['all_correct']:.2%} noisy; "
              f"{clean['scenes_per_s']} scenes/s", file=sys.stderr)
    save("verify_accuracy", {"n": args.n, "seed": args.seed, "split": "test",
                             "noise": {"sigma": args.sigma, "shift": args.shift}, "results": results})


if __name__ == "__main__":
    main()
