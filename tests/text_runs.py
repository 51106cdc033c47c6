"""Tiny text model runs for the serving and web tests, trained once per test session.

A few steps of real training (text2image diffusion, textgan, captioner on 16 px shapes scenes), so the
run directories hold everything the trainer writes, tokenizer.json included; the models are barely
trained, so tests compare the server's answers with the pipelines', never with what a scene shows.
"""
from __future__ import annotations

import base64
import warnings
from functools import lru_cache
from pathlib import Path

import pytest

SHAPES = ["data.name=shapes", "data.image_size=16", "data.num_items=64", "data.max_objects=2",
          "train.steps=2", "train.batch_size=8", "train.tensorboard=false", "train.log_every=1"]
TINY = {
    "t2i": ["task=text2image", "model.name=text2image", "model.params.widths=[16,16]",
            "model.params.cross_attention=[false,true]", "model.params.attention_heads=2",
            "model.params.vocab_size=64", "model.params.context=12", "model.params.text_dim=16",
            "model.params.text_layers=1", "model.params.text_heads=2", "model.params.num_train_timesteps=50",
            "task_params.sample_steps=3", "task_params.eval_prompts=2", *SHAPES],
    "textgan": ["task=textgan", "model.name=textgan", "model.params.vocab_size=64", "model.params.max_length=12",
                "model.params.z_dim=8", "model.params.width=8", "model.params.d_width=8",
                "model.params.embed_dim=16", "model.params.text_hidden=16", "data.flip=false", *SHAPES],
    "cap": ["task=caption", "model.name=captioner", "model.params.vocab_size=64", "model.params.max_length=12",
            "model.params.width=8", "model.params.dim=16", "model.params.hidden=16", "model.params.grid=4",
            "data.flip=false", "task_params.eval_items=4", *SHAPES],
}
_trained: dict[str, Path] = {}  # one training per process, whichever test module asks first


@pytest.fixture(scope="session")
def text_runs(tmp_path_factory) -> dict[str, Path]:
    import torch

    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    if not _trained:
        root = tmp_path_factory.mktemp("text-runs")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # captions cut to the tiny context, untrained metrics
                for name, overrides in TINY.items():
                    Trainer(load_config(None, overrides), root / name).fit()
                    _trained[name] = root / name
        finally:
            torch.set_num_threads(threads)
    return dict(_trained)


@lru_cache(maxsize=None)
def pipeline(run_dir: Path):
    import genforge

    return genforge.load(run_dir, device="cpu")


def expected_b64(run_dir: Path, n: int, seed: int, **kw) -> list[str]:
    """``pipe.generate``'s images for a text-to-image run, encoded as the server encodes them."""
    from genforge.data.transforms import to_pil_list, to_uint8
    from genforge.serve.models import png_bytes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unknown-word notes the server returns as warnings
        x = pipeline(run_dir).generate(n=n, seed=seed, **kw)
    return [base64.b64encode(png_bytes(im)).decode() for im in to_pil_list(to_uint8(x))]
