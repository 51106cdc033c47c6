"""``genforge eval text2image``: pixel-verifier scores of a text2image or textgan run (the library is
``genforge.eval.text2image_eval``). Kept out of cli.py, which registers this module by importing it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import _echo_json, eval_app
from .errors import GenforgeError
from .train.checkpoint import check_writable


@eval_app.command("text2image")
def eval_text2image(
    run_dir: str = typer.Argument(..., help="text2image or textgan run directory (trained on shapes), or "
                                  "shipped name."),
    n: int = typer.Option(32, "-n", min=1, max=1024, help="Test captions per prompt set."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance (default: the run's)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the run's)."),
    seed: int = typer.Option(0),
    layout: Optional[str] = typer.Option(None, help="grid (plan the objects' cells from the caption) or off "
                                         "(default: the run's)."),
    rprecision: Optional[str] = typer.Option(None, "--rprecision", metavar="SCORER", help="Contrastive run "
                                             "dir / shipped name (e.g. clip-shapes) for R-precision (default: "
                                             "none)."),
    r: int = typer.Option(100, "--r", min=2, help="R-precision's R: the true prompt and R-1 distractors."),
    device: str = typer.Option("auto"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON report here."),
):
    """Pixel-verifier per-attribute accuracy and all-correct rate of generated images on seen
    one-object, seen two-object and held-out-composition test captions of the shapes data; the same
    for the real test scenes of those captions (the verifier's ceiling); optional R-precision."""
    from . import load
    from .eval.text2image_eval import RPrecisionScorer, check_shapes, is_gan, score_text2image_run

    if out is not None:
        check_writable(out.parent)
    pipe = load(run_dir, device=device)
    if pipe.cfg.task not in ("text2image", "textgan"):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; eval text2image needs a text2image or "
                            "textgan run")
    check_shapes(pipe.cfg)
    if is_gan(pipe):
        ignored = [f"--{k}" for k, v in (("guidance", guidance), ("steps", steps)) if v is not None]
        if ignored:
            typer.echo(f"warning: {', '.join(ignored)} ignored: a GAN makes its images in one pass", err=True)
    scorer = None
    if rprecision is not None:
        scorer = RPrecisionScorer(rprecision, r=r, seed=seed, device=device)
    report = score_text2image_run(pipe, n=n, guidance=guidance, steps=steps, seed=seed, layout=layout,
                                  scorer=scorer)
    for name, s in report["sets"].items():
        if s["n"]:
            typer.echo(f"{name}: all correct {s['generated']['all_correct']:.3f} of {s['n']} "
                       f"(real scenes {s['real']['all_correct']:.3f})", err=True)
    if out is not None:
        from .train.checkpoint import atomic_write_json

        atomic_write_json(out, report)
    _echo_json(report)
