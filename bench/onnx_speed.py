"""Per-call latency of the shipped models' ONNX exports under onnxruntime against PyTorch eager.

Each shipped model is exported as `genforge export --format onnx` writes it, then timed in this one
process on the same inputs: the GAN generators (latent -> image), one diffusion denoiser call (one of
the 25 a sample takes) and the classifiers. Both runtimes get the same thread count; their calls
alternate in rounds (A, B, A, B, ...) so machine noise hits both alike, and each figure is the median
over rounds of a round's mean latency. ratio = PyTorch / onnxruntime (above 1: onnxruntime is faster).

    python bench/onnx_speed.py [--models dcgan-fashion,...] [--batches 1,16] [--rounds 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
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
from genforge.export import check_onnx, export_onnx_file, onnx_graph  # noqa: E402
from genforge.pipelines import ASSETS_DIR, shipped_models  # noqa: E402


def _round_ms(fn, budget_s: float) -> float:
    """Mean milliseconds per call over as many calls as fit in ``budget_s`` (at least 3)."""
    calls, t0 = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < budget_s:
        fn()
        calls += 1
    return (time.perf_counter() - t0) / calls * 1000


GRAPH_TASKS = ("gan", "diffusion", "classify")


def _task(name: str) -> str:
    return json.loads((ASSETS_DIR / name / "config.json").read_text()).get("task", "")


def bench_model(name: str, batches: list[int], rounds: int, budget_s: float, threads: int, tmp: Path) -> dict:
    import onnxruntime as ort

    pipe = genforge.load(name, device="cpu")
    module, inputs, output, _ = onnx_graph(pipe)
    path = tmp / f"{name}.onnx"
    export_onnx_file(module, inputs, output, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = {"task": pipe.cfg.task, "what": {"gan": "generator", "diffusion": "one denoiser call",
                                           "classify": "classifier"}[pipe.cfg.task]}
    for b in batches:
        _, feed_t, _, _ = onnx_graph(pipe, batch=b)
        max_diff = check_onnx(path, module, feed_t)
        feed = {k: v.numpy() for k, v in feed_t.items()}
        args = tuple(feed_t.values())

        def run_torch():
            with torch.inference_mode():
                module(*args)

        def run_ort():
            sess.run(None, feed)

        run_torch(), run_ort()  # warm-up: first calls allocate and pick kernels
        t_ms, o_ms = [], []
        for _ in range(rounds):
            t_ms.append(_round_ms(run_torch, budget_s))
            o_ms.append(_round_ms(run_ort, budget_s))
        pt, ox = statistics.median(t_ms), statistics.median(o_ms)
        out[f"batch_{b}"] = {"pytorch_ms": round(pt, 3), "onnxruntime_ms": round(ox, 3),
                             "ratio_pytorch_over_onnxruntime": round(pt / ox, 2),
                             "pytorch_ms_rounds": [round(x, 3) for x in t_ms],
                             "onnxruntime_ms_rounds": [round(x, 3) for x in o_ms],
                             "max_abs_diff": max_diff}
        print(f"{name:24s} batch {b:3d}: pytorch {pt:8.2f} ms  onnxruntime {ox:8.2f} ms  "
              f"ratio {pt / ox:5.2f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # speech runs have their own ONNX bench (bench/tts.py); these are the single-graph exports
    ap.add_argument("--models", default=",".join(n for n in shipped_models() if _task(n) in GRAPH_TASKS))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.5, help="Seconds per runtime per round.")
    # one thread each by default: on a busy machine torch's spinning worker threads made these small
    # models' latency swing by 10-100x (classifier-fashion at batch 1: 480 ms with 2 threads on a loaded
    # 2-core machine, 5 ms with 1), which would time the OS scheduler, not the runtimes
    ap.add_argument("--threads", type=int, default=1, help="Threads for both runtimes (0: torch's default).")
    ap.add_argument("--name", default="onnx_speed", help="Result file name under bench/results/.")
    a = ap.parse_args()
    threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    batches = [int(x) for x in a.batches.split(",")]
    results, load_before = {}, os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            results[name] = bench_model(name, batches, a.rounds, a.budget, threads, Path(tmp))
    import onnxruntime

    # the load average shows how busy the machine was: other processes slow both runtimes alike
    save(a.name, {"onnxruntime": onnxruntime.__version__, "threads_each": threads, "rounds": a.rounds,
                  "budget_s_per_round": a.budget,
                  "load_average_before_after": [load_before[0], os.getloadavg()[0]],
                  "models": results})


if __name__ == "__main__":
    main()
