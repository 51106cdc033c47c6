"""A decoder-only transformer language model (GPT), with a key/value cache for generation.

Pre-norm blocks, attention through ``scaled_dot_product_attention`` (fused kernels where the device
has them), learned or rotary positions, and the output projection tied to the token embedding, which
saves ``vocab_size * n_embd`` weights and helps small models on small corpora. Sizes come from a named
preset (``PRESETS``: tiny 0.84 M, mini 2.75 M, small 6.42 M parameters), any of which the explicit
``block_size`` / ``n_layer`` / ``n_head`` / ``n_embd`` override.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_model

#: (keys, values) per layer, each (B, n_head, T, head_dim)
Cache = list[tuple[torch.Tensor, torch.Tensor]]
POSITIONS = ("learned", "rotary")
#: sizes by name (``model.params.preset``); parameters with vocab_size 256, tied weights, learned positions:
#: tiny 0.84 M (3.3 MB fp32), mini 2.75 M (11 MB), small 6.42 M (25.7 MB)
PRESETS = {
    "tiny": dict(block_size=128, n_layer=4, n_head=4, n_embd=128),
    "mini": dict(block_size=256, n_layer=6, n_head=6, n_embd=192),
    "small": dict(block_size=256, n_layer=8, n_head=8, n_embd=256),
}


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, rope=None, past=None):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = self.dropout if self.training else 0.0
        S = k.shape[2]
        if S == T:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        elif T == 1:  # one new token sees every cached key: no mask to build (the common decode step)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            # new queries sit after the cached keys: is_causal would align them with the first keys
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.drop(self.proj(y)), (k, v)

    def decode(self, x, rope, kv, lengths):
        """One new token per row (x: (B, 1, C)), row i at position ``lengths[i]``: its key and value
        are written into that slot of the row's cache (kv: (B, n_head, L, head_dim) each, updated in
        place) and it attends to the row's first ``lengths[i] + 1`` slots."""
        B, _, C = x.shape
        q, k, v = (t.view(B, 1, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        rows = torch.arange(B, device=x.device)
        kv[0][rows, :, lengths] = k[:, :, 0]
        kv[1][rows, :, lengths] = v[:, :, 0]
        S = int(lengths.max()) + 1  # slots past the longest row hold nothing yet
        mask = (torch.arange(S, device=x.device)[None, :] <= lengths[:, None])[:, None, None, :]
        y = F.scaled_dot_product_attention(q, kv[0][:, :, :S], kv[1][:, :, :S], attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, 1, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = Attention(n_embd, n_head, dropout, bias)
        self.ln2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=bias), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=bias), nn.Dropout(dropout))

    def forward(self, x, rope=None, past=None):
        a, kv = self.attn(self.ln1(x), rope, past)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv

    def decode(self, x, rope, kv, lengths):
        x = x + self.attn.decode(self.ln1(x), rope, kv, lengths)
        return x + self.mlp(self.ln2(x))


@register_model("gpt")
class GPT(nn.Module):
    #: weights indexed by token id (matched by token text when train.init_from warm-starts a run)
    token_tables = ("wte.weight", "head.weight")

    def __init__(self, vocab_size: int = 256, block_size: Optional[int] = None, n_layer: Optional[int] = None,
                 n_head: Optional[int] = None, n_embd: Optional[int] = None, dropout: float = 0.0,
                 positions: str = "learned", bias: bool = False, tie_weights: bool = True, preset: str = "tiny"):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        # the preset fills in the sizes not given, so preset=small block_size=128 is small with a shorter context
        given = dict(block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        sizes = {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        block_size, n_layer, n_head, n_embd = (sizes[k] for k in ("block_size", "n_layer", "n_head", "n_embd"))
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        if n_embd % n_head or (positions == "rotary" and (n_embd // n_head) % 2):
            raise ValueError(f"n_embd={n_embd} must split into n_head={n_head} heads (of even width for "
                             f"rotary positions)")
        if min(vocab_size, block_size, n_layer, n_head) < 1 or not 0 <= dropout < 1:
            raise ValueError("vocab_size, block_size, n_layer and n_head must be positive, dropout in [0, 1)")
        self.vocab_size, self.block_size, self.positions = vocab_size, block_size, positions
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd) if positions == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.wte.weight
        self.apply(self._init)
        # GPT-2's scaling: each block adds to the residual stream twice
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))
        if positions == "rotary":
            half = n_embd // n_head // 2
            self.register_buffer("inv_freq", 10000.0 ** (-torch.arange(half).float() / half), persistent=False)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, past: Optional[Cache] = None,
                use_cache: bool = False):
        """Logits (B, T, vocab) for ids ``idx`` (B, T) that follow the ``past`` cache's tokens; with
        ``use_cache`` also the cache extended by these tokens."""
        B, T = idx.shape
        start = past[0][0].shape[2] if past else 0
        if start + T > self.block_size:
            raise ValueError(f"{start + T} tokens exceed the model's context of {self.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(pos)
        else:
            ang = pos[:, None].float() * self.inv_freq[None, :]
            rope = (ang.cos().to(x.dtype), ang.sin().to(x.dtype))
        x = self.drop(x)
        present: Cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, rope, past[i] if past else None)
            present.append(kv)
        logits = self.head(self.ln_f(x))
        return (logits, present) if use_cache else logits

    def decode_step(self, idx: torch.Tensor, cache: Cache, lengths: torch.Tensor) -> torch.Tensor:
        """Last-position logits (B, vocab) for one new id per row (``idx`` (B,)), where row i already
        holds ``lengths[i]`` tokens in ``cache`` (per layer (keys, values), each (B, n_head, L,
        head_dim), rows left-aligned; the new keys and values are written into it). Rows of different
        lengths decode together: what continuous batching in the server needs. Same logits as
        ``forward`` with a ``past`` of each row's tokens, up to float rounding."""
        if int(lengths.max()) >= min(self.block_size, cache[0][0].shape[2]):
            raise ValueError(f"a row would exceed the cache or the model's context of {self.block_size}")
        x = self.wte(idx)[:, None]
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(lengths)[:, None]
        else:
            ang = lengths[:, None].float() * self.inv_freq[None, :]
            rope = (ang.cos().to(x.dtype)[:, None, None], ang.sin().to(x.dtype)[:, None, None])
        for block, kv in zip(self.blocks, cache):
            x = block.decode(x, rope, kv, lengths)
        return self.head(self.ln_f(x))[:, 0]


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``logits`` (..., V) with everything outside the top ``top_k`` tokens and outside the smallest
    set whose probability reaches ``top_p`` set to -inf (0 and 1.0 switch a filter off)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # a token is dropped when the more likely ones before it already reach top_p
        drop = probs.cumsum(-1) - probs >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
         generator: Optional[torch.Generator]) -> torch.Tensor:
    """Next ids (B,) from last-position logits (B, V); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()
    # shifted so the largest is 0: a tiny temperature then gives -inf for the rest, not inf - inf = nan
    logits = logits - logits.max(-1, keepdim=True).values
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def stream_ids(model: GPT, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, generator: Optional[torch.Generator] = None,
               use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield each next id (B,) after ``ids`` (B, T >= 1). The context is the last ``block_size``
    tokens; the cache is used while everything fits in it, and beyond that each step recomputes the
    window, so cached and uncached generation give the same ids."""
    past: Optional[Cache] = None
    for _ in range(max_new_tokens):
        if use_cache and past is not None and ids.shape[1] <= model.block_size:
            logits, past = model(ids[:, -1:], past=past, use_cache=True)
        else:
            window = ids[:, -model.block_size:]
            logits, past = model(window, use_cache=True)
        nxt = pick(logits[:, -1], temperature, top_k, top_p, generator)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        yield nxt
