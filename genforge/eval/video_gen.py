"""How well a text-to-video run follows captions: clips generated for shapes_video test captions,
judged by the motion verifier (``genforge.eval.motion``), split into seen and held-out compositions
when the run held some out. The real test clips go through the same verifier, which gives its
ceiling (a verifier that misreads real clips cannot credit generated ones either). With a video
feature net (``genforge.eval.fvd``), each set also gets FVD-<net> between its generated and real clips.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import torch

from ..errors import GenforgeError
from . import motion


def _mean_flicker(clips: torch.Tensor, specs: list) -> float:
    return sum(motion.flicker(c, s) for c, s in zip(clips, specs)) / len(specs)


def composition_sets(cfg, n: int) -> dict[str, Any]:
    """name -> the first ``n`` shapes_video test clips: 'seen' and 'heldout' with a holdout, else 'all'."""
    from ..data import load_dataset

    if cfg.data.name != "shapes_video":
        raise GenforgeError(f"eval video reads shapes_video captions and specs; this run trained on "
                            f"{cfg.data.name!r}")
    base = cfg.data.model_copy(update={"split": "test", "limit": n})
    if cfg.data.holdout == "none":
        return {"all": load_dataset(base)}
    return {c: load_dataset(base.model_copy(update={"compositions": c})) for c in ("seen", "heldout")}


def score_video_run(pipe, n: int = 32, guidance: Optional[float] = None, steps: Optional[int] = None,
                    seed: int = 0, batch_size: int = 8, sets: Optional[dict[str, Any]] = None,
                    feature_net: Any = None) -> dict[str, Any]:
    """Verifier summary per composition set for generated and real clips, with flicker and timing;
    FVD-<net> per set when ``feature_net`` (a ``fvd.VideoClassifierFeatures``) is given, else a note."""
    import warnings

    from ..data.transforms import to_uint8
    from ..pipelines.video import MAX_CLIPS
    from .fvd import fvd, no_feature_net_note

    sets = composition_sets(pipe.cfg, n) if sets is None else sets
    guidance = pipe.default_guidance if guidance is None else guidance
    steps = pipe.default_steps if steps is None else steps
    report: dict[str, Any] = {"run_dir": str(pipe.run_dir), "guidance": guidance, "steps": steps, "seed": seed,
                              "frames": pipe.default_frames, "sets": {}}
    if feature_net is None:
        report["fvd_note"] = no_feature_net_note()
    else:
        report["fvd_feature_net"] = feature_net.name
    made, spent = 0, 0.0
    for name, data in sets.items():
        captions = [c if isinstance(c, str) else c[0] for c in data.column("caption")]
        if not captions:
            continue
        specs = data.column("spec")
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown-word notes: held-out words are the point here
            # the pipeline draws at most MAX_CLIPS per call; each chunk seeds from its first index
            clips = to_uint8(torch.cat([
                pipe.generate(n=len(part), prompt=part, seed=seed + i, steps=steps, guidance=guidance,
                              batch_size=batch_size)
                for i in range(0, len(captions), MAX_CLIPS) for part in [captions[i:i + MAX_CLIPS]]]))
        spent += time.perf_counter() - t0
        made += len(captions)
        real = data.column("frames")
        # a generated clip is judged against its caption (where its objects are is its own choice);
        # a real one against its scene, which also gives flicker its exact object boxes
        report["sets"][name] = {
            "n": len(captions),
            "generated": {**motion.verify_clips(clips, captions), "flicker": _mean_flicker(clips, captions)},
            "real": {**motion.verify_clips(real, specs), "flicker": _mean_flicker(real, specs)},
        }
        if feature_net is not None and len(captions) >= 2:  # a covariance needs two clips
            report["sets"][name]["fvd"] = fvd(feature_net, real, clips)
    report["clips_per_s"] = made / spent if spent else None
    return report
