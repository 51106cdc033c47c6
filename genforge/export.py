"""Exports of a run directory into formats other tools load without genforge.

* ``diffusers`` (diffusion runs): an unconditional model becomes a ``DDPMPipeline``; a class-conditional
  one becomes ``unet/`` (``UNet2DModel`` with its class embedding) and ``scheduler/`` (the training
  noise schedule), because DDPMPipeline cannot pass class labels. The README written beside them holds
  a sampling loop, with classifier-free guidance, that reproduces ``genforge sample``.
* ``onnx`` (every run): the network's forward pass with a dynamic batch axis: a GAN generator
  (latent [+ label] -> image), the diffusion UNet as a denoiser (sample, timestep [, class_labels];
  the sampling loop stays in Python) or the classifier (image -> logits); speech runs (acoustic model,
  vocoder) through export_speech.py.

ONNX files come from torch's TorchScript-based exporter (``dynamo=False``, deprecated but present in
the pinned torch). The torch.export-based default also works offline, but it needs onnxscript, took
20-55 s to trace even a test-sized UNet on two busy CPU cores (the TorchScript one: 1-3 s), and a free
batch axis trips its shape guard on diffusers' batch >= 64 branch in the upsampler. That branch only
makes a tensor contiguous, so the traced graph is right at every batch size (the tests run 70).
Every export is checked with onnxruntime against PyTorch before it is kept.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from . import __version__
from .errors import GenforgeError
from .train.checkpoint import check_writable

FORMATS = ("diffusers", "onnx")
ONNX_OPSET = 17
# onnxruntime's float32 kernels sum in other orders (and fuse conv + batch norm), so outputs differ
# from PyTorch's by rounding: about sqrt(K) * 6e-8 relative per reduction of K <= ~600 terms, a few
# 1e-6 after the 20-30 layers of these models (measured: 1e-6 to 4e-6). 1e-4 of the output's scale
# leaves a wide margin for other CPUs, while a wrong weight, op or layout errs by 1e-2 or more.
ONNX_RTOL = 1e-4


def onnx_tolerance(reference: torch.Tensor) -> float:
    return ONNX_RTOL * max(1.0, float(reference.abs().max()))


#: tasks whose runs export to ONNX (gan/diffusion/classify here, tts/vocoder in export_speech.py)
ONNX_TASKS = ("gan", "diffusion", "classify", "tts", "vocoder")


def default_format(task: str) -> str:
    return "diffusers" if task == "diffusion" else "onnx"


def export_run(run: str | Path, out: Path, fmt: Optional[str] = None, step: Optional[int] = None) -> str:
    """Write ``run`` (a run directory or shipped name) to the new directory ``out``; returns a
    one-line summary. Nothing is left at ``out`` unless the whole export succeeded."""
    from . import load

    if fmt is not None and fmt not in FORMATS:
        raise GenforgeError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    check_writable(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GenforgeError(f"{out} exists and is not an empty directory; choose a new directory")
    pipe = load(run, device="cpu", step=step)
    task = pipe.cfg.task
    fmt = fmt or default_format(task)
    if task not in ONNX_TASKS and task != "diffusion":
        raise GenforgeError(f"{pipe.run_dir.name} is a {task!r} run, which has no export yet (ONNX covers "
                            f"{', '.join(ONNX_TASKS)} runs); use it through genforge.load or genforge serve")
    if fmt == "diffusers":
        if task != "diffusion":
            raise GenforgeError(f"{pipe.run_dir.name} is a {task!r} run; the diffusers format holds diffusion "
                                "models only: use --format onnx")
        conditional = bool(pipe.model.num_classes)
        _staged(out, lambda d: _write_diffusers(pipe, d, out, step))
        how = ("UNet2DModel in unet/ + DDPMScheduler in scheduler/; README.md shows sampling with class "
               "labels and guidance" if conditional else
               "diffusers DDPMPipeline; load with DDPMPipeline.from_pretrained")
    elif task in ("tts", "vocoder"):  # speech has its own graphs and README: export_speech.py
        from .export_speech import write_speech_onnx

        _require_onnx()
        what: list[str] = []
        _staged(out, lambda d: what.append(write_speech_onnx(pipe, d, out, step)))
        how = f"ONNX opset {ONNX_OPSET}, {what[0]}; README.md shows text -> speech with onnxruntime"
    else:
        _require_onnx()
        _staged(out, lambda d: _write_onnx(pipe, d, out, step))
        how = f"ONNX opset {ONNX_OPSET}, dynamic batch; README.md shows how to run it with onnxruntime"
    source = f"{pipe.run_dir}" + (f" at step {step}" if step is not None else "")
    return f"wrote {out} ({how}) from {source}"


def _staged(out: Path, write: Callable[[Path], None]) -> None:
    """Build the export in a hidden sibling directory, then rename it into place."""
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GenforgeError(f"cannot write the export to {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _class_names(pipe) -> list[str] | None:
    """Names of the classes the exported network takes or returns (None for unconditional ones)."""
    k = getattr(pipe.model, "num_classes", 0)
    if pipe.cfg.task == "classify" or k:
        return pipe.class_names or [str(i) for i in range(k or int(pipe.cfg.model.params.get("num_classes", 10)))]
    return None


def _meta(pipe, fmt: str, step: Optional[int]) -> dict:
    return {"format": fmt, "genforge_version": __version__, "source_run": str(pipe.run_dir),
            "task": pipe.cfg.task, "model": pipe.cfg.model.name, "step": step, "class_names": _class_names(pipe)}


# ---- diffusers ------------------------------------------------------------------------------------
def _write_diffusers(pipe, dest: Path, final: Path, step: Optional[int]) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler

    model = pipe.model
    scheduler = DDPMScheduler(**model.scheduler_config)
    if not model.num_classes:
        DDPMPipeline(unet=model.unet, scheduler=scheduler).save_pretrained(dest, safe_serialization=True)
        (dest / "README.md").write_text(_readme_ddpm(pipe, final))
        return
    model.unet.save_pretrained(dest / "unet", safe_serialization=True)
    scheduler.save_pretrained(dest / "scheduler")
    _write_json(dest / "genforge.json", {**_meta(pipe, "diffusers", step), "null_class": model.null_class,
                                         "sampler_settings": _dpm_settings(model)})
    (dest / "README.md").write_text(_readme_conditional(pipe, final))


def _dpm_settings(model) -> dict:
    """What genforge's default sampler (dpm++) adds to the training schedule: see
    DiffusionModel.make_scheduler, which these must match."""
    return {"solver_order": 2, "algorithm_type": "dpmsolver++", "thresholding": True,
            "sample_max_value": 1.0, "timestep_spacing": model._spacing()}


def _kwargs(settings: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in settings.items())


def _readme_ddpm(pipe, path: Path) -> str:
    return f"""# {pipe.run_dir.name} (diffusers DDPMPipeline, exported by genforge {__version__})

```python
from diffusers import DDPMPipeline

pipe = DDPMPipeline.from_pretrained({str(path)!r})
images = pipe(batch_size=4, num_inference_steps=25).images  # PIL images
```
"""


def _readme_conditional(pipe, path: Path) -> str:
    m = pipe.model
    names = _class_names(pipe)
    labels = list(range(min(4, m.num_classes)))
    drop = pipe.cfg.task_params.get("cond_drop", 0.1)
    return f"""# {pipe.run_dir.name} (class-conditional diffusion, exported by genforge {__version__})

`unet/` is a diffusers `UNet2DModel` with a class embedding (`num_class_embeds` = {m.num_classes + 1}:
classes 0..{m.num_classes - 1} below, and {m.null_class}, the "no class" token used for classifier-free
guidance); `scheduler/` is the `DDPMScheduler` it was trained with. diffusers' `DDPMPipeline` cannot
pass class labels, so sample with the loop below. With the same seed, steps, labels and guidance it
reproduces `genforge sample --sampler dpm++` (genforge's default sampler: DPM-Solver++ on the training
schedule). For DDIM use `DDIMScheduler.from_config(config, clip_sample=True,
timestep_spacing={m._spacing()!r})`; for ancestral DDPM use the `DDPMScheduler` as saved.

Guidance above 1 needs a model trained with label dropout (`task_params.cond_drop`; this run: {drop}).

Classes: {", ".join(f"{i} = {n}" for i, n in enumerate(names))}

```python
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

path = {str(path)!r}
unet = UNet2DModel.from_pretrained(path, subfolder="unet").eval()
config = DDPMScheduler.load_config(path, subfolder="scheduler")
scheduler = DPMSolverMultistepScheduler.from_config(
    config, {_kwargs(_dpm_settings(m))})
labels = torch.tensor({labels})
guidance, null_class, seed, steps = 3.0, {m.null_class}, 0, 25

generator = torch.Generator().manual_seed(seed)
x = torch.randn(len(labels), {m.channels}, {m.image_size}, {m.image_size}, generator=generator)
scheduler.set_timesteps(steps)
x = x * scheduler.init_noise_sigma
both_labels = torch.cat([labels, torch.full_like(labels, null_class)])
with torch.no_grad():
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        tt = t.expand(2 * len(labels))
        cond, uncond = unet(torch.cat([inp, inp]), tt, class_labels=both_labels).sample.chunk(2)
        x = scheduler.step(uncond + guidance * (cond - uncond), t, x).prev_sample
images = x.clamp(-1, 1)  # (N, C, H, W) in [-1, 1]; (images + 1) * 127.5 gives pixel values
```
"""


# ---- ONNX -----------------------------------------------------------------------------------------
def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise GenforgeError("ONNX export needs the onnx and onnxruntime packages: "
                            "pip install 'genforge[export]'") from None


class _Denoiser(nn.Module):
    """The UNet alone, returning a tensor (diffusers returns a dataclass)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, class_labels=None):
        return self.unet(sample, timestep, class_labels=class_labels).sample


def onnx_graph(pipe, batch: int = 2) -> tuple[nn.Module, dict[str, torch.Tensor], str, dict]:
    """(module, named example inputs, output name, description) of what the ONNX file computes."""
    gen = torch.Generator().manual_seed(0)
    m, task = pipe.model, pipe.cfg.task
    if task == "gan":
        inputs = {"z": torch.randn(batch, m.z_dim, generator=gen)}
        if m.num_classes:
            inputs["labels"] = torch.arange(batch) % m.num_classes
        return m.generator, inputs, "images", {"images": "(N, C, H, W) float32 in [-1, 1]"}
    if task == "diffusion":
        inputs = {"sample": torch.randn(batch, m.channels, m.image_size, m.image_size, generator=gen),
                  "timestep": torch.arange(batch, dtype=torch.long) * 7 + 1}
        if m.num_classes:
            inputs["class_labels"] = torch.arange(batch) % (m.num_classes + 1)
        pred = m.scheduler_config["prediction_type"]
        return _Denoiser(m.unet), inputs, "model_output", {"model_output": f"(N, C, H, W) float32: {pred}"}
    if task == "classify":
        inputs = {"images": torch.rand(batch, pipe.channels, pipe.image_size, pipe.image_size,
                                       generator=gen) * 2 - 1}
        return m, inputs, "logits", {"logits": "(N, classes) float32; softmax gives probabilities"}
    raise GenforgeError(f"no ONNX export for task {task!r}")


def export_onnx_file(module: nn.Module, inputs: dict[str, torch.Tensor], output: str, path: Path) -> None:
    names = list(inputs)
    with warnings.catch_warnings():
        # the exporter's deprecation notice, and tracer notes on diffusers' shape asserts and its
        # batch >= 64 contiguity branch, which do not change what the graph computes
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(inputs.values()), str(path), dynamo=False,
                          input_names=names, output_names=[output], opset_version=ONNX_OPSET,
                          dynamic_axes={n: {0: "batch"} for n in [*names, output]})


def check_onnx(path: Path, module: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Run the file with onnxruntime and PyTorch on ``inputs``; the largest absolute difference."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
    with torch.no_grad():
        ref = module(*inputs.values())
    ref = ref.sample if hasattr(ref, "sample") else ref
    diff = float((got - ref).abs().max())
    if got.shape != ref.shape or not diff <= onnx_tolerance(ref):
        raise GenforgeError(f"the ONNX export of {path.name} disagrees with PyTorch (max difference {diff:.3g}, "
                            f"shape {tuple(got.shape)} vs {tuple(ref.shape)}); please report it")
    return diff


def _write_onnx(pipe, dest: Path, final: Path, step: Optional[int]) -> None:
    module, inputs, output, outputs = onnx_graph(pipe)
    export_onnx_file(module, inputs, output, dest / "model.onnx")
    # checked at another batch size than the trace's, so a batch axis baked in as a constant shows
    _, check_inputs, _, _ = onnx_graph(pipe, batch=3)
    diff = check_onnx(dest / "model.onnx", module, check_inputs)
    shapes = {k: {"shape": ["N", *v.shape[1:]], "dtype": str(v.dtype).replace("torch.", "")}
              for k, v in inputs.items()}
    meta = {**_meta(pipe, "onnx", step), "opset": ONNX_OPSET, "inputs": shapes, "outputs": outputs,
            "checked": {"batch": 3, "max_abs_diff_vs_pytorch": diff}}
    if pipe.cfg.task == "diffusion":
        from diffusers import DDPMScheduler

        DDPMScheduler(**pipe.model.scheduler_config).save_pretrained(dest / "scheduler")
        meta["null_class"] = pipe.model.null_class if pipe.model.num_classes else None
        meta["sampler_settings"] = _dpm_settings(pipe.model)
    _write_json(dest / "genforge.json", meta)
    (dest / "README.md").write_text(_readme_onnx(pipe, final, inputs, output))


def _readme_onnx(pipe, path: Path, inputs: dict[str, torch.Tensor], output: str) -> str:
    m, task = pipe.model, pipe.cfg.task
    head = (f"# {pipe.run_dir.name} (ONNX, exported by genforge {__version__})\n\n`model.onnx` takes "
            + ", ".join(f"`{k}` ({'N, ' + ', '.join(map(str, v.shape[1:])) if v.dim() > 1 else 'N'}; "
                        f"{str(v.dtype).replace('torch.', '')})" for k, v in inputs.items())
            + f" and returns `{output}`; the batch size N is free. `genforge.json` describes it.\n\n")
    names = _class_names(pipe)
    if names:
        head += "Classes: " + ", ".join(f"{i} = {n}" for i, n in enumerate(names)) + "\n\n"
    onnx_file = str(path / "model.onnx")
    run = f"import numpy as np\nimport onnxruntime as ort\n\nsess = ort.InferenceSession({onnx_file!r})\n"
    if task == "gan":
        feed = '{"z": z' + (f', "labels": np.array([0, 1, 2, 3]) % {m.num_classes}' if m.num_classes else "") + "}"
        body = (f"z = np.random.default_rng(0).standard_normal((4, {m.z_dim})).astype(np.float32)\n"
                f"images = sess.run(None, {feed})[0]  # (4, C, H, W) in [-1, 1]\n")
    elif task == "classify":
        shape = f"{pipe.channels}, {pipe.image_size}, {pipe.image_size}"
        body = (f"# images: float32 (N, {shape}), pixel / 127.5 - 1\n"
                f"images = np.zeros((1, {shape}), np.float32)\n"
                "logits = sess.run(None, {\"images\": images})[0]\n")
    else:
        cond = bool(m.num_classes)
        head += ("The sampling loop stays in Python: `scheduler/` is the training noise schedule and "
                 "`genforge.json`'s `sampler_settings` turn it into genforge's default sampler (dpm++)"
                 + (f"; class {m.null_class} is the \"no class\" token for classifier-free guidance"
                    if cond else "")
                 + ".\n\n")
        run = "import torch\nfrom diffusers import DDPMScheduler, DPMSolverMultistepScheduler\n" + run
        feed = '{"sample": inp.numpy(), "timestep": np.full(len(x), int(t), np.int64)' + (
            ', "class_labels": labels}' if cond else "}")
        body = (f"config = DDPMScheduler.load_config({str(path)!r}, subfolder=\"scheduler\")\n"
                f"scheduler = DPMSolverMultistepScheduler.from_config(\n    config, {_kwargs(_dpm_settings(m))})\n"
                + (f"labels = np.array([0, 1, 2, 3]) % {m.num_classes}\n" if cond else "")
                + f"x = torch.randn(4, {m.channels}, {m.image_size}, {m.image_size}, "
                  "generator=torch.Generator().manual_seed(0))\n"
                "scheduler.set_timesteps(25)\nx = x * scheduler.init_noise_sigma\n"
                "for t in scheduler.timesteps:\n    inp = scheduler.scale_model_input(x, t)\n"
                f"    feed = {feed}\n    out = torch.from_numpy(sess.run(None, feed)[0])\n"
                "    x = scheduler.step(out, t, x).prev_sample\n"
                "images = x.clamp(-1, 1)  # (4, C, H, W) in [-1, 1]\n")
    return head + "```python\n" + run + body + "```\n"
