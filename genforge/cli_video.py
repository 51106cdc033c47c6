"""Video commands: ``genforge sample`` on a video run (dispatched here from cli.sample) and
``genforge eval video``. Kept out of cli.py, which registers this module by importing it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import _echo_json, eval_app
from .errors import GenforgeError
from .train.checkpoint import atomic_write_png, check_writable


def clips_side_by_side(clips):
    """(n, T, C, H, W) uint8 -> one (T, C, H, n*W + gaps) clip, the clips left to right 2 px apart."""
    import torch

    n, t, c, h, w = clips.shape
    if n == 1:
        return clips[0]
    out = torch.full((t, c, h, n * w + 2 * (n - 1)), 128, dtype=clips.dtype)
    for i in range(n):
        out[..., i * (w + 2):i * (w + 2) + w] = clips[i]
    return out


def read_first_frame(path: Path):
    """The image at ``path`` as a PIL image (the pipeline resizes it), or a one-line error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise GenforgeError(f"--first-frame {path}: no such file") from None
    except IsADirectoryError:
        raise GenforgeError(f"--first-frame {path} is a directory; give an image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise GenforgeError(f"--first-frame {path} is not a readable image ({type(e).__name__}); give a PNG or "
                            "JPEG file") from None


def sample_video(pipe, *, n: Optional[int], seed: int, steps: Optional[int], sampler: Optional[str],
                 guidance: Optional[float], labels: Optional[str], grid: Optional[Path], out_dir: Optional[Path],
                 scale: int, prompt: Optional[str], negative_prompt: Optional[str], frames: Optional[int],
                 fps: Optional[int], out: Optional[Path], first_frame: Optional[Path] = None,
                 layout: Optional[str] = None) -> None:
    """``genforge sample`` for a video run: --out FILE (.mp4/.gif/.png strip) and/or --grid (each clip's
    frames in a row); --first-frame IMAGE starts every clip from that image. Every argument is checked
    before sampling, so a refusal writes nothing."""
    from .data.transforms import make_grid, to_uint8
    from .tasks.video import pick_frames
    from .train.logging import step_progress
    from .video_io import WRITE_FORMATS, write_video

    if labels:
        raise GenforgeError(f"{pipe.run_dir.name} is a video run: it takes --prompt, not --labels")
    if out_dir is not None:
        raise GenforgeError("video runs write one file: use --out FILE.mp4 (or .gif, .png) and/or --grid FILE.png")
    if out is not None and out.suffix.lower() not in WRITE_FORMATS:
        raise GenforgeError(f"cannot write video {out.name!r}: unsupported extension {out.suffix or '(none)'!r}; "
                            f"use one of: {', '.join(WRITE_FORMATS)}")
    if grid is not None and grid.suffix.lower() != ".png":
        raise GenforgeError(f"--grid writes a PNG; got {grid.name!r}")
    n = 1 if n is None else n
    fps = pipe.fps if fps is None else fps
    if not 1 <= fps <= 60:
        raise GenforgeError(f"--fps must be from 1 to 60, got {fps}")
    frames = pipe.check_frames(frames)
    layout = pipe.check_layout(layout)
    steps = pipe.default_steps if steps is None else steps
    pipe.check_sampling(steps, sampler or "dpm++", pipe.default_guidance if guidance is None else guidance, seed)
    first = None if first_frame is None else read_first_frame(first_frame)
    with step_progress("sample") as report:
        clips = to_uint8(pipe.generate(n=n, seed=seed, steps=steps, sampler=sampler or "dpm++", prompt=prompt or "",
                                       negative_prompt=negative_prompt, guidance=guidance, frames=frames,
                                       first_frame=first, progress=report, layout=layout))
    written = []
    if out is not None:
        write_video(out, clips_side_by_side(clips), fps)
        written.append(f"{out} ({n} clip{'s' * (n > 1)} of {frames} frames at {fps} fps)")
    if grid is not None:
        keep = pick_frames(frames, min(frames, 8))
        atomic_write_png(grid, make_grid(clips[:, keep].reshape(-1, *clips.shape[2:]), nrow=len(keep), scale=scale))
        written.append(str(grid))
    typer.echo("wrote " + ", ".join(written))


@eval_app.command("video")
def eval_video(
    run_dir: str = typer.Argument(..., help="Video run directory (trained on shapes_video)."),
    n: int = typer.Option(32, "-n", min=1, max=1024, help="Test captions per composition set."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance (default: the run's)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the run's)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON report here."),
    feature_net: Optional[str] = typer.Option(None, "--feature-net", help="video_classify run dir / shipped "
                                              "name for FVD-<name> (default: the shipped one; none: no FVD)."),
):
    """Motion-verifier scores of generated clips: all-correct and per-attribute rates on seen and
    held-out compositions, object identity across frames, flicker; the same for real test clips
    (the verifier's own ceiling); FVD-<feature net> between generated and real clips per set."""
    from . import load
    from .eval.video_gen import score_video_run
    from .pipelines.video import VideoPipeline

    if out is not None:
        check_writable(out.parent)
    pipe = load(run_dir, device=device)
    if not isinstance(pipe, VideoPipeline):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; eval video needs a video run")
    from .eval.fvd import default_video_feature_net, video_feature_net

    net = video_feature_net(feature_net, device) if feature_net else default_video_feature_net(device)
    report = score_video_run(pipe, n=n, guidance=guidance, steps=steps, seed=seed, feature_net=net)
    if net is None:
        typer.echo(report["fvd_note"], err=True)
    if out is not None:
        from .train.checkpoint import atomic_write_json

        atomic_write_json(out, report)
    _echo_json(report)
