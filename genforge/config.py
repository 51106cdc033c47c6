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
    # train.lr=inf or nan would only show up as a diverged run, after the run directory is made
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Strict):
    name: str = Field("fashion", description="dataset name (`genforge models` lists them)")
    path: Optional[str] = Field(None, description="folder / IDX directory; null means the dataset's "
                                "default location")
    split: Literal["train", "test"] = Field("train", description="which split to train on")
    image_size: int = Field(32, ge=8, le=512, description="images are resized and centre-cropped to "
                            "this many pixels a side")
    channels: Optional[Literal[1, 3]] = Field(None, description="1 (grey) or 3 (RGB); null keeps the "
                                              "dataset's own channel count")
    flip: bool = Field(False, description="random horizontal flips during training")
    val_fraction: float = Field(0.1, ge=0, lt=1, description=(
        "folder data without train/ and test/ subfolders: this share of the files (chosen by a hash of "
        "each file's path, so the same on every machine and stable as files are added) is the test split"))
    limit: Optional[int] = Field(None, ge=1, description="use only the first N items (quick runs, tests)")
    num_items: int = Field(20000, ge=1, description="size of procedural datasets (shapes)")
    seed: int = Field(0, description="seed of procedural datasets")
    max_objects: int = Field(3, ge=1, le=9, description="shapes: at most this many objects per scene "
                             "(each scene has 1..max_objects, uniformly unless object_weights says)")
    object_weights: Optional[list[float]] = Field(None, description="shapes, shapes_video: relative weights "
                                                  "of scenes with 1, 2, ... max_objects objects in the train "
                                                  "split (e.g. [1, 3]: three two-object scenes to each "
                                                  "one-object scene; the test split stays as it is); null: "
                                                  "the stream's own counts")
    holdout: Literal["none", "default"] = Field("none", description="shapes: attribute and relation "
                                                "combinations kept out of training (default: green "
                                                "triangles, orange rings, a star directly below a ring; "
                                                "shapes_video: green triangles rising, rings moving left, "
                                                "stars growing)")
    compositions: Literal["all", "seen", "heldout"] = Field("all", description="shapes test split with a "
                                                            "holdout: every scene, only scenes without a "
                                                            "held-out combination, or only scenes with one")
    target_path: Optional[str] = Field(None, description="parallel: a second UTF-8 text file aligned with "
                                       "data.path line by line (line i of path translates to line i of "
                                       "target_path); null: data.path is a src<TAB>tgt .tsv file or folder")
    frames: int = Field(16, ge=1, le=64, description="video: frames per clip (folder clips are resampled "
                        "uniformly in time to this many)")
    fps: int = Field(8, ge=1, le=60, description="video: playback frames per second of clips and written "
                     "samples")


class ModelConfig(_Strict):
    name: str = Field("dcgan", description="registered model name (`genforge models` lists them)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model "
                                   "constructor (widths, image_size, num_classes, ...)")


class TrainConfig(_Strict):
    steps: int = Field(1000, ge=1, description="optimizer steps in the whole run")
    batch_size: int = Field(64, ge=1, description="examples per step on each process")
    lr: float = Field(2e-4, gt=0, description="peak learning rate of AdamW")
    betas: tuple[float, float] = Field((0.5, 0.999), description="AdamW's beta1 and beta2")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="learning rate after "
                                                      "warm-up: constant, or cosine decay to zero")
    warmup_steps: int = Field(0, ge=0, description="steps of linear learning-rate warm-up from zero")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="decay of the weights' exponential moving "
                             "average, saved as the inference weights; 0 disables EMA")
    grad_clip: float = Field(0.0, ge=0, description="clip the gradient norm to this; 0 disables clipping")
    amp: bool = Field(False, description="autocast (bf16 on CPU, fp16 on CUDA; see amp_dtype)")
    amp_dtype: Literal["auto", "bf16", "fp16"] = Field("auto", description="autocast precision with amp: "
                                                       "auto (fp16 with loss scaling on CUDA, bf16 on CPU), "
                                                       "bf16 (no loss scaling; a GPU with bf16 support), "
                                                       "or fp16 (CUDA only)")
    seed: int = Field(0, description="seed of initialisation, batches and noise")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    log_every: int = Field(50, ge=1, description="steps between metrics.jsonl records")
    sample_every: int = Field(0, ge=0, description="steps between sample grids; 0: only at the end")
    ckpt_every: int = Field(500, ge=1, description="steps between resume points (train_state/)")
    keep_last: int = Field(2, ge=1, description="resume points kept; older ones are deleted")
    max_nonfinite_steps: int = Field(5, ge=1, description="consecutive steps with a NaN/inf loss or "
                                     "gradient (each skipped) before the run stops as diverged")
    tensorboard: bool = Field(True, description="write TensorBoard logs under tb/")
    compile: bool = Field(False, description="torch.compile the networks for training (slow start, "
                          "faster steps on a GPU); without a working compiler: a warning, then eager")
    init_from: Optional[str] = Field(None, description="start a new run from the weights of this run "
                                     "directory or shipped model (tensors matched by name; token "
                                     "embeddings by token text); ignored on --resume")


class RunConfig(_Strict):
    task: str = Field("gan", description="what a training step does: gan, diffusion or classify")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    data: DataConfig = Field(default_factory=DataConfig, description="the training data")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the optimisation loop")
    task_params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the task "
                                        "(diffusion: cond_drop, sample_steps, sample_sampler)")
    class_names: Optional[list[str]] = Field(None, description="filled from the dataset at training time")
    recipe: Optional[str] = Field(None, description="the command that produced the run, recorded for "
                                  "reproduction")
    notes: dict[str, Any] = Field(default_factory=dict, description="measured figures (FID, ...) added "
                                  "later")


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
    if isinstance(raw.get("data"), dict):
        # runs made before data.val_fraction existed trained on every file: none of them is held out
        raw["data"].setdefault("val_fraction", 0.0)
    return validate_config(raw)
