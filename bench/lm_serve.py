"""Streaming text generation under `genforge serve`: 1 vs C concurrent clients, aggregate tokens/s
and time to first token, with the server's continuous batching.

Starts a real server subprocess on 127.0.0.1, then for each concurrency C runs a closed loop of C
streaming clients (each sends its next /v1/completions request with ``stream: true`` when the last
one ends) for --requests requests per client. A request's first-token latency is from sending it to
the first SSE event that carries text; tokens are the usage counts the last event reports. After each
cell it reads /metrics for the mean rows per decode step (how many sequences shared a forward pass).
Client and server share the machine, so the numbers include the client's own CPU use.

    python bench/lm_serve.py [--model RUN_DIR] [--concurrency 1,8] [--requests 4] [--max-tokens 64]
        [--threads 1] [--name lm_serve]

Without --model it serves a randomly initialised GPT of the gpt_tiny recipe's size (4 layers, 128
wide, 128-token context, character tokenizer), which costs the same per token as a trained one.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

GPT_TINY = {"vocab_size": 256, "block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128,
            "dropout": 0.0, "positions": "learned"}
PROMPTS = ["Once upon a time", "The quick brown fox", "In the beginning", "It was a dark and stormy night",
           "Call me Ishmael.", "All happy families", "To be, or not to be", "Hello, world"]


def default_model(root: Path) -> str:
    import torch

    from genforge import __version__
    from genforge.config import validate_config
    from genforge.models import build_model
    from genforge.text.tokenizer import TextTokenizer
    from genforge.train.checkpoint import atomic_write_json, save_tensors

    torch.manual_seed(0)
    cfg = validate_config({"task": "lm", "model": {"name": "gpt", "params": GPT_TINY},
                           "data": {"name": "text"}, "task_params": {"tokenizer": "char"}})
    run = root / "bench-gpt-tiny"
    run.mkdir()
    atomic_write_json(run / "config.json", {"genforge_version": __version__, **cfg.model_dump(mode="json")})
    save_tensors(run / "model.safetensors", build_model("gpt", **GPT_TINY).state_dict())
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    TextTokenizer.train([text], kind="char", vocab_size=256, lowercase=False).save(run / "tokenizer.json")
    return str(run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(http: httpx.AsyncClient, url: str, key: str, body: dict) -> dict:
    start = time.perf_counter()
    first, tokens, text = None, 0, ""
    async with http.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status_code != 200:
            return {"error": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            msg = json.loads(line[6:])
            if msg.get("choices") and msg["choices"][0]["text"]:
                first = first if first is not None else time.perf_counter() - start
                text += msg["choices"][0]["text"]
            if msg.get("usage"):
                tokens = msg["usage"]["completion_tokens"]
    return {"first": first, "tokens": tokens, "seconds": time.perf_counter() - start, "chars": len(text)}


async def cell(url: str, key: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    async def client(i: int, http: httpx.AsyncClient) -> list[dict]:
        out = []
        for j in range(requests):
            body = {"prompt": PROMPTS[(i + j) % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8,
                    "seed": 1000 * i + j, "stream": True, "stream_options": {"include_usage": True}}
            out.append(await one_request(http, url, key, body))
        return out

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await one_request(http, url, key, {"prompt": "warm", "max_tokens": 4, "stream": True})  # warm-up
        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client(i, http) for i in range(concurrency))) for r in rs]
        wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    firsts = [r["first"] * 1000 for r in ok if r["first"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    return {"concurrency": concurrency, "requests": len(results), "errors": len(results) - len(ok),
            "tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "per_client_tokens_per_s": round(tokens / wall / concurrency, 1),
            "first_token_ms_p50": round(float(np.percentile(firsts, 50)), 1) if firsts else None,
            "first_token_ms_p95": round(float(np.percentile(firsts, 95)), 1) if firsts else None,
            "request_s_p50": round(float(np.percentile([r["seconds"] for r in ok], 50)), 3) if ok else None}


def histogram(metrics_text: str, metric: str, model: str) -> tuple[float, float]:
    """(sum, count) of the histogram ``metric`` for ``model``."""
    vals = {}
    for name in ("sum", "count"):
        m = re.search(rf'{metric}_{name}{{model="{re.escape(model)}"}} ([0-9.e+]+)', metrics_text)
        vals[name] = float(m.group(1)) if m else 0.0
    return vals["sum"], vals["count"]


def mean_between(before: str, after: str, metric: str, model: str) -> float | None:
    (s0, c0), (s1, c1) = histogram(before, metric, model), histogram(after, metric, model)
    return (s1 - s0) / (c1 - c0) if c1 > c0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--requests", type=int, default=4, help="requests per client per cell")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument("--name", default="lm_serve")
    args = ap.parse_args()

    from genforge.serve.auth import KeyStore

    tmp = Path(tempfile.mkdtemp(prefix="genforge-lm-bench-"))
    model = args.model or default_model(tmp)
    model_id = Path(model).name
    _, key = KeyStore(tmp / "keys.json").create("bench", "text")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "GENFORGE_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "genforge.cli", "serve", model, "--port", str(port), "--keys",
           str(tmp / "keys.json"), "--jobs-url", f"sqlite:///{tmp / 'jobs.db'}", "--rate-limit", "0",
           "--threads", str(args.threads), "--log-level", "warning", "--metrics-open", "--device", "cpu"]
    server = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        else:
            raise SystemExit("the server did not become ready in 120 s")
        cells = []
        for c in [int(x) for x in args.concurrency.split(",")]:
            before = httpx.get(base + "/metrics").text
            res = asyncio.run(cell(base + "/v1/completions", key, c, args.requests, args.max_tokens))
            after = httpx.get(base + "/metrics").text
            rows = mean_between(before, after, "genforge_batch_requests", model_id)
            step = mean_between(before, after, "genforge_inference_seconds", model_id)
            first = mean_between(before, after, "genforge_first_token_seconds", model_id)
            res["rows_per_decode_step"] = round(rows, 2) if rows else None
            res["decode_step_ms_mean"] = round(step * 1000, 2) if step else None
            # in the server: from a request's queueing to its first token (the rest is HTTP and the client)
            res["server_first_token_ms_mean"] = round(first * 1000, 1) if first else None
            cells.append(res)
            print(json.dumps(res), flush=True)
        base_tps = cells[0]["tokens_per_s"]
        summary = {f"speedup_{c['concurrency']}_vs_{cells[0]['concurrency']}": round(c["tokens_per_s"] / base_tps, 2)
                   for c in cells[1:]}
        load = os.getloadavg()
        save(args.name, {"model": model if args.model else "random gpt_tiny-sized GPT (char tokenizer)",
                         "params": GPT_TINY if not args.model else None, "max_tokens": args.max_tokens,
                         "requests_per_client": args.requests, "server_threads": args.threads,
                         "load_average_1_5_15": [round(x, 2) for x in load], "cells": cells, **summary,
                         "goals": {"speedup_8_vs_1": ">= 4", "first_token_ms": "<= 50"}})
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
