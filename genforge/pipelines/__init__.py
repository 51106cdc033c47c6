"""Pipelines turn a run directory back into something callable. ``load_pipeline`` picks the class
from the task recorded in config.json."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import RunConfig, config_from_json
from ..errors import GenforgeError
from ..models import build_model
from ..train.checkpoint import STATE_DIR, load_weights
from ..device import pick_device

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


def shipped_models() -> list[str]:
    return sorted(p.name for p in ASSETS_DIR.iterdir() if (p / "config.json").is_file()) \
        if ASSETS_DIR.is_dir() else []


def shipped_default(task: str, what: str, recipe: str) -> str:
    """The name of the shipped model of ``task`` (the first by name), for commands whose model is
    optional; a one-line error naming how to get one when none is installed."""
    import json

    for name in shipped_models():
        try:
            if json.loads((ASSETS_DIR / name / "config.json").read_text()).get("task") == task:
                return name
        except (OSError, ValueError):
            continue
    raise GenforgeError(f"no {what} is installed; give a run directory (train one with "
                        f"genforge train {recipe})")


def resolve_run_dir(path: str | Path) -> Path:
    """A run directory, or the name of a shipped default model (``genforge/assets/NAME``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise GenforgeError(f"{p} is not a genforge run directory (no config.json)")
        return p
    if (ASSETS_DIR / str(path) / "config.json").is_file() and "/" not in str(path):
        return ASSETS_DIR / str(path)
    shipped = ", ".join(shipped_models()) or "none installed"
    raise GenforgeError(f"no run directory {str(path)!r}; give a path or a shipped model: {shipped}")


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete resume points kept under ``train_state/`` (oldest first)."""
    root = Path(run_dir) / STATE_DIR
    steps = []
    for d in root.glob("step_*") if root.is_dir() else []:
        if (d / "state.json").is_file() and d.name[5:].isdigit():
            steps.append(int(d.name[5:]))
    return sorted(steps)


def weights_path(run_dir: Path, step: int | None = None) -> Path:
    """The weights to run: ``model.safetensors``, or those of the resume point at ``step``. A resume
    point keeps the raw and the EMA weights; like the final model.safetensors it prefers the EMA."""
    if step is None:
        return Path(run_dir) / "model.safetensors"
    state = Path(run_dir) / STATE_DIR / f"step_{step:08d}"
    if step < 0 or not (state / "state.json").is_file():
        kept = ", ".join(map(str, checkpoint_steps(run_dir))) or "none (the run has no train_state/)"
        raise GenforgeError(f"{run_dir} has no checkpoint for step {step}; available steps: {kept}")
    ema = state / "ema.safetensors"
    return ema if ema.is_file() else state / "model.safetensors"


def load_model(run_dir: Path, device: torch.device,
               step: int | None = None) -> tuple[RunConfig, torch.nn.Module]:
    cfg = config_from_json(run_dir / "config.json")
    weights = weights_path(run_dir, step)  # a missing step fails before the model is built
    try:
        model = build_model(cfg.model.name, **cfg.model.params)
    except (TypeError, ValueError) as e:
        raise GenforgeError(f"{run_dir}/config.json describes a model that cannot be built: {e}") from None
    load_weights(model, weights)
    return cfg, model.to(device).eval()


class Pipeline:
    def __init__(self, cfg: RunConfig, model: torch.nn.Module, run_dir: Path, device: torch.device):
        self.cfg, self.model, self.run_dir, self.device = cfg, model, run_dir, device

    @property
    def class_names(self) -> list[str]:
        return list(self.cfg.class_names or [])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.run_dir)!r}, model={self.cfg.model.name!r})"


def load_pipeline(path: str | Path, device: str = "auto", step: int | None = None,
                  compile: bool = False) -> Pipeline:
    """The pipeline for a run directory; ``step`` picks a kept checkpoint (train_state/step_N)
    instead of the final weights; ``compile`` samples image models through torch.compile."""
    from .classify import ClassifierPipeline
    from .image import ImagePipeline

    run_dir = resolve_run_dir(path)
    dev = pick_device(device)
    cfg, model = load_model(run_dir, dev, step)
    by_task = {"gan": ImagePipeline, "diffusion": ImagePipeline, "classify": ClassifierPipeline}
    from .recognize import RecognizerPipeline

    by_task["recognize"] = RecognizerPipeline
    from .text2image import TextToImagePipeline

    by_task["text2image"] = TextToImagePipeline
    from .caption import CaptionPipeline

    by_task["caption"] = CaptionPipeline
    from .textgan import TextGANPipeline

    by_task["textgan"] = TextGANPipeline
    from .contrastive import ContrastivePipeline

    by_task["contrastive"] = ContrastivePipeline
    from .lm import LMPipeline

    by_task["lm"] = LMPipeline
    from .translate import TranslatePipeline

    by_task["translate"] = TranslatePipeline
    from .speech import SpeechPipeline, VocoderPipeline

    by_task.update(tts=SpeechPipeline, vocoder=VocoderPipeline)
    from .video import VideoPipeline

    by_task["video"] = VideoPipeline
    from .video_classify import VideoClassifierPipeline

    by_task["video_classify"] = VideoClassifierPipeline
    if cfg.task not in by_task:
        raise GenforgeError(f"no pipeline for task {cfg.task!r}; known: {', '.join(by_task)}")
    pipe = by_task[cfg.task](cfg, model, run_dir, dev)
    if compile and isinstance(pipe, ImagePipeline):
        pipe.compile()
    return pipe
