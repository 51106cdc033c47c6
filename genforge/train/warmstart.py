"""Start a new run from another run's weights (``train.init_from``): fine-tuning, or growing a model
from a smaller relative, such as a text-to-video model from the text-to-image model whose UNet it
runs on every frame.

Tensors are matched by name. One of the same shape is copied. One that is larger along a single
axis (the video UNet's first conv reads an extra frame-position channel) gets the source's slice
and zeros elsewhere, so the new inputs start out ignored and the network computes what the source
did. Token embedding tables (``model.token_tables``) are matched by token text, not id, through
both runs' ``tokenizer.json``: a tokenizer trained on new captions numbers its tokens differently,
and "▁square" should keep what it learned whatever its id. Everything else keeps its fresh
initialisation (the video model's temporal layers, which start as identities). The source's
``model.safetensors`` holds its inference (EMA) weights; nothing of its optimizer state is taken.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import GenforgeError
from ..text.tokenizer import TextTokenizer
from . import checkpoint as ckpt


def _widened(dst: torch.Tensor, src: torch.Tensor) -> Optional[int]:
    """The one axis along which ``dst`` is larger than ``src`` (all others equal), else None."""
    if dst.dim() != src.dim():
        return None
    diff = [i for i, (a, b) in enumerate(zip(dst.shape, src.shape)) if a != b]
    return diff[0] if len(diff) == 1 and dst.shape[diff[0]] > src.shape[diff[0]] else None


def warm_start(model: torch.nn.Module, source: Path, tokenizer=None) -> dict:
    """Copy what fits of ``source/model.safetensors`` into ``model`` (in place); a report of what was
    copied, widened, remapped and left fresh. ``tokenizer``: the new run's (for token tables)."""
    weights = ckpt.load_tensors(source / "model.safetensors")
    own = model.state_dict()
    tables = set(getattr(model, "token_tables", ()))
    old_vocab = new_vocab = None
    if tables and tokenizer is not None and (source / "tokenizer.json").is_file():
        old_vocab = TextTokenizer.load(source / "tokenizer.json").tok.get_vocab()
        new_vocab = tokenizer.tok.get_vocab()
    report = {"source": str(source), "copied": 0, "widened": [], "remapped_tokens": 0, "fresh": [],
              "mismatched": []}
    update = {}
    with torch.no_grad():
        for name, dst in own.items():
            src = weights.get(name)
            if src is None:
                report["fresh"].append(name)
                continue
            src = src.to(dst.dtype)
            if name in tables and old_vocab is not None and src.shape[1:] == dst.shape[1:]:
                out = dst.clone()
                for text, i in new_vocab.items():
                    j = old_vocab.get(text)
                    if j is not None and i < out.shape[0] and j < src.shape[0]:
                        out[i] = src[j]
                        report["remapped_tokens"] += 1
                update[name] = out
            elif src.shape == dst.shape:
                update[name] = src
                report["copied"] += 1
            elif (axis := _widened(dst, src)) is not None:
                out = torch.zeros_like(dst)
                out.narrow(axis, 0, src.shape[axis]).copy_(src)
                update[name] = out
                report["widened"].append(name)
            else:
                report["mismatched"].append(name)
    if not update:
        raise GenforgeError(f"train.init_from={source}: none of its tensors match this model's names; "
                            "it was trained for a different kind of model")
    model.load_state_dict(update, strict=False)
    return report


def describe(report: dict) -> str:
    """One line for the terminal."""
    parts = [f"{report['copied']} tensors copied"]
    if report["widened"]:
        parts.append(f"{len(report['widened'])} widened with zeros ({', '.join(report['widened'])})")
    if report["remapped_tokens"]:
        parts.append(f"{report['remapped_tokens']} token embeddings matched by text")
    parts.append(f"{len(report['fresh'])} new")
    if report["mismatched"]:
        parts.append(f"{len(report['mismatched'])} of another shape left fresh")
    return f"initialised from {report['source']}: " + ", ".join(parts)
