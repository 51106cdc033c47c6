"""Does a text-to-image run draw what it is asked? Pixel-verified scores on three prompt sets.

The sets come from the shapes test split under the run's own data settings (image size, object
count): seen one-object prompts, seen two-object prompts (a relation between them), and held-out
compositions (``data.compositions=heldout``: colour-shape pairs and relations the default hold-out
keeps out of training). One image per prompt, judged by ``genforge.eval.verify`` against the prompt
itself, so a two-object prompt is judged on its relation, not on cells it never named. The real test
scenes of the same captions go through the same verifier: its ceiling (exact on rendered scenes at
32 px and above). With a contrastive scorer (``genforge.eval.rprecision``) each set also gets
R-precision, of the generated images and of the real scenes.

``genforge eval text2image`` and ``bench/text2image.py`` both build on these functions; diffusion
(``text2image``) and GAN (``textgan``) runs are drawn through ``draw``, which passes a GAN only what
it reads.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Optional

import torch

from ..errors import GenforgeError

SETS = ("seen_one_object", "seen_two_objects", "heldout")


def is_gan(pipe) -> bool:
    return pipe.cfg.task == "textgan"


def check_shapes(cfg) -> None:
    """A one-line error unless the run trained on shapes scenes: the verifier reads nothing else."""
    if cfg.data.name != "shapes":
        raise GenforgeError(f"the pixel verifier reads shapes scenes only; this run trained on {cfg.data.name!r} "
                            "(eval text2image needs a text2image or textgan run trained with data.name=shapes)")


def prompt_sets(cfg, n: int, scenes: Optional[dict] = None) -> dict[str, list[str]]:
    """The first ``n`` test captions per set; ``scenes``, when given, receives each set's real test
    images (uint8) alongside. A set holds fewer than ``n`` where the run's data has few such scenes
    (none of two objects with ``data.max_objects=1``)."""
    from ..data import load_dataset

    check_shapes(cfg)
    data = cfg.data.model_copy(update={"holdout": "default", "split": "test"})

    def captions(name: str, compositions: str, keep) -> list[str]:
        # the stream is fixed per index, so a larger prefix only adds scenes
        got = load_dataset(data.model_copy(update={"compositions": compositions, "limit": 6 * n,
                                                    "num_items": max(data.num_items, 6 * n)}))
        rows = [i for i, s in enumerate(got.column("spec")) if keep(s)][:n]
        if scenes is not None:
            scenes[name] = got.column("image")[torch.tensor(rows, dtype=torch.long)]
        return [got.column("caption")[i] for i in rows]

    return {"seen_one_object": captions("seen_one_object", "seen", lambda s: len(s.objects) == 1),
            "seen_two_objects": captions("seen_two_objects", "seen", lambda s: len(s.objects) == 2),
            "heldout": captions("heldout", "heldout", lambda s: True)}


def judge(images: torch.Tensor, prompts: list[str]) -> dict[str, Any]:
    """Verifier summary of images (float in [-1, 1] or uint8) against their prompts, rounded to 4 places."""
    from ..data.transforms import to_uint8
    from .verify import score

    report = score(images if images.dtype == torch.uint8 else to_uint8(images), prompts)
    return {"n": report["n"], "all_correct": round(report["all_correct"], 4),
            "accuracy": {k: (None if v is None else round(v, 4)) for k, v in report["accuracy"].items()}}


def draw(pipe, prompts: list[str], seed: int = 0, guidance: Optional[float] = None, steps: Optional[int] = None,
         layout: Optional[str] = None, progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """One image per prompt (float in [-1, 1]); a GAN is given neither guidance, steps nor layout,
    which it has no use for. None: the pipeline's default."""
    if is_gan(pipe):
        return pipe.generate(n=len(prompts), seed=seed, prompt=prompts)
    return pipe.generate(n=len(prompts), seed=seed, prompt=prompts, guidance=guidance, steps=steps, layout=layout,
                         progress=progress)


# ---- R-precision ---------------------------------------------------------------------------------
class RPrecisionScorer:
    """A contrastive run and its distractor pool: the first ``pool_size`` captions of the scorer's own
    test split (a stream neither model trained on)."""

    def __init__(self, run: str, pool_size: int = 2000, r: int = 100, seed: int = 0, device: str = "cpu"):
        from ..data import load_dataset
        from .rprecision import load_scorer

        self.name, self.r, self.seed = str(run), r, seed
        self.model, self.tokenizer, cfg = load_scorer(run, device)
        pool_data = cfg.data.model_copy(update={"split": "test", "limit": pool_size,
                                                "num_items": max(cfg.data.num_items, pool_size)})
        self.pool = [c if isinstance(c, str) else c[0] for c in load_dataset(pool_data).column("caption")]
        if not 2 <= r <= len(self.pool):  # the first of the checks; draw_distractors makes the exact one
            raise GenforgeError(f"R must be from 2 to the pool's {len(self.pool)} captions, got {r}")

    def info(self) -> dict[str, Any]:
        return {"scorer": self.name, "r": self.r, "pool": len(self.pool), "seed": self.seed}

    def check_size(self, size: int) -> None:
        if size != self.model.image_size:
            raise GenforgeError(f"R-precision scorer {self.name} reads {self.model.image_size} px images; this run "
                                f"draws {size} px (give a scorer trained at the run's image size)")

    def score(self, images: torch.Tensor, prompts: list[str]) -> float:
        """R-precision of images (float in [-1, 1] or uint8) drawn for ``prompts``, rounded to 4 places."""
        from ..data.transforms import to_float
        from .rprecision import score_images

        self.check_size(images.shape[-1])
        x = to_float(images) if images.dtype == torch.uint8 else images
        return round(score_images(self.model, self.tokenizer, x, prompts, self.pool, self.r, self.seed), 4)

    def score_sets(self, images: dict[str, torch.Tensor], sets: dict[str, list[str]]) -> dict[str, float]:
        return {k: self.score(images[k], ps) for k, ps in sets.items() if ps}


# ---- the whole report ----------------------------------------------------------------------------
def score_text2image_run(pipe, n: int = 32, guidance: Optional[float] = None, steps: Optional[int] = None,
                         seed: int = 0, layout: Optional[str] = None, scorer: Optional[RPrecisionScorer] = None,
                         progress: bool = True) -> dict[str, Any]:
    """Verifier summary per prompt set of generated images and of the real test scenes (the ceiling),
    images/s, and R-precision of both where ``scorer`` is given. ``guidance``/``steps``/``layout``
    None: the run's defaults (a GAN has none). ``progress``: a bar per set on stderr."""
    from ..train.logging import step_progress

    gan = is_gan(pipe)
    if gan and layout not in (None, "off"):
        raise GenforgeError(f"{pipe.run_dir.name} is a GAN: it draws the whole image in one pass, with no "
                            "layout to plan; leave --layout out")
    if not gan:
        layout = pipe.check_layout(layout)
        guidance = pipe.default_guidance if guidance is None else guidance
        steps = pipe.default_steps if steps is None else steps
        pipe.check_sampling(steps, "dpm++", guidance, seed)  # every value checked before any drawing
    size = int(pipe.cfg.data.image_size)
    if scorer is not None:
        scorer.check_size(size)
    real: dict[str, torch.Tensor] = {}
    sets = prompt_sets(pipe.cfg, n, real)
    report: dict[str, Any] = {"run_dir": str(pipe.run_dir), "task": pipe.cfg.task,
                              "guidance": None if gan else guidance, "steps": None if gan else steps,
                              "layout": "off" if gan else layout, "seed": seed, "image_size": size, "sets": {}}
    if pipe.cfg.data.holdout == "none":
        report["note"] = ("this run trained with data.holdout=none, so its training data held the "
                          "'heldout' compositions too")
    made, spent = 0, 0.0
    generated: dict[str, torch.Tensor] = {}
    for name, prompts in sets.items():
        if not prompts:
            report["sets"][name] = {"n": 0, "note": "the run's data has no such test scenes"}
            continue
        t0 = time.perf_counter()
        with step_progress(name, n_chunks=-(-len(prompts) // 64), enabled=progress and not gan) as report_step, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # prompt notes (words cut or unseen) would repeat per set
            generated[name] = draw(pipe, prompts, seed=seed, guidance=guidance, steps=steps, layout=layout,
                                   progress=report_step)
        spent += time.perf_counter() - t0
        made += len(prompts)
        report["sets"][name] = {"n": len(prompts), "generated": judge(generated[name], prompts),
                                "real": judge(real[name], prompts)}
    report["images_per_s"] = round(made / spent, 3) if spent else None
    if scorer is not None:
        report["rprecision"] = {**scorer.info(), "generated": scorer.score_sets(generated, sets),
                                "real": scorer.score_sets(real, sets)}
    return report
