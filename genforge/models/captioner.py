"""Image captioning: a small CNN encoder giving a grid of features, and a text decoder over it.

Two decoders, picked by ``decoder``:

- ``attention``: Show, Attend and Tell (Xu et al. 2015): a GRU whose input at each step is the last
  word and a gated, additively attended summary of the feature grid.
- ``transformer``: a pre-norm transformer decoder, causal self-attention over the words so far and
  cross-attention to the feature grid.

Decoding (``greedy_search``, ``beam_search``) only needs a step function ``(tokens, state) ->
(log-probabilities of the next token, state)``, so it is written once for both decoders and can be
tested on a hand-built distribution. Token ids follow genforge.text.tokenizer: 0 pad, 1 begin,
2 end.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from ..registry import register_model

PAD, BOS, EOS = 0, 1, 2
DECODERS = ("attention", "transformer")

StepFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class Encoder(nn.Module):
    """Images (N, C, H, W) in [-1, 1] -> features (N, grid*grid, dim), each with a learnt position,
    because which cell an object sits in is part of what the caption says."""

    def __init__(self, channels: int, width: int, dim: int, grid: int):
        super().__init__()
        w = width
        # receptive field 17 px at the 8x8 output of a 32 px image: more than one 3x3-grid cell
        self.body = nn.Sequential(*_conv(channels, w), *_conv(w, 2 * w, 2), *_conv(2 * w, 4 * w, 2),
                                  *_conv(4 * w, 4 * w), nn.AdaptiveAvgPool2d(grid))
        self.proj = nn.Linear(4 * w, dim)
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, dim))
        nn.init.normal_(self.pos, std=0.02)

    channels_last = False  # set by Captioner.for_inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f = self.body(x).flatten(2).transpose(1, 2)
        return self.proj(f) + self.pos


class AttentionDecoder(nn.Module):
    """GRU with additive attention and the paper's sigmoid gate on the attended context."""

    def __init__(self, vocab_size: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        # attention scores live in a dim-sized space: that sum is formed for every grid position at
        # every step, the decoder's largest cost
        self.att_mem, self.att_h = nn.Linear(dim, dim), nn.Linear(hidden, dim)
        self.att_v = nn.Linear(dim, 1)
        self.gate = nn.Linear(hidden, dim)
        self.init_h = nn.Linear(dim, hidden)
        self.cell = nn.GRUCell(2 * dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden + dim, vocab_size)

    def start(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(initial hidden state, the memory's attention keys): the keys are computed once per image."""
        return torch.tanh(self.init_h(memory.mean(1))), self.att_mem(memory)

    def step(self, memory: torch.Tensor, keys: torch.Tensor, h: torch.Tensor,
             prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the next token after ``prev`` (N,), and the new hidden state."""
        e = self.att_v(torch.tanh(keys + self.att_h(h).unsqueeze(1))).squeeze(-1)
        ctx = (e.softmax(-1).unsqueeze(-1) * memory).sum(1) * torch.sigmoid(self.gate(h))
        h = self.cell(torch.cat([self.embed(prev), ctx], -1), h)
        return self.out(self.drop(torch.cat([h, ctx], -1))), h

    def forward(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h, keys = self.start(memory)
        logits = []
        for t in range(tokens.shape[1]):
            out, h = self.step(memory, keys, h, tokens[:, t])
            logits.append(out)
        return torch.stack(logits, 1)


class TransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, dim: int, layers: int, heads: int, max_length: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.zeros(1, max_length, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size)

    def forward(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.pos.shape[1]:
            raise ValueError(f"{t} tokens exceed the decoder's max_length {self.pos.shape[1]}")
        x = self.embed(tokens) + self.pos[:, :t]
        mask = torch.full((t, t), float("-inf"), device=tokens.device).triu(1)
        return self.out(self.norm(self.blocks(x, memory, tgt_mask=mask)))


@register_model("captioner")
class Captioner(nn.Module):
    """``model(images, tokens)`` -> next-token logits (N, T, vocab_size) under teacher forcing, where
    ``tokens`` starts with [BOS]; ``model.step_fn(images)`` gives the decoding interface."""

    def __init__(self, channels: int = 3, image_size: int = 32, vocab_size: int = 1000, max_length: int = 32,
                 decoder: str = "attention", width: int = 32, dim: int = 128, hidden: int = 256, grid: int = 8,
                 layers: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        if vocab_size < 4:
            raise ValueError(f"vocab_size must be at least 4 (the special tokens), got {vocab_size}")
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [BOS], a word and [EOS], got {max_length}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 px, got {image_size}")
        if decoder == "transformer" and dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.channels, self.image_size, self.vocab_size = channels, image_size, vocab_size
        self.max_length, self.decoder_kind = max_length, decoder
        self.encoder = Encoder(channels, width, dim, grid)
        if decoder == "attention":
            self.decoder: nn.Module = AttentionDecoder(vocab_size, dim, hidden, dropout)
        else:
            self.decoder = TransformerDecoder(vocab_size, dim, layers, heads, max_length, dropout)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images), tokens)

    def for_inference(self) -> "Captioner":
        """This model, in eval mode, with each BatchNorm folded into its convolution and the encoder
        in channels-last layout, which the CPU convolution kernels run about twice as fast. Outputs
        move by float rounding only. For pipelines: the folded model no longer trains."""
        from torch.fx.experimental.optimization import fuse

        self.eval()
        self.encoder.body = fuse(self.encoder.body).to(memory_format=torch.channels_last)
        self.encoder.channels_last = True
        return self

    def step_fn(self, images: torch.Tensor, repeat: int = 1) -> tuple[StepFn, Any]:
        """(step function, initial state) for decoding ``images``, each repeated ``repeat`` times in a
        row (beam search's layout: row i*repeat + j is beam j of image i).

        Without repeats the state carries each row's image features, so greedy search can drop the
        rows that have finished; a beam only reorders rows within one image, whose rows share the
        features, so with repeats they stay out of the state and are never copied."""
        memory = self.encoder(images)
        if repeat > 1:
            memory = memory.repeat_interleave(repeat, 0)
        dec, rowwise = self.decoder, repeat == 1
        if isinstance(dec, AttentionDecoder):
            h, keys = dec.start(memory)

            def step(tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
                h, mem, k = state if rowwise else (state, memory, keys)
                logits, h = dec.step(mem, k, h, tokens[:, -1])
                return logits.float().log_softmax(-1), ((h, mem, k) if rowwise else h)

            return step, ((h, memory, keys) if rowwise else h)

        def step_tf(tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            # the prefix is recomputed each step: captions are a few dozen tokens, and keeping no
            # cache keeps beam reordering to the token rows alone
            mem = state if rowwise else memory
            return dec(mem, tokens)[:, -1].float().log_softmax(-1), state

        return step_tf, (memory if rowwise else None)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, beam: int = 1, max_length: Optional[int] = None) -> torch.Tensor:
        """Token ids (N, L) after [BOS], each row ending at its [EOS] (then padding)."""
        limit = self.max_length if max_length is None else min(max_length, self.max_length)
        step, state = self.step_fn(images, repeat=beam)
        if beam == 1:
            return greedy_search(step, state, len(images), limit, images.device)
        return beam_search(step, state, len(images), beam, limit, images.device)[0]


# ---------------------------------------------------------------- decoding

def _select(state: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of every tensor in a state (a tensor, a tuple/list of them, or None)."""
    if state is None:
        return None
    if torch.is_tensor(state):
        return state.index_select(0, idx)
    return type(state)(_select(s, idx) for s in state)


def _check_length(max_length: int) -> int:
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 ([BOS] and one token), got {max_length}")
    return max_length - 1  # tokens generated after [BOS], [EOS] included


def greedy_search(step: StepFn, state: Any, batch: int, max_length: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The most likely next token at every step until [EOS]; (batch, <= max_length - 1) ids.

    A row that has said [EOS] leaves the batch (its state rows are dropped), so a batch of short and
    long captions costs what its captions' lengths add up to, not the longest one times the batch."""
    steps = _check_length(max_length)
    out = torch.full((batch, steps), PAD, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)  # which output row each live row is
    seqs = torch.full((batch, 1), BOS, dtype=torch.long, device=device)
    t = 0
    for t in range(steps):
        logp, state = step(seqs, state)
        tok = logp.argmax(-1)
        out[rows, t] = tok
        seqs = torch.cat([seqs, tok[:, None]], 1)
        live = tok != EOS
        if not bool(live.all()):
            if not bool(live.any()):
                break
            keep = live.nonzero().squeeze(1)
            rows, seqs, state = rows[keep], seqs[keep], _select(state, keep)
    return out[:, :t + 1]


def beam_search(step: StepFn, state: Any, batch: int, beam: int, max_length: int,
                device: torch.device | str = "cpu", alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search of width ``beam`` over rows laid out as ``step_fn(repeat=beam)`` makes them.

    Each step keeps the best ``beam - finished`` extensions of the live beams; an extension ending in
    [EOS] leaves the beam as a finished hypothesis (so width 1 is exactly greedy search). Hypotheses
    cut at ``max_length`` count as finished. The answer per image is the finished hypothesis with the
    best log-probability divided by length**alpha (tokens after [BOS], [EOS] included), which keeps
    short captions from winning only by having fewer factors below one.

    Returns (ids (batch, L), normalised scores (batch,)).
    """
    steps = _check_length(max_length)
    if beam < 1:
        raise ValueError(f"beam must be at least 1, got {beam}")
    k = beam
    rows = torch.arange(batch, device=device)
    seqs = torch.full((batch * k, 1), BOS, dtype=torch.long, device=device)
    # only beam 0 is live at the start, so the first step does not pick one extension k times
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    n_fin = torch.zeros(batch, dtype=torch.long, device=device)
    fin_score = torch.full((batch, k), float("-inf"), device=device)
    fin_seq = torch.full((batch, k, steps), PAD, dtype=torch.long, device=device)
    for t in range(1, steps + 1):
        logp, state = step(seqs, state)
        vocab = logp.shape[-1]
        cand = (scores.unsqueeze(-1) + logp.view(batch, k, vocab)).view(batch, k * vocab)
        top, pos = cand.topk(k, dim=1)  # sorted: the best first
        src, tok = pos // vocab, pos % vocab
        width = k - n_fin  # each finished hypothesis takes one slot of the beam for good
        chosen = (torch.arange(k, device=device)[None] < width[:, None]) & torch.isfinite(top)
        if t == steps:  # out of room: whatever is still live is finished as it stands
            ending = chosen
        else:
            ending = chosen & (tok == EOS)
        flat_src = (rows[:, None] * k + src).view(-1)
        new_seqs = torch.cat([seqs.index_select(0, flat_src), tok.view(-1, 1)], 1)
        if bool(ending.any()):
            slot = n_fin[:, None] + ending.long().cumsum(1) - 1
            b, j = ending.nonzero(as_tuple=True)
            fin_score[b, slot[b, j]] = top[b, j] / float(t) ** alpha
            fin_seq[b, slot[b, j], :t] = new_seqs.view(batch, k, -1)[b, j, 1:]
            n_fin = n_fin + ending.sum(1)
        live = chosen & ~ending
        if not bool(live.any()):
            break
        scores = top.masked_fill(~live, float("-inf"))
        seqs, state = new_seqs, _select(state, flat_src)
    best = fin_score.argmax(1)
    return fin_seq[rows, best], fin_score[rows, best]
