"""The ``genforge`` command line: train, sample, eval, info, models."""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from .errors import GenforgeError
from .train.checkpoint import atomic_write_png, check_writable

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and sample small deep generative models.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure a trained model.")
app.add_typer(eval_app, name="eval")
_state = {"debug": False}


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")):
    _state["debug"] = debug


@app.command()
def train(
    args: List[str] = typer.Argument(None, help="[CONFIG] [KEY=VALUE ...]: a YAML file or shipped "
                                     "recipe name, then dotted overrides such as train.lr=1e-4"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to create."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (alone on stdout; progress "
                                 "and warnings always go to stderr)."),
):
    """Train a model; the same command runs under torchrun --nproc_per_node=N."""
    from .config import config_from_json, load_config, validate_config
    from .train.trainer import Trainer

    args = list(args or [])
    source = args.pop(0) if args and "=" not in args[0] else None
    if resume is not None:
        if source is not None:
            raise GenforgeError("--resume takes its config from the run directory; drop the CONFIG argument")
        base = config_from_json(resume / "config.json").model_dump(mode="json")
        from .config import apply_override

        for item in args:
            apply_override(base, item)
        cfg, run_dir = validate_config(base), resume
    else:
        cfg = load_config(source, args)
        cfg = cfg.model_copy(update={"recipe": cfg.recipe or "genforge train " + " ".join(sys.argv[2:])})
        run_dir = out or Path("runs") / f"{cfg.task}-{cfg.model.name}-{cfg.data.name}"
    result = Trainer(cfg, run_dir, resume=resume is not None).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        _echo_json(result) if as_json else typer.echo(_train_summary(result, cfg.train.steps))
    if result["status"] == "interrupted":
        raise typer.Exit(128 + int(result["signal"] or 2))


def _train_summary(result: dict, steps: int) -> str:
    metrics = " ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items() if isinstance(v, (int, float)))
    where = result["run_dir"]
    if result["status"] == "interrupted":
        return (f"interrupted at step {result['step']}/{steps}; a checkpoint was saved: continue with "
                f"genforge train --resume {where}")
    return f"completed {result['step']}/{steps} steps in {where}" + (f"; {metrics}" if metrics else "")


@app.command()
def sample(
    run_dir: str = typer.Argument(..., help="Run directory or shipped model name."),
    n: Optional[int] = typer.Option(None, "-n", help="Number of images (default 16; video runs: clips, default 1)."),
    seed: int = typer.Option(0, help="Same seed, same images."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (diffusion; default 25)."),
    sampler: Optional[str] = typer.Option(None, help="ddpm, ddim, dpm++ or dpm++sde (diffusion; default dpm++)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (class-conditional "
                                             "diffusion; default 1: none; 0 ignores the labels)."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated class names (any case) or indices."),
    grid: Optional[Path] = typer.Option(None, help="Write one PNG grid here."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Write one PNG per image here."),
    nrow: Optional[int] = typer.Option(None, "--nrow", min=1, help="Images per grid row (default: square; "
                                       "a class-conditional model's grid puts one class on each row)."),
    scale: int = typer.Option(1, "--scale", min=1, max=16, help="Enlarge each grid pixel to scale x scale."),
    device: str = typer.Option("auto"),
    step: Optional[int] = typer.Option(None, "--step", help="Use the checkpoint kept at this training "
                                       "step (train_state/) instead of the final weights."),
    compile_: bool = typer.Option(False, "--compile", help="Run the model through torch.compile (pays "
                                  "off for many images or steps; compiled code is cached in "
                                  "~/.cache/genforge/inductor)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="What to draw (text2image runs; empty: "
                                         "unconditional samples)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="What guidance steers "
                                                  "away from instead of the empty prompt (text2image runs)."),
    layout: Optional[str] = typer.Option(None, "--layout", help="grid: plan where the objects of a "
                                         "multi-object shapes caption go, then draw each at its place; off: "
                                         "leave it to the model (text2image runs; default: grid for models "
                                         "trained on shapes, else off). Video runs: paths (plan each "
                                         "object's path, draw each object on its own; default for models "
                                         "trained on shapes_video) or off."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames per clip (video runs; default: the "
                                         "model's)."),
    fps: Optional[int] = typer.Option(None, "--fps", help="Playback frames per second (video runs; default: "
                                      "the run's data.fps)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the clip here: .mp4, .gif or .png (a strip "
                                       "of frames) (video runs; n > 1 clips side by side)."),
    first_frame: Optional[Path] = typer.Option(None, "--first-frame", help="Image the clips start from "
                                               "(video runs; resized to the model's frames)."),
):
    """Generate images from a GAN, diffusion or text2image run, or clips from a video run."""
    from . import load
    from .data.transforms import make_grid, to_uint8
    from .pipelines.image import ImagePipeline

    video_args = {"--frames": frames, "--fps": fps, "--out": out, "--first-frame": first_frame}
    if grid is None and out_dir is None and out is None:
        raise GenforgeError("say where to write the images: --grid FILE.png and/or --out-dir DIR "
                            "(video runs: --out FILE.mp4)")
    for target in [grid.parent if grid else None, out_dir, out.parent if out else None]:
        if target is not None:
            check_writable(target)
    pipe = load(run_dir, device=device, step=step, compile=compile_)
    if layout is not None and pipe.cfg.task not in ("text2image", "video"):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run: --layout needs a text2image diffusion run "
                            "or a video run")
    if getattr(pipe, "kind", None) == "video":
        from .cli_video import sample_video

        return sample_video(pipe, n=n, seed=seed, steps=steps, sampler=sampler, guidance=guidance, labels=labels,
                            grid=grid, out_dir=out_dir, scale=scale, prompt=prompt, negative_prompt=negative_prompt,
                            frames=frames, fps=fps, out=out, first_frame=first_frame, layout=layout)
    n = 16 if n is None else n
    given_video = [k for k, v in video_args.items() if v is not None]
    if given_video:
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run: {', '.join(given_video)} need a video run")
    text = getattr(pipe, "kind", None) == "text2image"
    if text and compile_:
        pipe.compile()  # says that it samples eagerly
    if not isinstance(pipe, ImagePipeline) and not text:
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; sample needs a gan, diffusion or "
                            "text2image run")
    if not text and (prompt is not None or negative_prompt is not None):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run: it takes no prompt (--labels picks classes "
                            "of a class-conditional model)")
    given = {"steps": steps is not None, "sampler": sampler is not None, "guidance": guidance is not None}
    steps, sampler = (getattr(pipe, "default_steps", 25) if steps is None else steps), sampler or "dpm++"
    pipe.check_sampling(steps, sampler, 1.0 if guidance is None else guidance, seed)  # errors before warnings
    ignored = [f"--{name}" for name, v in given.items()
               if v and (pipe.kind == "gan" or (name == "guidance" and not (pipe.conditional or text)))]
    if ignored:
        why = "a GAN makes its images in one pass" if pipe.kind == "gan" else "guidance needs a class-conditional model"
        typer.echo(f"warning: {', '.join(ignored)} ignored: {why}", err=True)
    lab = [x.strip() for x in labels.split(",")] if labels else None
    from .train.logging import step_progress

    words = {"prompt": prompt or "", "negative_prompt": negative_prompt} if text else {}
    if layout is not None:
        words["layout"] = layout
    with step_progress("sample", n_chunks=-(-n // 64), enabled=pipe.kind in ("diffusion", "text2image")) as report:
        images = to_uint8(pipe.generate(n=n, seed=seed, steps=steps, sampler=sampler, labels=lab,
                                        guidance=guidance if text or guidance is not None else 1.0,
                                        progress=report, **words))
    written = []
    if grid is not None:
        k = pipe.model.num_classes if pipe.conditional else 0
        if k and lab is None and nrow is None and n % k == 0:
            # generate() cycles through the classes; regroup so each row is one class
            order = sorted(range(n), key=lambda i: (i % k, i))
            images, nrow = images[order], n // k
        atomic_write_png(grid, make_grid(images, nrow=nrow, scale=scale))
        written.append(str(grid))
    if out_dir is not None:
        from .data.transforms import to_pil_list

        out_dir.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(to_pil_list(images)):
            atomic_write_png(out_dir / f"{seed:06d}_{i:05d}.png", im)
        written.append(f"{out_dir}/ ({n} files)")
    typer.echo("wrote " + ", ".join(written))


@app.command()
def export(
    run_dir: str = typer.Argument(..., help="Run directory or shipped model name."),
    out: Path = typer.Argument(..., help="New directory to write the exported model to."),
    fmt: Optional[str] = typer.Option(None, "--format", help="diffusers (diffusion runs; their default) or "
                                      "onnx (the default for GAN, classifier, tts and vocoder runs)."),
    step: Optional[int] = typer.Option(None, "--step", help="Export the checkpoint kept at this training "
                                       "step (train_state/) instead of the final weights."),
):
    """Export a run for other tools: diffusers (UNet + scheduler) or ONNX (the network's forward pass)."""
    from .export import export_run

    typer.echo(export_run(run_dir, out, fmt, step))


@app.command("config")
def config_cmd(
    args: List[str] = typer.Argument(None, help="[RECIPE] [KEY=VALUE ...]: a YAML file or shipped recipe "
                                     "name, then dotted overrides, as for train"),
    reference: bool = typer.Option(False, "--reference", help="Print a Markdown table of every key instead."),
):
    """Print the effective config as YAML, each key with its meaning, type and default."""
    from .config import load_config
    from .config_doc import annotated_yaml, reference_table

    if reference:
        if args:
            raise GenforgeError("--reference describes every key and takes no RECIPE or KEY=VALUE")
        typer.echo(reference_table(), nl=False)
        return
    args = list(args or [])
    source = args.pop(0) if args and "=" not in args[0] else None
    typer.echo(annotated_yaml(load_config(source, args)), nl=False)


@app.command()
def info(run_dir: str = typer.Argument(..., help="Run directory or shipped model name.")):
    """Summarise a run: task, model, parameters, progress, last metrics."""
    from .pipelines import load_model, resolve_run_dir
    from .train.checkpoint import latest_state, read_metrics
    from .device import pick_device

    path = resolve_run_dir(run_dir)
    cfg, model = load_model(path, pick_device("cpu"))
    metrics, _ = read_metrics(path / "metrics.jsonl")
    state = latest_state(path)
    _echo_json({
        "run_dir": str(path), "task": cfg.task, "model": cfg.model.name,
        "params": sum(p.numel() for p in model.parameters()),
        "data": cfg.data.name, "image_size": cfg.data.image_size,
        "classes": cfg.class_names if cfg.task == "classify" or getattr(model, "num_classes", 0) else None,
        "steps": cfg.train.steps, "last_checkpoint": state.name if state else None,
        "last_metrics": metrics[-1] if metrics else None, "recipe": cfg.recipe, "notes": cfg.notes,
    })


@app.command("models")
def list_models():
    """List shipped models, recipes and every registered name."""
    from .config import RECIPES_DIR
    from .pipelines import shipped_models
    from .registry import DATASETS, FEATURE_NETS, MODELS, TASKS

    from .config import config_from_json
    from .pipelines import resolve_run_dir

    classes = {}
    for name in shipped_models():  # what labels (any case) or prompts each shipped model takes
        cfg = config_from_json(resolve_run_dir(name) / "config.json")
        if cfg.task == "classify" or cfg.model.params.get("num_classes"):
            classes[name] = cfg.class_names
    _echo_json({"shipped": shipped_models(), "classes": classes,
                "recipes": sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")),
                "models": MODELS.names(), "tasks": TASKS.names(), "datasets": DATASETS.names(),
                "feature_nets": FEATURE_NETS.names()})


@eval_app.command("fid")
def eval_fid(
    run_dir: str = typer.Argument(..., help="Run directory or shipped model name to evaluate."),
    data: Optional[str] = typer.Option(None, help="Reference dataset (default: the run's own)."),
    data_path: Optional[str] = typer.Option(None, "--data-path", help="Directory for folder/IDX data."),
    split: str = typer.Option("test", help="Reference split: train or test."),
    n: int = typer.Option(2000, "-n", help="Generated samples (and reference images)."),
    feature_net: Optional[str] = typer.Option(None, "--feature-net",
                                              help="Classifier run dir / shipped name."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights",
                                                     help="pt_inception-2015-12-05 weights: standard FID."),
    steps: int = typer.Option(25), sampler: str = typer.Option("dpm++"),
    seed: int = typer.Option(0), device: str = typer.Option("auto"),
    guidance: float = typer.Option(1.0, help="Classifier-free guidance scale (conditional diffusion)."),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON report here."),
):
    """FID, KID and precision/recall between generated samples and a dataset."""
    from .eval.runner import fid_for_run

    report = fid_for_run(run_dir, data=data, data_path=data_path, split=split, n=n,
                         feature_net=feature_net, inception_weights=inception_weights, steps=steps,
                         sampler=sampler, seed=seed, device=device, guidance=guidance)
    if out is not None:
        check_writable(out.parent)
        out.write_text(json.dumps(report, indent=2) + "\n")
    _echo_json(report)


@eval_app.command("accuracy")
def eval_accuracy(
    run_dir: str = typer.Argument(..., help="Classifier run directory or shipped name."),
    split: str = typer.Option("test"), device: str = typer.Option("auto"),
):
    """Top-1 accuracy of a classifier on its dataset's split."""
    from . import load
    from .data import load_dataset
    from .pipelines.classify import ClassifierPipeline
    from .tasks.classify import accuracy

    pipe = load(run_dir, device=device)
    if not isinstance(pipe, ClassifierPipeline):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; accuracy needs a classify run")
    ds = load_dataset(pipe.cfg.data.model_copy(update={"split": split, "flip": False}))
    held_out = bool(ds.meta.get("held_out", split == "test"))
    if not held_out:
        typer.echo(f"warning: split {split!r} holds training images, so this accuracy measures memorisation",
                   err=True)
    _echo_json({"accuracy": accuracy(pipe.model, ds.images, ds.labels), "n": len(ds), "split": split,
                "held_out": held_out})


@app.command("classify")
def classify_cmd(
    run_dir: str = typer.Argument(..., help="Classifier or recogniser run directory, or shipped name."),
    images: List[str] = typer.Argument(..., help="Image files (any mode: grey, RGBA, CMYK, 16-bit, palette)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    device: str = typer.Option("auto"),
):
    """Recognise images: a classify run names each image's class; a recognize run reads each image's
    objects (shape, colour, size, cell) and writes its caption."""
    from . import load
    from .pipelines.classify import ClassifierPipeline
    from .pipelines.recognize import RecognizerPipeline, open_image

    pictures = [open_image(p) for p in images]  # every file checked before the model is loaded
    pipe = load(run_dir, device=device)
    if isinstance(pipe, RecognizerPipeline):
        results = [{"image": p, **r} for p, r in zip(images, pipe.describe(pictures))]
        lines = []
        for r in results:
            lines.append(f"{r['image']}: {r['caption']}")
            lines += [f"  {o['shape']} {o['color']} {o['size']} row={o['row']} col={o['col']}" for o in r["objects"]]
            lines.append(f"  background {r['background'] or 'none'}")
    elif isinstance(pipe, ClassifierPipeline):
        results = [{"image": p, "label": top[0]["label"], "probability": top[0]["score"]}
                   for p, top in zip(images, pipe(pictures, top_k=1))]
        lines = [f"{r['image']}: {r['label']} ({r['probability']:.3f})" for r in results]
    else:
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; classify needs a classify or recognize run")
    _echo_json(results) if as_json else typer.echo("\n".join(lines))


@eval_app.command("recognition")
def eval_recognition(
    run_dir: str = typer.Argument(..., help="Recognize run directory or shipped name."),
    n: int = typer.Option(2000, "-n", min=1, help="Test scenes to read (those also in training are left out)."),
    device: str = typer.Option("auto"),
):
    """Per-attribute accuracy (shape, colour, size, position, background, count) and all-correct rate of a
    scene recogniser on test scenes it never trained on."""
    from . import load
    from .pipelines.recognize import RecognizerPipeline
    from .tasks.recognize import evaluate_recognition

    pipe = load(run_dir, device=device)
    if not isinstance(pipe, RecognizerPipeline):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; eval recognition needs a recognize run")
    _echo_json({**evaluate_recognition(pipe.model, pipe.cfg.data, n), "split": "test"})

@app.command("caption")
def caption_cmd(
    run_dir: str = typer.Argument(..., help="Caption run directory or shipped model name."),
    images: List[Path] = typer.Argument(..., help="Image files (any format PIL reads)."),
    beam: int = typer.Option(1, "--beam", help="Beam width, 1 to 16 (1: greedy)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Most tokens per caption "
                                             "([BOS] and [EOS] included; default: the model's)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {image, caption}."),
    device: str = typer.Option("auto"),
):
    """Describe images in words: one caption per image (several images: PATH<TAB>CAPTION lines)."""
    from . import load
    from .pipelines.caption import CaptionPipeline

    pipe = load(run_dir, device=device)
    if not isinstance(pipe, CaptionPipeline):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; caption needs a caption run")
    captions = pipe.caption(images, beam=beam, max_length=max_length)  # every file is read before any output
    if as_json:
        _echo_json([{"image": str(p), "caption": c} for p, c in zip(images, captions)])
    elif len(images) == 1:
        typer.echo(captions[0])
    else:
        for p, c in zip(images, captions):
            typer.echo(f"{p}\t{c}")


@eval_app.command("captions")
def eval_captions(
    run_dir: str = typer.Argument(..., help="Caption run directory or shipped model name."),
    n: int = typer.Option(1000, "-n", help="Test images per set."),
    beam: int = typer.Option(1, "--beam", help="Beam width, 1 to 16 (1: greedy)."),
    device: str = typer.Option("auto"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON report here."),
):
    """BLEU-1..4, CIDEr-D and exact match on the run's test images (shapes runs with a hold-out:
    seen and held-out compositions apart)."""
    from . import load
    from .pipelines.caption import CaptionPipeline
    from .tasks.caption import caption_report

    pipe = load(run_dir, device=device)
    if not isinstance(pipe, CaptionPipeline):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; eval captions needs a caption run")
    if out is not None:
        check_writable(out.parent)
    report = {"run_dir": str(pipe.run_dir), "data": pipe.cfg.data.name,
              **caption_report(pipe.model, pipe.tokenizer, pipe.cfg.data, items=n, beam=beam)}
    if out is not None:
        from .train.checkpoint import atomic_write_json

        atomic_write_json(out, report)
    _echo_json(report)


@app.command("write")
def write_cmd(
    args: Optional[List[str]] = typer.Argument(None, metavar="[RUN_DIR] PROMPT",
                                               help="Text to continue (empty: start a fresh line), after an "
                                               "optional language-model run directory or shipped name."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Language-model run directory or shipped "
                                        "model; default: the shipped language model."),
    max_tokens: int = typer.Option(200, "--max-tokens", help="Most tokens to generate (at least 1)."),
    temperature: float = typer.Option(0.8, "--temperature", help="0: greedy; higher: more varied."),
    top_k: int = typer.Option(50, "--top-k", help="Sample among the k likeliest tokens (0: off)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Sample among the smallest set of tokens whose "
                                "probability reaches p, in (0, 1] (1: off)."),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="End before this text (repeatable; "
                                             "backslash escapes such as \\n are read)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto"),
):
    """Continue a prompt with a language model, printing the text as it is generated:
    `genforge write "prompt"` (the shipped model), `genforge write RUN_DIR "prompt"` or `--model RUN_DIR`."""
    from . import load
    from .pipelines.lm import LMPipeline, check_sampling

    args = list(args or [])
    if len(args) > 2 or (len(args) == 2 and model is not None):
        raise GenforgeError("write takes one prompt, after at most one run directory (or --model); quote a "
                            "prompt that has spaces")
    run_dir = args.pop(0) if len(args) == 2 else model
    prompt = args[0] if args else ""
    check_sampling(max_tokens, temperature, top_k, top_p)  # before the model is loaded
    if run_dir is None:
        from .pipelines import shipped_default

        run_dir = shipped_default("lm", "language model", "gpt_web")
    pipe = load(run_dir, device=device)
    if not isinstance(pipe, LMPipeline):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; write needs a language-model (lm) run")
    stops = [s.encode("latin-1", "backslashreplace").decode("unicode_escape") for s in stop or []]
    for piece in pipe.stream(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, stop=stops, seed=seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


# -- serving: genforge serve, genforge keys ------------------------------------------------------
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys for `genforge serve`.")
app.add_typer(keys_app, name="keys")
_KEYS_HELP = "Keys file (default: $GENFORGE_KEYS or ~/.genforge/keys.json)."


def _key_store(store: Optional[Path]):
    from .serve.auth import KeyStore
    from .serve.settings import default_keys_path

    return KeyStore(store or default_keys_path())


def _jobs_url(url: Optional[str], path: Optional[Path]) -> Optional[str]:
    if path is None:
        return url
    if url is not None:
        raise GenforgeError("give the jobs database URL one way: --jobs-url (or GENFORGE_JOBS_URL) or "
                            "--jobs-url-file")
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GenforgeError(f"cannot read --jobs-url-file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not lines:
        raise GenforgeError(f"--jobs-url-file {path} is empty; write the jobs database URL on its first line")
    return lines[0].strip()


@app.command()
def serve(
    models: List[str] = typer.Argument(None, help="Run directories or shipped model names "
                                       "(default: every shipped model)."),
    default_model: Optional[str] = typer.Option(None, "--default-model", help="Model id that answers "
                                                "requests naming no model (default: the first diffusion "
                                                "model served, else the first of its kind)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000),
    max_batch_size: int = typer.Option(16, "--max-batch-size", help="Images per merged forward pass "
                                       "(1 turns batching off)."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", help="How long a request waits for others "
                                      "to batch with."),
    wait_fraction: float = typer.Option(0.25, "--wait-fraction", help="...and at most this fraction of the "
                                        "model's recent forward time, so fast models are not slowed "
                                        "(100: always the full --max-wait-ms)."),
    queue_size: int = typer.Option(64, "--queue-size", help="Waiting requests per model before 503."),
    jobs_url: Optional[str] = typer.Option(None, "--jobs-url", envvar="GENFORGE_JOBS_URL",
                                           help="SQLAlchemy URL of the jobs database (default: "
                                           "sqlite:///~/.genforge/jobs.db). Arguments show in `ps`: give a "
                                           "URL with a password in the environment or --jobs-url-file."),
    jobs_url_file: Optional[Path] = typer.Option(None, "--jobs-url-file", help="Read the jobs database URL "
                                                 "from this file (its first line)."),
    keys: Optional[Path] = typer.Option(None, "--keys", help=_KEYS_HELP),
    rate_limit: float = typer.Option(20.0, "--rate-limit", help="Requests per second per key (0: off)."),
    rate_burst: int = typer.Option(40, "--rate-burst", help="Requests a key may send at once."),
    redact_inputs: bool = typer.Option(False, "--redact-inputs", help="Keep prompts and labels out of logs."),
    metrics_open: bool = typer.Option(False, "--metrics-open", help="Serve /metrics without a key."),
    ssl_certfile: Optional[Path] = typer.Option(None, "--ssl-certfile"),
    ssl_keyfile: Optional[Path] = typer.Option(None, "--ssl-keyfile"),
    device: str = typer.Option("auto"),
    threads: int = typer.Option(0, help="Torch CPU threads (0: torch's default)."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Server processes on this port, each "
                                "with its own copy of the models; they share only the jobs database."),
    log_level: str = typer.Option("info", "--log-level"),
    max_request_cost: int = typer.Option(1600, "--max-request-cost", help="Images x steps one request "
                                         "may cost (GANs: images); larger ones are refused with a pointer "
                                         "to /v1/jobs."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection may take to "
                                         "send a request's headers (from connecting or the last response)."),
    body_timeout: float = typer.Option(60.0, "--body-timeout", help="Seconds a request's body may take "
                                       "to arrive after its headers."),
    keep_alive_timeout: int = typer.Option(5, "--keep-alive-timeout", help="Seconds an idle keep-alive "
                                           "connection stays open."),
    max_connections: int = typer.Option(1000, "--max-connections", help="Open connections per process "
                                        "(also kept below the open-file limit)."),
    max_decodes: int = typer.Option(0, "--max-decodes", help="Uploads decoded at once (0: CPU cores less "
                                    "one, 1 to 4)."),
    compile_: bool = typer.Option(False, "--compile", help="Run image models through torch.compile (CUDA "
                                  "graphs on a GPU), compiling each batch size up to --max-batch-size "
                                  "before /readyz reports ready."),
):
    """Serve models over HTTP: OpenAI-style API under /v1, web page at /, docs at /docs."""
    import ipaddress

    from pydantic import ValidationError

    from .pipelines import resolve_run_dir, shipped_models
    from .serve.settings import Settings

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise GenforgeError("TLS needs both --ssl-certfile and --ssl-keyfile")
    for f in (ssl_certfile, ssl_keyfile):
        if f is not None and not f.is_file():
            raise GenforgeError(f"{f} does not exist")
    if not models and not shipped_models():
        raise GenforgeError("no shipped models are installed yet; pass run directories: genforge serve runs/NAME")
    from .config import config_from_json

    seen: dict[str, str] = {}
    for m in models or []:
        run_dir = resolve_run_dir(m)  # a typo is a one-line error here, not a traceback from the server
        config_from_json(run_dir / "config.json")
        if run_dir.name in seen:
            raise GenforgeError(f"{seen[run_dir.name]} and {m} are both named {run_dir.name!r}; model ids are "
                                "run directory names, so serve directories with different names")
        seen[run_dir.name] = m
    served = list(seen) if models else shipped_models()
    if default_model is not None and default_model not in served:
        raise GenforgeError(f"--default-model {default_model!r} is not served; served models: {', '.join(served)}")
    jobs_url = _jobs_url(jobs_url, jobs_url_file)
    try:
        settings = Settings(models=list(models or []), default_model=default_model, device=device, threads=threads,
                            max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, wait_fraction=wait_fraction,
                            queue_size=queue_size,
                            jobs_url=jobs_url, rate_limit=rate_limit, rate_burst=rate_burst,
                            redact_inputs=redact_inputs, metrics_open=metrics_open,
                            max_request_cost=max_request_cost, header_timeout=header_timeout,
                            body_timeout=body_timeout, keep_alive_timeout=keep_alive_timeout,
                            max_connections=max_connections, max_decodes=max_decodes, compile=compile_,
                            **({"keys_path": keys} if keys else {}))
    except ValidationError as e:
        err = e.errors()[0]
        raise GenforgeError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    from .serve.jobs import JobStore, fernet_from_env

    # a bad jobs URL, database or GENFORGE_JOBS_KEY is a one-line error now, not a traceback at startup
    JobStore(settings.resolved_jobs_url(), fernet_from_env()).close()
    import uvicorn

    from .serve import connections
    from .serve.app import LOG_LEVEL_ENV, SETTINGS_ENV, create_app
    from .serve.observability import configure_logging

    configure_logging(log_level.upper(), redact=settings.redact_inputs)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and ssl_certfile is None:
        typer.echo(f"warning: serving plain HTTP on {host}: API keys cross the network in clear; "
                   "use --ssl-certfile/--ssl-keyfile or a TLS proxy", err=True)
    common = dict(host=host, port=port, log_config=None, access_log=False, log_level=log_level.lower(),
                  timeout_graceful_shutdown=10, ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                  ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None, server_header=False,
                  http=connections.PROTOCOL, timeout_keep_alive=settings.keep_alive_timeout,
                  backlog=connections.BACKLOG)
    if workers == 1:
        connections.configure(settings.header_timeout, settings.body_timeout, settings.max_connections)
        uvicorn.run(create_app(settings), **common)
    else:  # uvicorn starts each worker from an import string; the settings travel in the environment
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        os.environ[LOG_LEVEL_ENV] = log_level.upper()
        uvicorn.run("genforge.serve.app:app_from_env", factory=True, workers=workers, **common)


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., "--name", help="Who or what the key is for."),
    scopes: str = typer.Option("generate", "--scopes", help="Comma-separated: generate, classify, text, admin."),
    rate_limit: Optional[float] = typer.Option(None, "--rate-limit", help="Requests per second for this "
                                               "key (default: the server's --rate-limit)."),
    store: Optional[Path] = typer.Option(None, "--store", help=_KEYS_HELP),
):
    """Create a key; it is printed once (stdout) and stored only as a salted hash."""
    import math

    if rate_limit is not None and not math.isfinite(rate_limit):  # NaN slips past the >= 0 check
        raise GenforgeError(f"--rate-limit must be a finite number of requests per second, got {rate_limit}")
    ks = _key_store(store)
    rec, key = ks.create(name, scopes, rate_limit)
    typer.echo(f"created key {rec.id} ({rec.name}; scopes {','.join(rec.scopes)}) in {ks.path}. "
               "Copy it now: it cannot be shown again.", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list(store: Optional[Path] = typer.Option(None, "--store", help=_KEYS_HELP)):
    """List keys (ids, names, scopes; never the keys themselves)."""
    _echo_json([k.public() for k in _key_store(store).list()])


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key id (see `genforge keys list`)."),
                store: Optional[Path] = typer.Option(None, "--store", help=_KEYS_HELP)):
    """Revoke a key; a running server refuses it from its next request."""
    rec = _key_store(store).revoke(key_id)
    typer.echo(f"revoked key {rec.id} ({rec.name})")


def _plain_warnings() -> None:
    """genforge's own warnings as one line each ("warning: ..."), not Python's file:line + source dump."""
    import warnings

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and "genforge" in str(filename):
            typer.echo(f"warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main() -> None:
    from .tuning import tune_malloc

    tune_malloc()
    debug = "--debug" in sys.argv
    if not debug:
        _plain_warnings()
    try:
        code = app(standalone_mode=False)  # click returns (not raises) Exit codes in this mode
        if isinstance(code, int) and code:
            sys.exit(code)
    except GenforgeError as e:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        import click

        try:  # typer >= 0.16 raises from its own copy of click for options' bounds and types
            from typer._click import exceptions as typer_click
        except ImportError:
            typer_click = click.exceptions
        if isinstance(e, (click.exceptions.ClickException, typer_click.ClickException)):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, (click.exceptions.Abort, getattr(typer_click, "Abort", click.exceptions.Abort))):
            sys.exit(130)
        if debug:
            raise
        typer.echo(f"error: {type(e).__name__}: {e} (run with --debug for a traceback)", err=True)
        sys.exit(1)


# commands kept in their own modules register on app / eval_app when imported
from . import cli_lm  # noqa: E402,F401
from . import cli_data  # noqa: E402,F401
from . import cli_speech_data  # noqa: E402,F401
from . import cli_translate  # noqa: E402,F401
from . import cli_video  # noqa: E402,F401
from . import cli_text2image  # noqa: E402,F401
from . import cli_speech  # noqa: E402,F401


if __name__ == "__main__":
    main()
