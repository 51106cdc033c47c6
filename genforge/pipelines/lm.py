"""Text from a language-model run directory: ``pipe.generate(prompt)`` -> str, ``pipe.stream(prompt)``
-> the same text in pieces, as the tokens come."""
from __future__ import annotations

import warnings
from typing import Iterator, Optional, Sequence

import torch

from ..errors import GenforgeError
from ..models.gpt import stream_ids
from ..text.tokenizer import FILENAME, TextTokenizer
from . import Pipeline


#: the most tokens one call generates: enough for pages of text, few enough that a typo (an extra
#: zero or two) does not tie up a CPU for minutes
MAX_TOKENS = 8192


def check_sampling(max_tokens, temperature, top_k, top_p) -> None:
    """One-line errors for sampling settings that cannot be used."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
        raise GenforgeError(f"max_tokens must be an integer from 1 to {MAX_TOKENS}, got {max_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
            not 0 <= temperature < float("inf"):
        raise GenforgeError(f"temperature must be 0 (greedy) or a finite positive number, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise GenforgeError(f"top_k must be 0 (off) or a positive integer, got {top_k!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise GenforgeError(f"top_p must be in (0, 1] (1: off), got {top_p!r}")


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-n:]):
                best = n
                break
    return best


class TextStream:
    """Turns generated ids, pushed one at a time, into text pieces: the text ends before the first
    stop string, and a piece is held back while it could still be the start of one or ends inside a
    UTF-8 character. The pipeline and the server (which pushes ids from its batched decode loop)
    both write text through this, so they cut it the same way."""

    def __init__(self, tokenizer: TextTokenizer, stop: Optional[Sequence[str]] = None):
        self.tok, self.stops = tokenizer.tok, [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False  # a stop string was reached: push no more ids

    def push(self, token: int) -> str:
        """The text ``token`` makes ready (often ""); sets ``stopped`` at a stop string."""
        self.ids.append(int(token))
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        sent, stops = self.sent, self.stops
        hits = [i for i in (text.find(s, max(0, sent - len(s))) for s in stops) if i >= 0]
        if hits:
            self.stopped = True
            cut = max(min(hits), sent)
            self.sent = cut
            return text[sent:cut]
        # a byte-level token can end inside a UTF-8 character, which decodes as U+FFFD until
        # its remaining bytes arrive
        ready = len(text.rstrip("\ufffd"))
        ready -= _held_back(text[:ready], stops)
        if ready > sent:
            self.sent = ready
            return text[sent:ready]
        return ""

    def finish(self) -> str:
        """What is still held back once no more ids come (nothing after a stop string)."""
        if self.stopped:
            return ""
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        piece, self.sent = text[self.sent:], len(text)
        return piece


class LMPipeline(Pipeline):
    def __init__(self, cfg, model, run_dir, device):
        super().__init__(cfg, model, run_dir, device)
        self.tokenizer = TextTokenizer.load(run_dir / FILENAME)

    def prompt_ids(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise GenforgeError(f"prompt must be a string, got {type(prompt).__name__}")
        # an empty prompt starts the text at a line start, the one context every corpus has
        ids = self.tokenizer.encode(prompt or "\n")
        if not ids:
            raise GenforgeError("the prompt gave no tokens; give some text")
        context = int(self.model.block_size)
        if len(ids) > context:
            # the model reads only its context; the end of the prompt is what the continuation follows
            warnings.warn(f"the prompt is {len(ids)} tokens, more than the model's context of {context}; "
                          f"only its last {context} tokens are read")
            ids = ids[-context:]
        return ids

    def stream(self, prompt: str = "", max_tokens: int = 200, temperature: float = 0.8, top_k: int = 50,
               top_p: float = 0.95, stop: Optional[Sequence[str]] = None, seed: int = 0) -> Iterator[str]:
        """Pieces of the continuation of ``prompt`` (the prompt itself is not repeated), ending before
        the first stop string or after ``max_tokens`` tokens. Same seed, same text."""
        check_sampling(max_tokens, temperature, top_k, top_p)
        ids = self.prompt_ids(prompt)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        text = TextStream(self.tokenizer, stop)
        for nxt in stream_ids(self.model, x, max_tokens, float(temperature), top_k, float(top_p), gen):
            piece = text.push(int(nxt))
            if piece:
                yield piece
            if text.stopped:
                return
        piece = text.finish()
        if piece:
            yield piece

    def generate(self, prompt: str = "", max_tokens: int = 200, temperature: float = 0.8, top_k: int = 50,
                 top_p: float = 0.95, stop: Optional[Sequence[str]] = None, seed: int = 0) -> str:
        return "".join(self.stream(prompt, max_tokens, temperature, top_k, top_p, stop, seed))

    __call__ = generate
