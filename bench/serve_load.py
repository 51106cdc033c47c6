"""Load test of `genforge serve`: throughput and latency percentiles, dynamic batching on vs off.

Starts a real server subprocess on 127.0.0.1 for each batching setting, then drives it with a
closed loop of C concurrent clients (each sends its next request when the last one returns) for
every concurrency C, bounded by --duration seconds and --max-requests per cell. Client and server
share the machine, so absolute numbers include the client's own CPU use.

    python bench/serve_load.py [--model RUN_DIR_OR_SHIPPED] [--concurrency 1,8,32]
        [--batch-sizes 16,1] [--duration 20] [--n 1] [--steps 10]

Without --model it serves a randomly initialised DCGAN of the shipped recipe's size (z 100,
width 64, 32x32), which costs the same per image as a trained one.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model(root: Path) -> str:
    import torch

    from genforge import __version__
    from genforge.config import validate_config
    from genforge.models import build_model
    from genforge.train.checkpoint import atomic_write_json, save_tensors

    params = {"z_dim": 100, "channels": 1, "image_size": 32, "width": 64, "d_width": 64}
    torch.manual_seed(0)
    cfg = validate_config({"task": "gan", "model": {"name": "dcgan", "params": params},
                           "data": {"name": "fashion", "image_size": 32}})
    run = root / "bench-dcgan"
    run.mkdir()
    atomic_write_json(run / "config.json", {"genforge_version": __version__, **cfg.model_dump(mode="json")})
    save_tensors(run / "model.safetensors", build_model("dcgan", **params).state_dict())
    return str(run)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Server:
    def __init__(self, model: str, port: int, keys: Path, db: Path, batch: int, wait_ms: float, threads: int):
        cmd = [sys.executable, "-m", "genforge.cli", "serve", model, "--port", str(port),
               "--max-batch-size", str(batch), "--max-wait-ms", str(wait_ms), "--queue-size", "4096",
               "--rate-limit", "0", "--keys", str(keys), "--jobs-url", f"sqlite:///{db}",
               "--threads", str(threads), "--log-level", "warning"]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(db.with_suffix(".log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # graceful: uvicorn drains and exits
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def run_cell(url: str, key: str, body: dict, concurrency: int, duration: float, max_requests: int,
                   warmup: int = 3) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as c:
        for _ in range(warmup):
            (await c.post("/v1/samples", json=body)).raise_for_status()
        latencies: list[float] = []
        errors: dict[str, int] = {}
        sent = [0]
        stop_at = time.perf_counter() + duration

        async def client(i: int) -> None:
            seed = i * 1_000_003
            while time.perf_counter() < stop_at and sent[0] < max_requests:
                sent[0] += 1
                seed += 1
                t = time.perf_counter()
                try:
                    r = await c.post("/v1/samples", json={**body, "seed": seed})
                    code = r.status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                if code == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[str(code)] = errors.get(str(code), 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*[client(i) for i in range(concurrency)])
        elapsed = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "req_per_s": round(len(latencies) / elapsed, 2),
            "images_per_s": round(len(latencies) * body["n"] / elapsed, 2),
            "p50_ms": round(percentile(ms, 0.50), 1), "p95_ms": round(percentile(ms, 0.95), 1),
            "p99_ms": round(percentile(ms, 0.99), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="Run directory or shipped model name (default: random DCGAN 32x32).")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--batch-sizes", default="16,1", help="--max-batch-size settings; 1 is batching off.")
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds per cell (at most 60).")
    ap.add_argument("--max-requests", type=int, default=5000, help="Requests per cell at most.")
    ap.add_argument("--n", type=int, default=1, help="Images per request.")
    ap.add_argument("--steps", type=int, default=10, help="Denoising steps (diffusion models).")
    ap.add_argument("--sampler", default="dpm++")
    ap.add_argument("--threads", type=int, default=0, help="Server torch threads (0: torch's default).")
    ap.add_argument("--name", default="serve_load", help="Result file: bench/results/NAME.json.")
    args = ap.parse_args()
    duration = min(args.duration, 60.0)
    concurrency = [int(x) for x in args.concurrency.split(",")]
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]

    from genforge.serve.auth import KeyStore

    with tempfile.TemporaryDirectory(prefix="genforge-bench-") as tmp:
        root = Path(tmp)
        model = args.model or default_model(root)
        _, key = KeyStore(root / "keys.json").create("bench", "generate")
        body = {"n": args.n, "steps": args.steps, "sampler": args.sampler}
        cells = []
        for batch in batch_sizes:
            server = Server(model, _free_port(), root / "keys.json", root / f"jobs-{batch}.db", batch,
                            args.max_wait_ms, args.threads)
            try:
                server.wait_ready()
                for c in concurrency:
                    cell = asyncio.run(run_cell(server.url, key, body, c, duration, args.max_requests))
                    cell["max_batch_size"] = batch
                    cells.append(cell)
                    print(f"batch {batch:>3}  conc {c:>3}  {cell['req_per_s']:>8.1f} req/s  "
                          f"p50 {cell['p50_ms']:>8.1f}  p95 {cell['p95_ms']:>8.1f}  p99 {cell['p99_ms']:>8.1f} ms"
                          f"  errors {cell['errors'] or '-'}", flush=True)
            finally:
                server.stop()
    print()
    print(f"{'batching':<10}{'conc':>6}{'req/s':>10}{'img/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'n':>8}")
    for cell in cells:
        label = "off" if cell["max_batch_size"] == 1 else f"on({cell['max_batch_size']})"
        print(f"{label:<10}{cell['concurrency']:>6}{cell['req_per_s']:>10.1f}{cell['images_per_s']:>10.1f}"
              f"{cell['p50_ms']:>10.1f}{cell['p95_ms']:>10.1f}{cell['p99_ms']:>10.1f}{cell['requests']:>8}")
    save(args.name, {"model": args.model or "random dcgan z100 w64 32x32", "request": body,
                     "max_wait_ms": args.max_wait_ms, "duration_s": duration, "cpu_count": os.cpu_count(),
                     "cells": cells})


if __name__ == "__main__":
    main()
