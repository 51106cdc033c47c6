"""Caption quality and speed of a caption run on shapes test scenes: BLEU-1..4, CIDEr-D and exact match
for seen and held-out compositions, greedy against beam search, batched captions/s, peak RSS.

    python bench/caption.py [RUN_DIR] [-n 1000] [--beams 1 3] [--batch-size 256] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, save  # noqa: E402

import genforge  # noqa: E402
from genforge.data import load_dataset  # noqa: E402
from genforge.tasks.caption import caption_batch, caption_report  # noqa: E402


def throughput(pipe, images: torch.Tensor, beam: int, batch_size: int, repeats: int = 3) -> float:
    """Best of ``repeats`` timed passes over ``images`` (the first pass also warms the allocator)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        caption_batch(pipe.model, pipe.tokenizer, images, beam=beam, batch_size=batch_size)
        best = min(best, time.perf_counter() - t0)
    return round(len(images) / best, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="captioner-shapes", help="run directory or shipped name")
    ap.add_argument("-n", type=int, default=1000, help="test scenes per set (seen, held-out)")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="caption", help="results file bench/results/NAME.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    pipe = genforge.load(args.run, device="cpu")
    quality = {}
    for beam in args.beams:
        report = caption_report(pipe.model, pipe.tokenizer, pipe.cfg.data, items=args.n, beam=beam,
                                batch_size=args.batch_size)
        quality[f"beam_{beam}"] = report
        for name, m in report["sets"].items():
            print(f"beam {beam} {name:8s} exact {m['exact_match']:.4f}  BLEU-4 {m['bleu_4']:.4f}  "
                  f"CIDEr-D {m['cider_d']:.3f}  (n={m['n']})", file=sys.stderr)
    test = load_dataset(pipe.cfg.data.model_copy(update={"split": "test", "limit": args.n, "compositions": "all"}))
    images = test.column("image")
    speed = {f"beam_{b}": throughput(pipe, images, b, args.batch_size) for b in args.beams}
    print(f"captions/s (batch {args.batch_size}, {args.threads} threads): {speed}", file=sys.stderr)
    save(args.name, {"run": str(pipe.run_dir), "n": args.n, "batch_size": args.batch_size,
                     "threads": args.threads, "load_average": list(os.getloadavg()),
                     "params": sum(p.numel() for p in pipe.model.parameters()),
                     "quality": quality, "captions_per_s": speed, "peak_rss_mb": round(peak_rss_mb(), 1)})


if __name__ == "__main__":
    main()
