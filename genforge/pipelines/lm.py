"""Text from a language-model run directory: ``pipe.generate(prompt)`` -> str, ``pipe.stream(prompt)``
-> the same text in pieces, as the tokens come."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from ..errors import GenforgeError
from ..models.gpt import stream_ids
from ..text.tokenizer import FILENAME, TextTokenizer
from . import Pipeline


def check_sampling(max_tokens, temperature, top_k, top_p) -> None:
    """One-line errors for sampling settings that cannot be used."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise GenforgeError(f"max_tokens must be an integer of at least 1, got {max_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise GenforgeError(f"temperature must be 0 (greedy) or more, got {temperature!r}")
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


class LMPipeline(Pipeline):
    def __init__(self, cfg, model, run_dir, device):
        super().__init__(cfg, model, run_dir, device)
        self.tokenizer = TextTokenizer.load(run_dir / FILENAME)

    def stream(self, prompt: str = "", max_tokens: int = 200, temperature: float = 0.8, top_k: int = 50,
               top_p: float = 0.95, stop: Optional[Sequence[str]] = None, seed: int = 0) -> Iterator[str]:
        """Pieces of the continuation of ``prompt`` (the prompt itself is not repeated), ending before
        the first stop string or after ``max_tokens`` tokens. Same seed, same text."""
        check_sampling(max_tokens, temperature, top_k, top_p)
        if not isinstance(prompt, str):
            raise GenforgeError(f"prompt must be a string, got {type(prompt).__name__}")
        stops = [s for s in (stop or []) if s]
        # an empty prompt starts the text at a line start, the one context every corpus has
        ids = self.tokenizer.encode(prompt or "\n")
        if not ids:
            raise GenforgeError("the prompt gave no tokens; give some text")
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        out: list[int] = []
        sent = 0
        for nxt in stream_ids(self.model, x, max_tokens, float(temperature), top_k, float(top_p), gen):
            out.append(int(nxt))
            text = self.tokenizer.tok.decode(out, skip_special_tokens=True)
            hits = [i for i in (text.find(s, max(0, sent - len(s))) for s in stops) if i >= 0]
            if hits:
                cut = min(hits)
                if cut > sent:
                    yield text[sent:cut]
                return
            # a byte-level token can end inside a UTF-8 character, which decodes as U+FFFD until
            # its remaining bytes arrive
            ready = len(text.rstrip("\ufffd"))
            ready -= _held_back(text[:ready], stops)
            if ready > sent:
                yield text[sent:ready]
                sent = ready
        text = self.tokenizer.tok.decode(out, skip_special_tokens=True)
        if len(text) > sent:
            yield text[sent:]

    def generate(self, prompt: str = "", max_tokens: int = 200, temperature: float = 0.8, top_k: int = 50,
                 top_p: float = 0.95, stop: Optional[Sequence[str]] = None, seed: int = 0) -> str:
        return "".join(self.stream(prompt, max_tokens, temperature, top_k, top_p, stop, seed))

    __call__ = generate
