"""Tasks: what one training step does and what it reports. The trainer knows only this protocol.

A task owns ``model`` (everything saved in model.safetensors) and ``nets`` (name -> module, one
optimizer each; the trainer may wrap them for DDP). ``collate(data, idx, generator)`` turns the
examples the trainer picked into a batch (the task decides what a batch is: images, padded tokens,
audio crops); ``step(batch, optimize)`` computes losses and calls ``optimize(name, loss)`` once per
optimizer it updates, returning detached scalars to log.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import RunConfig
from ..data import Examples
from ..data.transforms import random_flip, to_float
from ..errors import GenforgeError
from ..models import build_model
from ..registry import MODELS, TASKS, check_kwargs

Optimize = Callable[[str, torch.Tensor], None]


class Task:
    #: which model names this task trains; used for a clear error on a mismatch
    models: tuple[str, ...] = ()

    def __init__(self, cfg: RunConfig, data: Examples | None = None, run_dir: Path | None = None):
        # run_dir: where a task that derives files from the data (a tokenizer) keeps them, so a
        # resumed run reads the same ones; None when the task is built outside a training run
        self.cfg, self.run_dir = cfg, run_dir
        if cfg.model.name not in self.models:
            raise GenforgeError(
                f"task {cfg.task!r} cannot train model {cfg.model.name!r}; use one of: {', '.join(self.models)}"
            )
        self.model: nn.Module = build_model(cfg.model.name, **cfg.model.params)
        self.nets: dict[str, nn.Module] = {"model": self.model}

    #: the example fields the task trains on; a dataset without one of them is refused up front
    needs: tuple[str, ...] = ("image",)

    def collate(self, data: Examples, idx: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """A batch of the examples ``idx`` on the CPU (the trainer moves tensors to the device).

        The image tasks' batch: float images in [-1, 1], flipped at random when data.flip is set
        (``generator`` is seeded per step, so a resumed run replays the same flips), and labels
        when the dataset has them.
        """
        images = to_float(data.column("image")[idx])
        if self.cfg.data.flip:
            images = random_flip(images, generator)
        batch: dict[str, Any] = {"image": images}
        if data.has("label"):
            batch["label"] = data.column("label")[idx]
        return batch

    def step(self, batch: dict[str, torch.Tensor], optimize: Optimize) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    #: images per row of the progress grids; conditional models put one class on each row
    grid_columns = 8

    def preview(self, data: Examples, n: int = 64) -> torch.Tensor | None:
        """A few training examples as uint8 images, saved beside the first samples for comparison."""
        return data.column("image")[:n] if data.has("image") else None

    def monitor(self, step: int, values: dict[str, float]) -> str | None:
        """Look at the logged values of ``step``; a returned sentence is shown to the user as a warning
        (a training pathology this task can recognise, and its fix)."""
        return None

    @torch.no_grad()
    def sample_images(self, model: nn.Module, n: int = 64, seed: int = 0) -> torch.Tensor | None:
        """Float images in [-1, 1] for the progress grids, or None for tasks without samples."""
        return None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {}


def resolve_model_params(cfg: RunConfig, data: Examples) -> RunConfig:
    """Fill the model's shape arguments from the dataset so config.json alone rebuilds the model."""
    fn = MODELS.get(cfg.model.name)
    check_kwargs(fn, cfg.model.params, f"model {cfg.model.name!r}")
    accepted = inspect.signature(fn).parameters
    known: dict[str, Any] = {}
    if data.has("image"):
        images = data.column("image")
        known = {"channels": int(images.shape[1]), "in_channels": int(images.shape[1]),
                 "image_size": int(images.shape[-1])}
    if data.has("frames"):  # video clips (N, T, C, H, W)
        clips = data.column("frames")
        known = {"channels": int(clips.shape[2]), "image_size": int(clips.shape[-1]), "frames": int(clips.shape[1])}
    if data.num_classes:
        known["num_classes"] = data.num_classes
    # unconditional models keep num_classes=0 unless the config asks for conditioning
    wants_classes = cfg.task == "classify" or cfg.model.name == "cgan"
    params = {k: v for k, v in known.items()
              if k in accepted and (k != "num_classes" or wants_classes)}
    params.update(cfg.model.params)
    for key in ("channels", "in_channels", "image_size", "frames"):
        if key in params and key in known and params[key] != known[key]:
            fix = "data.channels" if "channels" in key else f"data.{key}"
            raise GenforgeError(
                f"model.params.{key}={params[key]} but the dataset gives {known[key]}; set {fix} instead"
            )
    if params.get("num_classes") and not data.num_classes:
        raise GenforgeError(
            f"model {cfg.model.name!r} is class-conditional but dataset {cfg.data.name!r} has no labels; "
            "use a labelled dataset or an unconditional model"
        )
    model = cfg.model.model_copy(update={"params": params})
    return cfg.model_copy(update={"model": model, "class_names": data.class_names})


def preflight(cfg: RunConfig) -> None:
    """Check the whole config before any data is loaded: the task and its options, the model's option
    names, and the model's own checks of their values (built once at the configured image size)."""
    cls, fn = TASKS.get(cfg.task), MODELS.get(cfg.model.name)
    if cfg.model.name not in cls.models:
        raise GenforgeError(f"task {cfg.task!r} cannot train model {cfg.model.name!r}; use one of: "
                            f"{', '.join(cls.models)}")
    check_kwargs(cls.__init__, {"cfg": cfg, "data": None, "run_dir": None, **cfg.task_params},
                 f"task {cfg.task!r}")
    check_kwargs(fn, cfg.model.params, f"model {cfg.model.name!r}")
    accepted = inspect.signature(fn).parameters
    shape = {"image_size": cfg.data.image_size, "channels": cfg.data.channels or 3,
             "in_channels": cfg.data.channels or 3}
    if getattr(cfg.data, "frames", None):
        shape["frames"] = cfg.data.frames
    trial = {**{k: v for k, v in shape.items() if k in accepted}, **cfg.model.params}
    try:
        with torch.device("meta"):  # checks only: no memory, no initialisation cost
            fn(**trial)
    except (ValueError, TypeError) as e:
        key = "data.image_size" if "image_size" in str(e) else "model.params"
        value = f"={cfg.data.image_size}" if key == "data.image_size" else f" ({cfg.model.params})"
        raise GenforgeError(f"{key}{value} does not suit model {cfg.model.name!r}: {e}") from None


def build_task(cfg: RunConfig, data: Examples | None = None, run_dir: Path | None = None) -> Task:
    cls = TASKS.get(cfg.task)
    check_kwargs(cls.__init__, {"cfg": cfg, "data": data, "run_dir": run_dir, **cfg.task_params},
                 f"task {cfg.task!r}")
    missing = [f for f in cls.needs if data is not None and not data.has(f)]
    if missing:
        raise GenforgeError(f"task {cfg.task!r} trains on {', '.join(cls.needs)} but dataset "
                            f"{cfg.data.name!r} has no {missing[0]!r} field (it has: {', '.join(data.fields)})")
    return cls(cfg, data, run_dir=run_dir, **cfg.task_params)
