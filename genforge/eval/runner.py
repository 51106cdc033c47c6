"""``genforge eval fid``: sample a run, embed samples and reference images, report FID/KID/PR.

Inception weights cannot be downloaded here, so the default feature net is a genforge classifier
trained on the same dataset (shipped as ``classifier-<dataset>``); the figure is then reported as
``FID-<feature net>`` so nobody mistakes it for Inception-FID. ``--inception-weights`` switches to the
standard network and clean-resize preprocessing.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..data import load_dataset
from ..data.transforms import to_uint8
from ..errors import GenforgeError


def classifier_feature_net(spec: str, device: str = "auto"):
    from ..pipelines import load_pipeline
    from ..pipelines.classify import ClassifierPipeline
    from .fid import ClassifierFeatures

    pipe = load_pipeline(spec, device=device)
    if not isinstance(pipe, ClassifierPipeline):
        raise GenforgeError(f"feature net {spec!r} is a {pipe.cfg.task!r} run; it must be a classify run")
    name = Path(str(pipe.run_dir)).name
    return ClassifierFeatures(pipe.model, image_size=pipe.image_size, channels=pipe.channels, name=name,
                              class_names=pipe.class_names)


def default_feature_net(dataset: str, device: str = "auto", dcfg=None, labelled: bool = True):
    """The shipped classifier of ``dataset``; without one, an error giving the command that trains one
    on exactly the reference data (``dcfg``)."""
    from ..pipelines import shipped_models

    name = f"classifier-{dataset}"
    if name not in shipped_models():
        if dcfg is not None and not labelled:
            raise GenforgeError(
                f"no shipped feature net for dataset {dataset!r}, and its images have no labels to train one "
                "(a classifier needs class subfolders); pass --feature-net RUN_DIR of a classifier trained on "
                "similar labelled images, or --inception-weights")
        args = [f"data.name={dataset}"]
        if dcfg is not None:
            if dcfg.path:
                args.append(f"data.path={Path(dcfg.path).expanduser().resolve()}")
            args.append(f"data.image_size={dcfg.image_size}")
            if dcfg.channels:
                args.append(f"data.channels={dcfg.channels}")
        raise GenforgeError(
            f"no shipped feature net for dataset {dataset!r}; train one with "
            f"`genforge train classifier_fashion {' '.join(args)} --out runs/classifier-{dataset}` "
            f"and pass --feature-net runs/classifier-{dataset}, or pass --inception-weights")
    return classifier_feature_net(name, device)


def fid_for_run(run_dir: str, data: Optional[str] = None, data_path: Optional[str] = None,
                split: str = "test", n: int = 2000, feature_net: Optional[str] = None,
                inception_weights: Optional[Path] = None, steps: int = 25, sampler: str = "dpm++",
                seed: int = 0, device: str = "auto", guidance: float = 1.0) -> dict:
    from ..pipelines import load_pipeline
    from ..pipelines.image import ImagePipeline
    from ..pipelines.text2image import TextToImagePipeline
    from . import fid_report

    pipe = load_pipeline(run_dir, device=device)
    prompted = isinstance(pipe, TextToImagePipeline)
    if not isinstance(pipe, ImagePipeline) and not prompted:
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; FID needs a gan, diffusion or text-to-image run")
    dcfg = pipe.cfg.data.model_copy(update={"split": split, "flip": False, "limit": n})
    if data is not None:
        dcfg = dcfg.model_copy(update={"name": data})
    if data_path is not None:
        dcfg = dcfg.model_copy(update={"path": data_path})
    ref = load_dataset(dcfg)
    ask: dict = {}
    if prompted:  # one image per reference image's own caption: FID of what the captions describe
        captions = ref.columns.get("caption")
        if not captions:
            raise GenforgeError(f"FID of a text-to-image run draws one image per reference caption, and "
                                f"{dcfg.name!r} has no captions; pick captioned reference data (--data)")
        n, ask = len(captions), {"prompt": list(captions)}
    held_out = bool(ref.meta.get("held_out", split == "test"))
    if not held_out:
        warnings.warn(f"the reference images are {dcfg.name!r}'s training images (split {split!r}"
                      f"{', data.val_fraction=0' if dcfg.name == 'folder' else ''}): FID against them rewards "
                      "memorising the training set; use held-out images (--split test, data.val_fraction > 0)")
    if inception_weights is not None:
        from .inception import InceptionFeatures

        net = InceptionFeatures.from_weights(inception_weights)
    elif feature_net is not None:
        net = classifier_feature_net(feature_net, device)
    else:
        net = default_feature_net(dcfg.name, device, dcfg, labelled=ref.num_classes > 0)
    t0 = time.time()
    from ..train.logging import step_progress

    with step_progress("generate", n_chunks=-(-n // 64), enabled=pipe.kind == "diffusion" or prompted) as report:
        fake = to_uint8(pipe.generate(n=n, seed=seed, steps=steps, sampler=sampler, guidance=guidance,
                                      progress=report, **ask))
    gen_s = time.time() - t0
    with torch.no_grad():
        f_real = net.features(ref.images)
        f_fake = net.features(fake)
    info = {"run_dir": str(pipe.run_dir), "dataset": dcfg.name, "split": split, "reference_held_out": held_out,
            "seed": seed,
            "generate_seconds": round(gen_s, 2)}
    if prompted and pipe.default_layout != "off":
        info["layout"] = pipe.default_layout  # how the prompts' objects were placed (pipelines/layout.py)
    if pipe.cfg.task == "diffusion":
        info.update(sampler=sampler, steps=steps)
        if pipe.conditional:
            info.update(guidance=guidance)
    elif prompted:
        info.update(prompts="the reference images' captions", guidance=guidance)
        if pipe.cfg.task == "text2image":
            info.update(sampler=sampler, steps=steps)
    info.update(class_accuracy(pipe, net, fake, n))
    return fid_report(f_real, f_fake, net.name, **info)


def class_accuracy(pipe, net, fake: torch.Tensor, n: int) -> dict:
    """For a class-conditional generator judged by a classifier of the same classes: how often the
    classifier names the class each image was asked for (overall and per class). Empty otherwise."""
    from .fid import ClassifierFeatures

    names = pipe.class_names if pipe.conditional else None
    if not names or not isinstance(net, ClassifierFeatures) or net.class_names != names:
        return {}
    asked = pipe.label_tensor(n)  # what generate(n) drew: every class in turn
    hit = (net.predict(fake) == asked).float()
    per_class = {name: round(float(hit[asked == i].mean()), 4) for i, name in enumerate(names)
                 if bool((asked == i).any())}
    return {"class_accuracy": round(float(hit.mean()), 4), "class_accuracy_per_class": per_class}
