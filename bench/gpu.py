"""Eager vs compiled speed in one command: UNet forward per batch size, single-image generate latency,
large-batch throughput, training steps/s (eager, train.compile=true, and on CUDA batch 512 eager, fp16
and bf16 autocast), and serving latency/throughput (with the compile cache cold and then warm across a
server restart; on CUDA also the DCGAN with --workers at concurrency 1/8/32, eager and compiled).

    python bench/gpu.py                      # CUDA: full sizes, CUDA graphs (reduce-overhead)
    python bench/gpu.py --device cpu         # CPU: the same measurements at small sizes (inductor)
        [--model diffusion-shapes] [--no-train] [--no-serve] [--name gpu]

Every eager/compiled pair is measured in the same process on the same weights, so their ratio is the
number to compare across machines. Compiles (one per batch bucket) happen before timing and are
reported on their own.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

import genforge  # noqa: E402

SIZES = {  # forward batch sizes, large-batch throughput sizes, training batch, serving concurrency
    "cuda": dict(forward=[1, 2, 4, 8, 16, 32, 64], throughput=[64, 256, 2048], train_batch=64, train_steps=100,
                 big_batch=512, serve_batch=16, concurrency=[1, 8, 16], serve_seconds=15.0,
                 gan_workers=4, gan_concurrency=[1, 8, 32]),
    "cpu": dict(forward=[1, 8], throughput=[16], train_batch=8, train_steps=12, big_batch=0,
                serve_batch=4, concurrency=[1, 4], serve_seconds=6.0, gan_workers=0, gan_concurrency=[]),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, reps: int, min_s: float = 0.0) -> float:
    """Median seconds of one call over ``reps`` calls (more while under ``min_s`` in total)."""
    times: list[float] = []
    total = 0.0
    while len(times) < reps or total < min_s:
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
        total += times[-1]
        if len(times) >= 10 * reps:
            break
    return statistics.median(times)


def forward_speed(eager, comp, sizes: list[int], device: torch.device) -> list[dict]:
    m = eager.model
    rows = []
    for b in sizes:
        x = torch.randn(b, m.channels, m.image_size, m.image_size, device=device)
        t = torch.full((b,), 500, dtype=torch.long, device=device)
        y = torch.zeros(b, dtype=torch.long, device=device) if eager.conditional else None
        start = time.perf_counter()
        with torch.no_grad():
            comp.compiled(x, t, y)  # compiles this bucket (or loads it from the cache)
            e = timed(lambda: m(x, t, y), device, reps=20, min_s=0.5)
            c = timed(lambda: comp.compiled(x, t, y), device, reps=20, min_s=0.5)
        rows.append({"batch": b, "eager_ms": round(1e3 * e, 3), "compiled_ms": round(1e3 * c, 3),
                     "speedup": round(e / c, 2), "first_call_s": round(time.perf_counter() - start, 1)})
        print(f"forward  batch {b:>4}: eager {1e3 * e:8.3f} ms  compiled {1e3 * c:8.3f} ms  x{e / c:.2f}",
              flush=True)
    return rows


def generate_speed(eager, comp, sizes: list[int], device: torch.device) -> dict:
    def gen(p, n):
        return lambda: p.generate(n=n, seed=0, steps=10, batch_size=max(n, 1))

    comp.generate(n=1, seed=0, steps=10)  # compile before timing
    e1 = timed(gen(eager, 1), device, reps=10, min_s=1.0)
    c1 = timed(gen(comp, 1), device, reps=10, min_s=1.0)
    print(f"generate n=1 steps=10: eager {1e3 * e1:.1f} ms  compiled {1e3 * c1:.1f} ms  x{e1 / c1:.2f}", flush=True)
    out = {"single_image_10_steps": {"eager_ms": round(1e3 * e1, 2), "compiled_ms": round(1e3 * c1, 2),
                                     "speedup": round(e1 / c1, 2)}, "throughput_10_steps": []}
    for n in sizes:
        comp.generate(n=n, seed=0, steps=1, batch_size=n)  # every bucket this size touches
        e = timed(gen(eager, n), device, reps=3)
        c = timed(gen(comp, n), device, reps=3)
        out["throughput_10_steps"].append({"n": n, "eager_images_per_s": round(n / e, 1),
                                           "compiled_images_per_s": round(n / c, 1), "speedup": round(e / c, 2)})
        print(f"generate n={n} steps=10: eager {n / e:.1f} img/s  compiled {n / c:.1f} img/s  x{e / c:.2f}",
              flush=True)
    return out


def train_speed(recipe: str, batch: int, steps: int, device: str, *extra: str) -> dict:
    """Median steps/s the trainer itself logs, leaving out the first steps (allocator and cuDNN
    warm-up, compiling with train.compile=true) and the set-up, final checkpoint and sample grid
    around them; ``extra``: more overrides (train.amp=true, train.compile=true)."""
    import json

    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    cfg = load_config(recipe, [f"train.steps={steps}", f"train.batch_size={batch}", f"train.device={device}",
                               "train.log_every=1", "train.sample_every=0", "train.ckpt_every=1000000",
                               "train.tensorboard=false", *extra])
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(cfg, Path(tmp) / "run").fit()
        recs = [json.loads(ln) for ln in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["it_per_s"] for r in recs if "it_per_s" in r][max(2, steps // 5):]
    rate = statistics.median(rates)
    print(f"train {recipe} batch {batch} {' '.join(extra)}: {rate:.2f} steps/s", flush=True)
    return {"recipe": recipe, "batch_size": batch, "steps": steps, "overrides": list(extra),
            "steps_per_s": round(rate, 3), "images_per_s": round(rate * batch, 1)}


def serve_speed(model: str, device: str, batch: int, concurrency: list[int], seconds: float,
                threads: int = 0, workers: int = 1) -> dict:
    """Eager server, then a --compile server started twice on one fresh inductor cache: the first
    start compiles every bucket, the second should mostly read them back. ``workers`` > 1 runs
    that many server processes on the port (``serve --workers``)."""
    from serve_load import Server, _free_port, run_cell

    from genforge.serve.auth import KeyStore

    body = {"n": 1, "steps": 10, "sampler": "dpm++"}
    out: dict = {"model": model, "max_batch_size": batch, "workers": workers, "request": body, "cells": [],
                 "ready_s": {}}
    with tempfile.TemporaryDirectory(prefix="genforge-gpu-bench-") as tmp:
        root = Path(tmp)
        store = KeyStore(root / "keys.json")
        _, key = store.create("bench", "generate")
        _, admin = store.create("bench-metrics", "admin")
        before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")  # inherited by the servers
        try:
            for label, extra in [("eager", ()), ("compile_cold", ("--compile",)), ("compile_warm", ("--compile",))]:
                t = time.perf_counter()
                server = Server(model, _free_port(), root / "keys.json", root / f"jobs-{label}.db", batch, 10.0, threads,
                                0.25, extra_args=("--device", device, "--workers", str(workers), *extra))
                try:
                    server.wait_ready(timeout=1800)
                    out["ready_s"][label] = round(time.perf_counter() - t, 1)
                    print(f"serve {label}: ready after {out['ready_s'][label]} s", flush=True)
                    if label == "compile_cold":
                        continue  # timed once the cache is warm; this start only measures compiling
                    for c in concurrency:
                        cell = asyncio.run(run_cell(server.url, key, admin, body, c, seconds, 100_000))
                        cell.update(mode=label, concurrency=c)
                        out["cells"].append(cell)
                        print(f"serve {label} conc {c}: {cell['req_per_s']:.1f} req/s  p50 {cell['p50_ms']:.1f}"
                              f"  p99 {cell['p99_ms']:.1f} ms  fwd {cell['mean_forward_ms']} ms"
                              f"  encode {cell['mean_encode_ms']} ms", flush=True)
                finally:
                    server.stop()
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    ap.add_argument("--model", default="diffusion-shapes", help="Shipped diffusion model or run directory.")
    ap.add_argument("--no-train", action="store_true", help="Skip the training measurements.")
    ap.add_argument("--no-serve", action="store_true", help="Skip the serving measurements.")
    ap.add_argument("--threads", type=int, default=0, help="Torch CPU threads (0: torch's default).")
    ap.add_argument("--name", default=None, help="Result file bench/results/NAME.json (default gpu or gpu_cpu).")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes, device = SIZES[args.device], torch.device(args.device)
    eager = genforge.load(args.model, device=args.device)
    comp = genforge.load(args.model, device=args.device, compile=True)
    params = sum(p.numel() for p in eager.model.parameters())
    result: dict = {"device": args.device, "model": args.model, "params": params,
                    "mode": comp.compiled.mode or "default", "inductor_cache": comp.compiled.cache_dir}
    result["forward"] = forward_speed(eager, comp, sizes["forward"], device)
    result["generate"] = generate_speed(eager, comp, sizes["throughput"], device)
    result["compile_s_per_bucket"] = {str(b): round(s, 1) for b, s in comp.compiled.compile_seconds.items()}
    if comp.compiled.failed:
        result["compile_failed"] = comp.compiled.failed
    if not args.no_train:
        batch, steps = sizes["train_batch"], sizes["train_steps"]
        runs = [("diffusion_shapes", batch), ("diffusion_shapes", batch, "train.compile=true"),
                ("sngan_shapes", batch), ("sngan_shapes", batch, "train.compile=true")]
        if sizes["big_batch"]:
            big = sizes["big_batch"]
            runs += [("diffusion_shapes", big), ("diffusion_shapes", big, "train.amp=true"),
                     ("diffusion_shapes", big, "train.amp=true", "train.amp_dtype=bf16")]
        result["train"] = [train_speed(recipe, b, steps, args.device, *extra) for recipe, b, *extra in runs]
    if not args.no_serve:
        result["serve"] = serve_speed(args.model, args.device, sizes["serve_batch"], sizes["concurrency"],
                                      sizes["serve_seconds"], args.threads)
        if sizes["gan_workers"]:
            result["serve_gan_workers"] = serve_speed("dcgan-fashion", args.device, 32, sizes["gan_concurrency"],
                                                      sizes["serve_seconds"], args.threads, sizes["gan_workers"])
    save(args.name or ("gpu" if args.device == "cuda" else "gpu_cpu"), result)


if __name__ == "__main__":
    main()
