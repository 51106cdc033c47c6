"""An encoder-decoder transformer for translation (Vaswani et al. 2017), pre-norm.

One token embedding serves the encoder, the decoder and the output projection: source and target
share one vocabulary (a joint BPE), which on a small corpus lets names, numbers and cognates be
copied with no extra weights. The embedding is scaled by sqrt(d_model) on the way in, as in the
paper, so its small initialisation suits the tied output layer. Attention goes through
``scaled_dot_product_attention``.

Decoding keeps a cache: the decoder self-attention's keys and values grow by one position per
step, and the cross-attention's keys and values over the source are computed once per sentence
(``start``). ``generate`` runs greedy or beam search (the search code of models/captioner.py) over
it. Token ids follow genforge.text.tokenizer: 0 pad, 1 begin, 2 end.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_model
from .captioner import beam_search, greedy_search

PAD, BOS, EOS = 0, 1, 2
POSITIONS = ("sinusoidal", "learned")
KV = tuple[torch.Tensor, torch.Tensor]
#: (self-attention (keys, values) per decoder layer, cross-attention (keys, values) per layer); each
#: tensor (B, n_head, length, head_dim)
Cache = tuple[list[KV], list[KV]]


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(T, dim) sinusoidal position codes of ``positions`` (T,), sines in the first half."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device).float() / half)
    ang = positions.float()[:, None] * freq[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.q = nn.Linear(d_model, d_model, bias=bias)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> KV:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x: torch.Tensor, kv: KV, mask: Optional[torch.Tensor] = None,
                causal: bool = False) -> torch.Tensor:
        q = self.heads(self.q(x))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask, dropout_p=p, is_causal=causal)
        B, _, T, _ = y.shape
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, -1)))


def _mlp(d_model: int, d_ff: int, dropout: float, bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, d_ff, bias=bias), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(d_ff, d_model, bias=bias), nn.Dropout(dropout))


class EncoderLayer(nn.Module):
    def __init__(self, d_model, n_head, d_ff, dropout, bias):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_head, dropout, bias)
        self.mlp = _mlp(d_model, d_ff, dropout, bias)

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, self.attn.keys_values(h), mask)
        return x + self.mlp(self.ln2(x))


class DecoderLayer(nn.Module):
    def __init__(self, d_model, n_head, d_ff, dropout, bias):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.self_attn = Attention(d_model, n_head, dropout, bias)
        self.cross_attn = Attention(d_model, n_head, dropout, bias)
        self.mlp = _mlp(d_model, d_ff, dropout, bias)

    def forward(self, x, past: KV, cross: KV, memory_mask):
        h = self.ln1(x)
        k, v = self.self_attn.keys_values(h)
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        T, S = x.shape[1], k.shape[2]
        if S == T:  # no cached positions (training, or the first step)
            x = x + self.self_attn(h, (k, v), causal=True)
        else:  # new queries sit after the cached keys: is_causal would align them with the first keys
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            x = x + self.self_attn(h, (k, v), mask)
        x = x + self.cross_attn(self.ln2(x), cross, memory_mask)
        return x + self.mlp(self.ln3(x)), (k, v)


@register_model("seq2seq")
class Seq2Seq(nn.Module):
    """``model(src_ids, tgt_ids)`` -> next-token logits (B, T, vocab_size) under teacher forcing, where
    ``tgt_ids`` starts with [BOS]; padding (id 0) in ``src_ids`` is masked out of attention."""

    #: weights indexed by token id (matched by token text when train.init_from warm-starts a run)
    token_tables = ("embed.weight",)

    def __init__(self, vocab_size: int = 8000, d_model: int = 256, n_layer_enc: int = 3, n_layer_dec: int = 3,
                 n_head: int = 4, d_ff: int = 1024, dropout: float = 0.1, max_len: int = 256,
                 positions: str = "sinusoidal", bias: bool = True):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        if d_model % n_head or d_model % 2:
            raise ValueError(f"d_model={d_model} must be even and split into n_head={n_head} heads")
        if min(n_layer_enc, n_layer_dec, n_head, d_ff) < 1 or not 0 <= dropout < 1:
            raise ValueError("n_layer_enc, n_layer_dec, n_head and d_ff must be positive, dropout in [0, 1)")
        if vocab_size < 5 or max_len < 3:
            raise ValueError(f"vocab_size must be at least 5 (4 special tokens and one more) and max_len at "
                             f"least 3, got {vocab_size} and {max_len}")
        self.vocab_size, self.d_model, self.max_len, self.n_head = vocab_size, d_model, max_len, n_head
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, n_head, d_ff, dropout, bias)
                                     for _ in range(n_layer_enc))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, n_head, d_ff, dropout, bias)
                                     for _ in range(n_layer_dec))
        self.ln_enc, self.ln_dec = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)

    def _embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        T = ids.shape[1]
        if start + T > self.max_len:
            raise ValueError(f"{start + T} tokens exceed the model's max_len of {self.max_len}")
        x = self.embed(ids) * math.sqrt(self.d_model)
        pos = torch.arange(start, start + T, device=ids.device)
        x = x + (self.pos(pos) if self.pos is not None else sinusoids(pos, self.d_model).to(x.dtype))
        return self.drop(x)

    @staticmethod
    def source_mask(src_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) bool: True at real source tokens."""
        return src_ids != PAD

    def encode(self, src_ids: torch.Tensor, src_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Memory (B, S, d_model) of the source ids; ``src_mask`` (B, S) True at real tokens."""
        mask = self.source_mask(src_ids) if src_mask is None else src_mask
        attn_mask = mask[:, None, None, :]  # every query sees the real keys of its own sentence
        x = self._embed(src_ids)
        for layer in self.encoder:
            x = layer(x, attn_mask)
        return self.ln_enc(x)

    def start(self, memory: torch.Tensor) -> Cache:
        """An empty decoder cache for ``memory``, holding each layer's cross-attention keys/values."""
        B, dev, dt = memory.shape[0], memory.device, memory.dtype
        hd = self.d_model // self.n_head
        empty = torch.zeros(B, self.n_head, 0, hd, device=dev, dtype=dt)
        return ([(empty, empty) for _ in self.decoder],
                [layer.cross_attn.keys_values(memory) for layer in self.decoder])

    def decode(self, tgt_ids: torch.Tensor, memory: Optional[torch.Tensor], memory_mask: torch.Tensor,
               cache: Optional[Cache] = None) -> tuple[torch.Tensor, Cache]:
        """Logits (B, T, vocab) of the tokens after ``tgt_ids`` (B, T), which follow the positions already
        in ``cache`` (None: ``tgt_ids`` starts at [BOS]; the cache is then built from ``memory``, which
        is not needed once a cache is given), and the cache extended by these tokens."""
        if cache is None:
            cache = self.start(memory)
        past, cross = cache
        x = self._embed(tgt_ids, start=past[0][0].shape[2])
        attn_mask = memory_mask[:, None, None, :]
        present = []
        for layer, kv, ckv in zip(self.decoder, past, cross):
            x, new = layer(x, kv, ckv, attn_mask)
            present.append(new)
        return F.linear(self.ln_dec(x), self.embed.weight), (present, cross)

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        mask = self.source_mask(src_ids)
        return self.decode(tgt_ids, self.encode(src_ids, mask), mask)[0]

    def step_fn(self, src_ids: torch.Tensor, repeat: int = 1):
        """(step function, initial state) for the search functions of models/captioner.py, each
        sentence repeated ``repeat`` times in a row (row i*repeat + j is beam j of sentence i).

        Greedy search (no repeats) drops finished rows, so its state carries each row's cross
        keys/values and mask; a beam only reorders rows within one sentence, whose rows share them,
        so with repeats they stay out of the state and are never copied."""
        mask = self.source_mask(src_ids)
        memory = self.encode(src_ids, mask)
        if repeat > 1:
            memory, mask = memory.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
        past, cross = self.start(memory)
        rowwise = repeat == 1
        special = torch.tensor([PAD, BOS], device=src_ids.device)

        def step(tokens: torch.Tensor, state: Any):
            p, c, m = state if rowwise else (state, cross, mask)
            logits, (p, _) = self.decode(tokens[:, -1:], None, m, (p, c))
            # padding and [BOS] are never a next word: left in, an untrained model loops on them
            logp = logits[:, -1].float().index_fill(-1, special, float("-inf")).log_softmax(-1)
            return logp, ((p, c, m) if rowwise else p)

        return step, ((past, cross, mask) if rowwise else past)

    @torch.no_grad()
    def generate(self, src_ids: torch.Tensor, beam: int = 1, max_len: Optional[int] = None,
                 length_penalty: float = 1.0) -> torch.Tensor:
        """Target ids (B, L) after [BOS], each row ending at its [EOS] (then padding). ``max_len``:
        most target tokens with [BOS] and [EOS] (default and cap: the model's max_len). Beam
        hypotheses are ranked by log-probability / length ** length_penalty (0: the plain sum)."""
        limit = self.max_len if max_len is None else min(max_len, self.max_len)
        step, state = self.step_fn(src_ids, repeat=beam)
        if beam == 1:
            return greedy_search(step, state, len(src_ids), limit, src_ids.device)
        return beam_search(step, state, len(src_ids), beam, limit, src_ids.device, alpha=length_penalty)[0]
