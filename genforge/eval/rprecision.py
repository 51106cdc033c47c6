"""R-precision of text-to-image samples (as in AttnGAN): each image's own prompt is ranked among
R-1 distractor captions by a contrastive text-image model's similarity; the score is the fraction
of images whose own prompt ranks first. With R=100 chance is 1 %; real test images scored the same
way give the ceiling the scorer itself allows.

The scoring functions are pure (tensors in, numbers out); ``load_scorer`` turns a ``contrastive``
run directory into the model and tokenizer that embed images and captions for them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..errors import GenforgeError


def draw_distractors(true_texts: Sequence[str], pool: Sequence[str], k: int, seed: int = 0) -> torch.Tensor:
    """(N, k) indices into ``pool``: for each true text, ``k`` distinct pool captions whose text
    differs from it (an identical caption would be a second right answer, not a distractor),
    drawn with a generator seeded by ``seed`` so the same call draws the same distractors."""
    if k < 1:
        raise GenforgeError(f"R-precision needs at least one distractor (R >= 2), got {k}")
    gen = torch.Generator().manual_seed(seed)
    pool_list = list(pool)
    out = torch.empty(len(true_texts), k, dtype=torch.long)
    for i, text in enumerate(true_texts):
        allowed = torch.tensor([j for j, p in enumerate(pool_list) if p != text], dtype=torch.long)
        if len(allowed) < k:
            raise GenforgeError(f"the distractor pool has {len(allowed)} captions other than {text!r} but "
                                f"R-1={k} are needed; give a larger pool or a smaller R")
        out[i] = allowed[torch.randperm(len(allowed), generator=gen)[:k]]
    return out


def r_precision(true_sim: torch.Tensor, distractor_sim: torch.Tensor) -> float:
    """Fraction of rows whose true similarity beats every distractor's: (N,) and (N, R-1) in.

    A tie counts as a miss, so a scorer that cannot tell the captions apart earns nothing for it."""
    if true_sim.ndim != 1 or distractor_sim.ndim != 2 or len(true_sim) != len(distractor_sim):
        raise GenforgeError(f"r_precision takes (N,) and (N, R-1) similarities, got "
                            f"{tuple(true_sim.shape)} and {tuple(distractor_sim.shape)}")
    if len(true_sim) == 0:
        raise GenforgeError("r_precision of no images is undefined")
    return (true_sim > distractor_sim.max(1).values).double().mean().item()


def r_precision_of(image_emb: torch.Tensor, true_texts: Sequence[str], text_emb: torch.Tensor,
                   pool: Sequence[str], pool_emb: torch.Tensor, r: int = 100, seed: int = 0) -> float:
    """R-precision from embeddings: ``image_emb[i]`` against its prompt ``text_emb[i]`` and R-1
    distractors ``pool_emb[draw]``; all embeddings unit norm, so a dot product is the similarity."""
    idx = draw_distractors(true_texts, pool, r - 1, seed)
    true_sim = (image_emb * text_emb).sum(-1)
    distractor_sim = torch.einsum("nd,nkd->nk", image_emb, pool_emb[idx])
    return r_precision(true_sim, distractor_sim)


def retrieval_top1(image_emb: torch.Tensor, text_emb: torch.Tensor, texts: Sequence[str]) -> dict[str, float]:
    """Top-1 retrieval accuracy both ways over one gallery of (image, caption) pairs: right when the
    retrieved item's caption is the query's caption text (repeated captions are all right answers)."""
    sim = image_emb @ text_emb.T
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    key = torch.tensor([ids[t] for t in texts])
    i2t = (key[sim.argmax(1)] == key).double().mean().item()
    t2i = (key[sim.argmax(0)] == key).double().mean().item()
    return {"text_to_image_top1": t2i, "image_to_text_top1": i2t}


# ---- the scorer: a contrastive run's model and tokenizer --------------------------------------------
@torch.no_grad()
def embed_images(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Unit-norm embeddings of float images in [-1, 1], computed on the model's device."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        return torch.cat([model.encode_image(images[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)])
    finally:
        model.train(was)


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        out = []
        for i in range(0, len(texts), batch_size):
            ids = tokenizer.batch(list(texts[i:i + batch_size]), max_length=model.context)
            out.append(model.encode_text(ids.to(device), (ids != 0).long().to(device)).cpu())
        return torch.cat(out)
    finally:
        model.train(was)


def load_scorer(path: str | Path, device: str = "cpu"):
    """(model, tokenizer, config) of a ``contrastive`` run directory or shipped name."""
    from ..device import pick_device
    from ..pipelines import load_model, resolve_run_dir
    from ..text.tokenizer import TextTokenizer

    run_dir = resolve_run_dir(path)
    cfg, model = load_model(run_dir, pick_device(device))
    if cfg.task != "contrastive":
        raise GenforgeError(f"{run_dir} is a {cfg.task!r} run; R-precision needs a 'contrastive' run "
                            "(train one with genforge/recipes/clip_shapes.yaml)")
    return model, TextTokenizer.load(run_dir), cfg


def score_images(model, tokenizer, images: torch.Tensor, prompts: Sequence[str], pool: Sequence[str],
                 r: int = 100, seed: int = 0) -> float:
    """R-precision of float images in [-1, 1] drawn for ``prompts``, distractors from ``pool``."""
    pool = list(pool)
    return r_precision_of(embed_images(model, images), prompts, embed_texts(model, tokenizer, prompts),
                          pool, embed_texts(model, tokenizer, pool), r=r, seed=seed)
