"""First audio through the API: how long after the request the first chunk of a 20-word sentence's
speech arrives from `genforge serve`, as a streaming client sees it.

    python bench/tts_api.py [--model voice-joe] [--requests 5] [--threads 2] [--format pcm|wav]

A server is started with the voice (as `genforge serve MODEL --threads N`), one warm-up request is
sent, then ``--requests`` requests one after another, each read as a stream with httpx: the time to
the first body bytes, the time to the last, and the audio seconds received. Median and max in JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402
from serve_load import Server, _free_port  # noqa: E402

from genforge.serve.auth import KeyStore  # noqa: E402

#: 20 words, one sentence
SENTENCE = ("The quick brown fox jumped over the lazy dog while the farmer watched from the window of "
            "his old house.")


def one_request(client: httpx.Client, url: str, key: str, body: dict) -> dict:
    start = time.perf_counter()
    first, size = None, 0
    with client.stream("POST", f"{url}/v1/audio/speech", json=body,
                       headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status_code != 200:
            raise SystemExit(f"speech request failed: {r.status_code} {r.read()[:300]!r}")
        rate = int(r.headers.get("X-Sample-Rate", "22050"))
        for chunk in r.iter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - start
            size += len(chunk)
    total = time.perf_counter() - start
    return {"first_chunk_ms": round(1000 * first, 1), "total_ms": round(1000 * total, 1),
            "audio_s": round(size / 2 / rate, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="voice-joe")
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--format", default="pcm", choices=("pcm", "wav"))
    ap.add_argument("--name", default="tts_api")
    args = ap.parse_args()
    assert len(SENTENCE.split()) == 20
    with tempfile.TemporaryDirectory(prefix="gf_tts_api_") as tmp:
        root = Path(tmp)
        _, key = KeyStore(root / "keys.json").create("bench", "generate")
        server = Server(args.model, _free_port(), root / "keys.json", root / "jobs.db", 8, 10.0, args.threads, 0.25)
        try:
            server.wait_ready(timeout=300)
            body = {"model": Path(args.model).name, "input": SENTENCE, "response_format": args.format}
            with httpx.Client(timeout=120) as client:
                one_request(client, server.url, key, body)  # warm-up: first-call allocations
                runs = [one_request(client, server.url, key, body) for _ in range(args.requests)]
        finally:
            server.stop()
    firsts = [r["first_chunk_ms"] for r in runs]
    print(f"first chunk: median {statistics.median(firsts):.1f} ms, max {max(firsts):.1f} ms "
          f"({args.requests} requests, {args.format})", flush=True)
    save(args.name, {"model": args.model, "sentence": SENTENCE, "words": 20, "format": args.format,
                     "server_threads": args.threads, "first_chunk_ms_median": statistics.median(firsts),
                     "first_chunk_ms_max": max(firsts), "requests": runs})


if __name__ == "__main__":
    main()
