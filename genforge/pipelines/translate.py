"""Translations from a translate run directory: ``pipe.translate("Hello", beam=4)`` -> str, or a list of
str for a list of texts (the serving route ``POST /v1/translations`` calls exactly this method).

Beam hypotheses are ranked length-normalised: total log-probability / (tokens ** length_penalty),
tokens counted after [BOS] with [EOS]; 1.0 is the plain per-token average, 0 the raw total (which
favours short translations), values above 1 favour longer ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import GenforgeError
from ..tasks.translate import check_decoding, translate_texts
from ..text.tokenizer import FILENAME, TextTokenizer
from . import Pipeline

#: one request's ceiling: more would hold a server worker for minutes
MAX_TEXTS = 10_000
MAX_CHARS = 5_000


class TranslatePipeline(Pipeline):
    kind = "translate"

    def __init__(self, cfg, model, run_dir, device):
        super().__init__(cfg, model, run_dir, device)
        self.tokenizer = TextTokenizer.load(Path(run_dir) / FILENAME)
        if self.tokenizer.vocab_size > model.vocab_size:
            raise GenforgeError(f"{run_dir}/{FILENAME} has {self.tokenizer.vocab_size} tokens but the model "
                                f"reads {model.vocab_size}; the run directory mixes files of different runs")

    def translate(self, texts: str | list[str], beam: int = 4, length_penalty: float = 1.0,
                  max_len: Optional[int] = None, batch_size: int = 32) -> str | list[str]:
        """The translation of ``texts`` (a str gives a str, a list a list in the same order). beam=1 is
        greedy decoding; ``max_len``: most output tokens with [BOS] and [EOS] (default: twice the
        source's tokens plus 10, within the model's context). An empty text translates to ""."""
        check_decoding(beam, length_penalty, max_len, batch_size)
        single = isinstance(texts, str)
        items = [texts] if single else texts
        if not isinstance(items, (list, tuple)):
            raise GenforgeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
        if len(items) > MAX_TEXTS:
            raise GenforgeError(f"{len(items)} texts in one call; translate at most {MAX_TEXTS} at a time")
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise GenforgeError(f"texts[{i}] must be a string, got {type(t).__name__}")
            if len(t) > MAX_CHARS:
                raise GenforgeError(f"texts[{i}] has {len(t)} characters; translate at most {MAX_CHARS} at "
                                    f"a time (split it into sentences)")
        # whitespace-only texts skip the model: there is nothing to translate
        todo = [i for i, t in enumerate(items) if t.strip()]
        out = [""] * len(items)
        done = translate_texts(self.model, self.tokenizer, [items[i].strip() for i in todo], beam=beam,
                               length_penalty=length_penalty, max_len=max_len, batch_size=batch_size)
        for i, t in zip(todo, done):
            out[i] = t
        return out[0] if single else out

    __call__ = translate
