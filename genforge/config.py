"""Run configuration: pydantic models loaded from YAML with dotted command-line overrides.

``genforge train recipe.yaml train.lr=1e-4 model.params.width=32`` loads the YAML, applies each
override, and validates the result. An unknown key or a bad value is a GenforgeError naming the key
and the valid choices.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import GenforgeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: str = "fashion"
    path: Optional[str] = None  # folder / IDX directory; None means the dataset's default location
    split: Literal["train", "test"] = "train"
    image_size: int = Field(32, ge=8, le=512)
    channels: Optional[Literal[1, 3]] = None  # None keeps the dataset's own channel count
    flip: bool = False  # random horizontal flips during training
    limit: Optional[int] = Field(None, ge=1)  # use only the first N items (quick runs, tests)
    num_items: int = Field(20000, ge=1)  # size of procedural datasets (shapes)
    seed: int = 0  # seed of procedural datasets


class ModelConfig(_Strict):
    name: str = "dcgan"
    params: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the model class


class TrainConfig(_Strict):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    ema_decay: float = Field(0.0, ge=0, lt=1)  # 0 disables EMA
    grad_clip: float = Field(0.0, ge=0)  # 0 disables clipping
    amp: bool = False  # autocast (bf16 on CPU, fp16 on CUDA)
    seed: int = 0
    device: str = "auto"
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(0, ge=0)  # 0: only at the end
    ckpt_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    # consecutive steps with a NaN/inf loss or gradient (each skipped) before the run stops as diverged
    max_nonfinite_steps: int = Field(5, ge=1)
    tensorboard: bool = True


class RunConfig(_Strict):
    task: str = "gan"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    task_params: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the task
    class_names: Optional[list[str]] = None  # filled from the dataset at training time
    recipe: Optional[str] = None  # the command that produced the run, recorded for reproduction
    notes: dict[str, Any] = Field(default_factory=dict)  # measured figures (FID, ...) added later


RECIPES_DIR = Path(__file__).parent / "recipes"


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise GenforgeError(f"override {item!r} is not KEY=VALUE (e.g. train.lr=1e-4)")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise GenforgeError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = _parse_value(value)


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"])
    if e["type"] == "extra_forbidden":
        model = RunConfig
        for p in e["loc"][:-1]:
            field = model.model_fields.get(str(p)) if isinstance(model, type) else None
            ann = field.annotation if field else None
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None:
                break
        valid = ", ".join(model.model_fields) if model is not None else "see the docs"
        return f"unknown config key {loc!r}; valid keys here: {valid}"
    return f"bad config value for {loc!r}: {e['msg']} (got {e.get('input')!r})"


def resolve_recipe(source: str | Path) -> Path:
    """A YAML path, or the name of a shipped recipe (``genforge/recipes/NAME.yaml``)."""
    p = Path(source)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{source}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml"))
    raise GenforgeError(
        f"config {str(source)!r} is neither a YAML file nor a shipped recipe; recipes: {', '.join(names)}"
    )


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict[str, Any] = {}
    if source is not None:
        path = resolve_recipe(source)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise GenforgeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise GenforgeError(f"{path}: expected a mapping of config sections at the top level")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise GenforgeError(_format_error(e)) from None


def config_from_json(path: Path) -> RunConfig:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GenforgeError(f"{path} not found: is this a genforge run directory?") from None
    except json.JSONDecodeError as e:
        raise GenforgeError(f"{path} is not valid JSON ({e.msg}); the run directory is damaged") from None
    raw.pop("genforge_version", None)
    raw.pop("resume_history", None)  # what each --resume changed; the fields above are the effective config
    return validate_config(raw)
