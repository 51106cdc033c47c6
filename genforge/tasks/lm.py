"""Language modelling: next-token cross-entropy on random windows of the tokenised corpus.

The corpus is tokenised once into a single id stream (the chunks in their file order). A batch is
``batch_size`` windows of ``block_size + 1`` ids starting at offsets drawn from the step's generator,
so every position of the text can start a window and a resumed run draws the same windows. The final
evaluation is the mean loss and perplexity over non-overlapping windows of the held-out chunks, and the
same total loss per character and per UTF-8 byte of the text scored (bits per character / byte), which,
unlike loss per token, compares models with different tokenizers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..data import Examples, load_dataset
from ..errors import GenforgeError
from ..registry import register_task
from ..text.tokenizer import FILENAME, TextTokenizer, tokenizer_for
from . import Task

#: bpe folds whitespace runs into one space, which would teach a model text it cannot write back
LM_TOKENIZERS = ("bytebpe", "char")


def token_stream(tokenizer: TextTokenizer, texts: Sequence[str]) -> torch.Tensor:
    """All ``texts`` as one int64 id stream, in order."""
    ids: list[int] = []
    for enc in tokenizer.tok.encode_batch(list(texts), add_special_tokens=False):
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


def lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))


def bits_per_unit(total_nats: float, units: int) -> float:
    """Bits per character (or per byte): the summed loss of a text in nats, over ln 2, over the
    number of characters (or UTF-8 bytes) of exactly that text."""
    if units < 1:
        raise GenforgeError("no characters were scored: bits per character need some text")
    return total_nats / math.log(2) / units


@torch.no_grad()
def _nll(model, ids: torch.Tensor, batch_size: int) -> tuple[float, int]:
    """Summed next-token loss (nats) and the number of tokens scored: every id but the first, once,
    in non-overlapping windows of the model's context (the first id of each window is context)."""
    if len(ids) < 2:
        raise GenforgeError("the held-out text has fewer than 2 tokens: nothing to score; add text or "
                            "raise data.val_fraction")
    bs = model.block_size
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        starts = list(range(0, len(ids) - 1, bs))
        for i in range(0, len(starts), batch_size):
            rows = [ids[s:s + bs + 1] for s in starts[i:i + batch_size]]
            # windows are scored one length at a time: the last window of the stream is shorter
            for n in sorted({len(r) for r in rows}):
                x = torch.stack([r for r in rows if len(r) == n]).to(device)
                logits = model(x[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1),
                                       reduction="sum")
                total += float(loss)
                count += x[:, 1:].numel()
    finally:
        model.train(was)
    return total, count


def perplexity(model, ids: torch.Tensor, max_tokens: int = 0, batch_size: int = 16) -> dict[str, float]:
    """Mean next-token loss (nats) and perplexity of ``model`` on the stream ``ids``, scored in
    non-overlapping windows of the model's context (``max_tokens`` > 0 caps the tokens scored)."""
    total, count = _nll(model, ids[:max_tokens + 1] if max_tokens else ids, batch_size)
    mean = total / count
    return {"val_loss": mean, "val_ppl": math.exp(mean), "val_tokens": count}


def scored_text(tokenizer: TextTokenizer, texts: Sequence[str], max_tokens: int = 0) -> tuple[torch.Tensor, str]:
    """The id stream of ``texts`` (capped at ``max_tokens`` + 1 ids when > 0) and the original text
    that its scored ids (all but the first) cover, found from the tokens' character offsets, so it
    is the text as written, before the tokenizer's normalisation."""
    encs = tokenizer.tok.encode_batch(list(texts), add_special_tokens=False)
    ids: list[int] = []
    ends: list[tuple[int, int]] = []  # (text index, end offset) of each id
    for t, enc in enumerate(encs):
        take = enc.ids if not max_tokens else enc.ids[:max_tokens + 1 - len(ids)]
        ids.extend(take)
        ends.extend((t, b) for _, b in enc.offsets[:len(take)])
        if max_tokens and len(ids) > max_tokens:
            break
    if len(ids) < 2:
        return torch.tensor(ids, dtype=torch.long), ""
    (t0, e0), (t1, e1) = ends[0], ends[-1]
    text = texts[t0][e0:e1] if t0 == t1 else texts[t0][e0:] + "".join(texts[t0 + 1:t1]) + texts[t1][:e1]
    return torch.tensor(ids, dtype=torch.long), text


def score_text(model, tokenizer: TextTokenizer, texts: Sequence[str], max_tokens: int = 0,
               batch_size: int = 16) -> dict[str, float]:
    """Loss per token and perplexity of ``texts`` (as one stream) and the same total loss in bits per
    character and per UTF-8 byte of the text scored."""
    ids, text = scored_text(tokenizer, texts, max_tokens)
    total, count = _nll(model, ids, batch_size)
    chars, nbytes = len(text), len(text.encode("utf-8"))
    return {"val_loss": total / count, "val_ppl": math.exp(total / count), "val_tokens": count,
            "val_chars": chars, "val_bytes": nbytes, "val_bpc": bits_per_unit(total, chars),
            "val_bpb": bits_per_unit(total, nbytes)}


@register_task("lm")
class LMTask(Task):
    models = ("gpt",)
    needs = ("text",)

    def __init__(self, cfg, data=None, run_dir=None, tokenizer: str = "bytebpe", eval_tokens: int = 100_000):
        super().__init__(cfg, data, run_dir)
        if tokenizer not in LM_TOKENIZERS:
            raise GenforgeError(f"task_params.tokenizer={tokenizer!r} does not suit language modelling; "
                                f"choose one of: {', '.join(LM_TOKENIZERS)}")
        if eval_tokens < 0:
            raise GenforgeError(f"task_params.eval_tokens must be 0 (no evaluation) or more, got {eval_tokens}")
        self.eval_tokens = eval_tokens
        self.block_size = int(self.model.block_size)
        self.tokenizer: Optional[TextTokenizer] = None
        self._stream: tuple[int, Optional[torch.Tensor]] = (-1, None)
        # a new tokenizer is written only once every check below has passed: a refused run leaves
        # no files behind that would block the same --out on the next try
        fresh = data is not None and (run_dir is None or not (run_dir / FILENAME).is_file())
        self.tokenizer = tokenizer_for(data.column("text") if data is not None else None,
                                       None if fresh else run_dir, kind=tokenizer,
                                       vocab_size=self.model.vocab_size, lowercase=False)
        self.held_out: Optional[Examples] = None
        if data is not None and eval_tokens and cfg.data.val_fraction > 0:
            # loaded now, so a corpus too small to hold text out fails before training, not after
            self.held_out = load_dataset(cfg.data.model_copy(update={"split": "test", "limit": None}))
        if data is not None:
            n = len(self.stream(data))
            if n < self.block_size + 1:
                raise GenforgeError(f"the training text is {n} tokens, fewer than one window of "
                                    f"model.params.block_size + 1 = {self.block_size + 1}; lower "
                                    f"model.params.block_size or add text")
        if fresh and run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.tokenizer.save(Path(run_dir) / FILENAME)

    def stream(self, data: Examples) -> torch.Tensor:
        if self._stream[0] != id(data):  # tokenised once per dataset, not per step
            self._stream = (id(data), token_stream(self.tokenizer, data.column("text")))
        return self._stream[1]

    def collate(self, data, idx, generator):
        ids = self.stream(data)
        starts = torch.randint(len(ids) - self.block_size, (len(idx),), generator=generator)
        offsets = torch.arange(self.block_size + 1)
        return {"tokens": ids[starts[:, None] + offsets]}

    def step(self, batch, optimize):
        tokens = batch["tokens"]
        logits = self.nets["model"](tokens[:, :-1])
        loss = lm_loss(logits, tokens[:, 1:])
        optimize("model", loss)
        return {"loss": loss.detach()}

    def evaluate(self, model):
        if self.held_out is None:
            return {}
        return score_text(model, self.tokenizer, self.held_out.column("text"), self.eval_tokens)
