"""Does a text-to-video model show what it is asked? Motion-verifier scores per guidance scale.

Clips are drawn for shapes_video test captions (the run's own data settings): with a holdout, the
seen and the held-out compositions separately, else all. Each clip is judged by
genforge.eval.motion against its caption (all-correct and per-attribute rates, identity frames,
flicker, and per motion kind asked for, how often the object did it), and the real test clips of
the same captions give the verifier's ceiling (genforge/eval/video_gen.py does both). Also: clips/s
of 4 clips at the pipeline's defaults and peak RSS. FVD-<net> per set and guidance with a video feature net (--feature-net, a video_classify
run; default: the shipped one, and without one the FVD lines are skipped with a note).

    python bench/video.py RUN_DIR [--clips 32] [--guidance 1,2,4] [--steps N] [--threads 2]
                          [--feature-net RUN_DIR] [--layout paths|off]

--layout: "off" leaves everything to the video model; "paths" (the default for shapes_video runs)
plans each object's path from the caption and draws each object on its own
(genforge/pipelines/video_layout.py), so directions, bounces and size changes hold by plan. Speed
is also measured for a one-object and a two-object prompt.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, save  # noqa: E402

import genforge  # noqa: E402
from genforge.eval.fvd import default_video_feature_net, video_feature_net  # noqa: E402
from genforge.eval.video_gen import composition_sets, score_video_run  # noqa: E402


def speed(pipe, prompt: str, n: int = 4, steps=None, frames=None, repeats: int = 1) -> dict:
    """Seconds for ``n`` clips of ``prompt`` (the median of ``repeats`` timings after a warm-up)."""
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.generate(n=1, prompt=prompt, steps=1, frames=frames)  # warm-up: first-call allocations
        for _ in range(repeats):
            t0 = time.perf_counter()
            pipe.generate(n=n, prompt=prompt, steps=steps, frames=frames)
            times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]
    return {"prompt": prompt, "clips": n, "frames": frames or pipe.default_frames, "steps": steps or pipe.default_steps,
            "seconds": round(dt, 3), "clips_per_s": round(n / dt, 4), "all_seconds": [round(t, 3) for t in times]}


def _set_line(name: str, scores: dict) -> str:
    gen = scores["generated"]
    parts = ", ".join(f"{k} object{'s' * (k != '1')} {v['all_correct']:.3f} of {v['n']}"
                      for k, v in gen.get("by_objects", {}).items())
    kinds = ", ".join(f"{k} {v['motion']:.2f} of {v['n']}" for k, v in gen.get("by_motion", {}).items())
    line = f"{name} {gen['all_correct']:.3f} [{parts}] (real {scores['real']['all_correct']:.3f}; motion right " \
           f"per asked kind: {kinds})"
    return line + (f" {scores['fvd']['metric']} {scores['fvd']['value']:.2f}" if "fvd" in scores else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--clips", type=int, default=32, help="test captions per composition set")
    ap.add_argument("--guidance", default="1,2,4")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the run's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="video")
    ap.add_argument("--feature-net", default=None, help="video_classify run dir / shipped name for FVD")
    ap.add_argument("--layout", default=None, help="paths or off (default: the run's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    pipe = genforge.load(args.run, device="cpu")
    layout = pipe.default_layout = pipe.check_layout(args.layout)  # every draw below uses it
    sets = composition_sets(pipe.cfg, args.clips)
    net = video_feature_net(args.feature_net, "cpu") if args.feature_net else default_video_feature_net("cpu")
    quality, fvd_note = {}, None
    for g in [float(x) for x in args.guidance.split(",")]:
        report = score_video_run(pipe, guidance=g, steps=args.steps, seed=args.seed, sets=sets, feature_net=net)
        quality[f"guidance_{g:g}"] = report["sets"]
        fvd_note = report.get("fvd_note")
        print(f"guidance {g:g}: " + ", ".join(_set_line(k, v) for k, v in report["sets"].items()), flush=True)
    if fvd_note:
        print(fvd_note, flush=True)
    first = next(iter(sets.values())).column("caption")[0]
    pair = next((c for c in next(iter(sets.values())).column("caption") if " while " in c), None)
    save(args.name, {"run": str(pipe.run_dir), "steps": args.steps or pipe.default_steps, "layout": layout,
                     "first_frame_model": pipe.first_frame_model if layout == "paths" else None,
                     "frames": pipe.default_frames, "fps": pipe.fps,
                     "params": sum(p.numel() for p in pipe.model.parameters()),
                     "clips_per_set": {k: len(v) for k, v in sets.items()}, "quality": quality,
                     "fvd_feature_net": None if net is None else net.name, "fvd_note": fvd_note,
                     "speed_4_clips_default": speed(pipe, first, steps=args.steps),
                     "speed_4_clips_two_objects": None if pair is None else speed(pipe, pair, steps=args.steps),
                     "speed_16_frames": [speed(pipe, p, n=1, steps=args.steps, frames=16, repeats=3)
                                         for p in [first] + ([pair] if pair else [])],
                     "peak_rss_mb": round(peak_rss_mb(), 1)})


if __name__ == "__main__":
    main()
