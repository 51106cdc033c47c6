"""Language modelling: next-token cross-entropy on random windows of the tokenised corpus.

The corpus is tokenised once into a single id stream (the chunks in their file order). A batch is
``batch_size`` windows of ``block_size + 1`` ids starting at offsets drawn from the step's generator,
so every position of the text can start a window and a resumed run draws the same windows. The final
evaluation is the mean loss and perplexity over non-overlapping windows of the held-out chunks.
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


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, max_tokens: int = 0, batch_size: int = 16) -> dict[str, float]:
    """Mean next-token loss (nats) and perplexity of ``model`` on the stream ``ids``, scored in
    non-overlapping windows of the model's context (``max_tokens`` > 0 caps the tokens scored)."""
    bs = model.block_size
    if max_tokens:
        ids = ids[:max_tokens + 1]
    if len(ids) < 2:
        raise GenforgeError("the held-out text has fewer than 2 tokens: nothing to score; add text or "
                            "raise data.val_fraction")
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
    mean = total / count
    return {"val_loss": mean, "val_ppl": math.exp(mean), "val_tokens": count}


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
        return perplexity(model, token_stream(self.tokenizer, self.held_out.column("text")), self.eval_tokens)
