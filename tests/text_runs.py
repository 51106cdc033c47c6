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


#: GPT sizes for model-level tests (no training)
LM_TINY = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)


def word_corpus(path: Path, lines: int = 300) -> str:
    """A plain text of numbered word lines with a blank line every seventh; returns the text."""
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    text = "".join(f"{words[i % 5]} {words[(3 * i) % 5]} line {i}.\n" + ("\n" if i % 7 == 0 else "")
                   for i in range(lines))
    path.write_text(text, encoding="utf-8")
    return text


def lm_args(corpus, *extra) -> list[str]:
    """Overrides of a one-layer character-level GPT trained 3 steps on ``corpus`` (later ones win)."""
    return ["task=lm", "model.name=gpt", "model.params.vocab_size=64", "model.params.block_size=16",
            "model.params.n_layer=1", "model.params.n_head=2", "model.params.n_embd=16",
            "data.name=text", f"data.path={corpus}", "train.batch_size=4", "train.steps=3",
            "train.tensorboard=false", "train.log_every=1", "train.lr=3e-3", "task_params.tokenizer=char",
            "task_params.eval_tokens=200", "data.val_fraction=0.3", *extra]


def lm_corpus(path: Path, lines: int = 300) -> Path:
    """A small text with chat-like turns, so a few training steps give the model some habits."""
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    text = "".join(f"User: say {words[i % 5]} {words[(3 * i) % 5]}\nAssistant: {words[(3 * i) % 5]} "
                   f"{words[i % 5]} line {i}.\n" for i in range(lines))
    path.write_text(text, encoding="utf-8")
    return path


LM = ["task=lm", "model.name=gpt", "model.params.vocab_size=64", "model.params.block_size=64",
      "model.params.n_layer=2", "model.params.n_head=2", "model.params.n_embd=32", "data.name=text",
      "train.batch_size=8", "train.steps=30", "train.tensorboard=false", "train.log_every=10",
      "train.lr=3e-3", "task_params.tokenizer=char", "task_params.eval_tokens=200", "data.val_fraction=0.2"]


_lm_trained: dict[str, Path] = {}  # apart from _trained, which text_runs fills all at once


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory) -> Path:
    """A character-level GPT (64-token context) trained 30 steps on ``lm_corpus``."""
    import torch

    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    if "lm" not in _lm_trained:
        root = tmp_path_factory.mktemp("lm-run")
        corpus = lm_corpus(root / "corpus.txt")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            Trainer(load_config(None, LM + [f"data.path={corpus}"]), root / "tiny-lm").fit()
        finally:
            torch.set_num_threads(threads)
        _lm_trained["lm"] = root / "tiny-lm"
    return _lm_trained["lm"]


_EN_ES = {"the": "el", "red": "rojo", "house": "casa", "is": "es", "big": "grande", "small": "pequeño",
          "dog": "perro", "cat": "gato", "sees": "ve", "a": "un", "green": "verde", "tree": "árbol"}
TRANSLATE = ["task=translate", "model.name=seq2seq", "model.params.vocab_size=200", "model.params.d_model=32",
             "model.params.n_layer_enc=1", "model.params.n_layer_dec=1", "model.params.n_head=2",
             "model.params.d_ff=64", "model.params.max_len=32", "data.name=parallel", "data.val_fraction=0.2",
             "train.steps=6", "train.batch_size=16", "train.lr=3e-3", "train.tensorboard=false",
             "train.log_every=2", "task_params.eval_sentences=4"]


@pytest.fixture(scope="session")
def translate_run(tmp_path_factory) -> Path:
    """A tiny English -> Spanish seq2seq run, trained 6 steps on made-up word-for-word pairs."""
    import random

    import torch

    from genforge.config import load_config
    from genforge.train.trainer import Trainer

    if "translate" not in _lm_trained:
        root = tmp_path_factory.mktemp("translate-run")
        rng, words = random.Random(0), list(_EN_ES)
        lines = []
        for i in range(200):
            ws = [rng.choice(words) for _ in range(rng.randint(2, 6))]
            lines.append(" ".join(ws) + f" {i}.\t" + " ".join(_EN_ES[w] for w in ws) + f" {i}.\n")
        (root / "pairs.tsv").write_text("".join(lines), encoding="utf-8")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Trainer(load_config(None, TRANSLATE + [f"data.path={root / 'pairs.tsv'}"]), root / "tiny-mt").fit()
        finally:
            torch.set_num_threads(threads)
        _lm_trained["translate"] = root / "tiny-mt"
    return _lm_trained["translate"]
