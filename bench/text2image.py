"""Does a text-to-image model draw what it is asked? Pixel-verified scores per guidance scale.

Three prompt sets from the shapes test split (the run's own data settings): seen one-object
prompts, seen two-object prompts (a relation between them), and held-out compositions
(data.compositions=heldout: colour-shape pairs and relations the training split never showed).
One image per prompt, scored by genforge.eval.verify against the prompt itself, so a two-object
prompt is judged on its relation, not on cells it never named. Also: images/s for 8 images at the
pipeline's default steps and guidance, and peak RSS.

    python bench/text2image.py [RUN_DIR] [--gan TEXTGAN_RUN] [--prompts 64] [--guidance 1,2,3,5]
                               [--layout grid|off] [--rprecision CLIP_RUN [--rprecision-guidance 2] [--r 100]]

--layout: "off" leaves the objects' places to the model; "grid" plans them from the caption first
(genforge/pipelines/layout.py), so a two-object prompt's relation holds by plan and the model draws
each object at its cell; default: the run's (grid for models trained on shapes).

--rprecision adds R-precision (genforge/eval/rprecision.py) per prompt set, judged by a contrastive
run: of the generated images, and of the real test scenes the prompts describe (the ceiling).

The prompt sets and the scoring are genforge/eval/text2image_eval.py's, which `genforge eval text2image`
runs at one guidance with the real scenes' verifier ceiling beside each set.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, save  # noqa: E402

import genforge  # noqa: E402
from genforge.eval.text2image_eval import RPrecisionScorer, draw, judge, prompt_sets  # noqa: E402


def rprecision(pipe, sets: dict[str, list[str]], real: dict, scorer_run: str, guidances: list[float],
               r: int, seed: int, pool_size: int, steps: int | None = None) -> dict:
    """R-precision per prompt set of real test scenes and of generated images; distractors come from
    the scorer's own test captions (a stream neither model trained on)."""
    scorer = RPrecisionScorer(scorer_run, pool_size=pool_size, r=r, seed=seed)
    out: dict = {**scorer.info(), "real": scorer.score_sets(real, sets)}
    for g in guidances:
        out[f"guidance_{g:g}"] = scorer.score_sets(
            {k: draw(pipe, ps, seed=seed, guidance=g, steps=steps) for k, ps in sets.items()}, sets)
    for k, v in out.items():
        if isinstance(v, dict):
            print(f"R-precision (R={r}) {k}: " + ", ".join(f"{n} {x:.3f}" for n, x in v.items()), flush=True)
    return out


def speed(pipe, prompt: str, reps: int = 3, **kw) -> dict:
    pipe.generate(n=8, seed=0, prompt=prompt, **kw)  # warm-up
    times = []
    for r in range(reps):
        t0 = time.perf_counter()
        pipe.generate(n=8, seed=r, prompt=prompt, **kw)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"seconds_for_8": round(med, 3), "images_per_s": round(8 / med, 2),
            "all_seconds": [round(t, 3) for t in times]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", default="text2image-shapes")
    ap.add_argument("--gan", default=None, help="a textgan run to measure on the same prompts")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per set")
    ap.add_argument("--guidance", default="1,2,3,5")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the run's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layout", default=None, help="grid or off (default: the run's)")
    ap.add_argument("--name", default="text2image")
    ap.add_argument("--rprecision", default=None, metavar="CLIP_RUN", help="a contrastive run (e.g. clip-shapes) "
                    "to score R-precision with")
    ap.add_argument("--rprecision-guidance", default="2")
    ap.add_argument("--r", type=int, default=100, help="R: the true prompt and R-1 distractors")
    ap.add_argument("--pool", type=int, default=2000, help="test captions the distractors are drawn from")
    ap.add_argument("--skip-verify", action="store_true", help="only the R-precision figures")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    pipe = genforge.load(args.run, device="cpu")
    layout = pipe.default_layout = pipe.check_layout(args.layout)  # every draw below uses it
    real: dict = {}
    sets = prompt_sets(pipe.cfg, args.prompts, real)
    scales = [] if args.skip_verify else [float(g) for g in args.guidance.split(",")]
    if args.rprecision:
        rp = rprecision(pipe, sets, real, args.rprecision,
                        [float(g) for g in args.rprecision_guidance.split(",")], args.r, args.seed, args.pool,
                        args.steps)
    quality: dict = {}
    for g in scales:
        quality[f"guidance_{g:g}"] = {
            name: judge(draw(pipe, ps, seed=args.seed, guidance=g, steps=args.steps), ps) for name, ps in sets.items()}
        print(f"guidance {g:g}: " + ", ".join(f"{k} {v['all_correct']:.3f}"
                                               for k, v in quality[f"guidance_{g:g}"].items()), flush=True)
    result = {"run": str(pipe.run_dir), "steps": args.steps or pipe.default_steps, "layout": layout,
              "default_guidance": pipe.default_guidance,
              "params": sum(p.numel() for p in pipe.model.parameters()),
              "prompts_per_set": {k: len(v) for k, v in sets.items()}, "quality": quality}
    if args.rprecision:
        result["rprecision"] = rp
    if not args.skip_verify:
        result["speed_8_images_default"] = speed(pipe, sets["seen_two_objects"][0], steps=args.steps)
    if args.gan:
        gan = genforge.load(args.gan, device="cpu")
        result["gan"] = {"run": str(gan.run_dir), "quality": {
            name: judge(draw(gan, ps, seed=args.seed), ps) for name, ps in sets.items()},
            "speed_8_images": speed(gan, sets["seen_two_objects"][0])}
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    save(args.name, result)


if __name__ == "__main__":
    main()
