"""Tokenizers for captions and text: trained with the ``tokenizers`` library on a dataset's own text,
kept as ``tokenizer.json`` in the run directory so a run alone rebuilds what its model reads.

Kinds:

- ``bpe``: BPE over whitespace-separated words with a Metaspace marker, so decoding restores the
  spacing exactly; an unseen word splits into known pieces (down to characters seen in training).
- ``bytebpe``: byte-level BPE (GPT-2 style): any UTF-8 text round-trips, nothing is ever unknown.
- ``char``: one token per character, for tiny corpora.

Every kind reserves the same four ids: 0 padding, 1 begin, 2 end, 3 unknown.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ..errors import GenforgeError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
KINDS = ("bpe", "bytebpe", "char")
FILENAME = "tokenizer.json"


def _normalizer(lowercase: bool):
    steps = [normalizers.NFKC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    # runs of whitespace (newlines included) are one space for bpe/char: captions are single lines
    return normalizers.Sequence(steps)


def _build(kind: str, vocab_size: int, lowercase: bool) -> tuple[Tokenizer, object]:
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence([_normalizer(lowercase),
                                               normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
        # punctuation becomes its own word, so "square," and "square" share one token
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(),
                                                     pre_tokenizers.Punctuation("isolated")])
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    elif kind == "bytebpe":
        tok = Tokenizer(models.BPE())
        tok.normalizer = _normalizer(lowercase)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "char":
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.normalizer = _normalizer(lowercase)
        tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
        tok.decoder = decoders.Fuse()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                            show_progress=False)
    else:
        raise GenforgeError(f"unknown tokenizer kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return tok, trainer


class TextTokenizer:
    """Text <-> token ids. ``batch`` gives padded id tensors with begin/end markers."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        for i, name in enumerate(SPECIALS):
            if tok.token_to_id(name) != i:
                raise GenforgeError(f"tokenizer has {name} at id {tok.token_to_id(name)}, expected {i}; "
                                    "it was not made by genforge")
        self._warned = False

    @classmethod
    def train(cls, texts: Iterable[str], kind: str = "bpe", vocab_size: int = 1000,
              lowercase: bool = True) -> "TextTokenizer":
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise GenforgeError("no text to train a tokenizer on: the dataset's text field is empty")
        if vocab_size < len(SPECIALS) + 1:
            raise GenforgeError(f"vocab_size must be at least {len(SPECIALS) + 1}, got {vocab_size}")
        tok, trainer = _build(kind, vocab_size, lowercase)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise GenforgeError(f"no tokenizer at {path}; the run directory needs its {FILENAME}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on malformed JSON
            raise GenforgeError(f"{path} is not a readable tokenizer file: {str(e).splitlines()[0]}") from None
        return cls(tok)

    def to_str(self) -> str:
        return self.tok.to_str()

    def save(self, path: str | Path) -> None:
        from ..train.checkpoint import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_str().encode())

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without begin/end markers."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def unknown_words(self, text: str) -> list[str]:
        """Pieces of ``text`` the vocabulary has no token for (they read as [UNK])."""
        enc = self.tok.encode(text, add_special_tokens=False)
        return [text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets) if i == UNK]

    def batch(self, texts: Sequence[str], max_length: int, bos: bool = True, eos: bool = True,
              pad_to: Optional[int] = None) -> torch.Tensor:
        """(B, L) int64 ids: [BOS] text [EOS], padded with [PAD] to the longest (or ``pad_to``).

        Text longer than ``max_length`` tokens (markers included) is cut, with one warning per
        tokenizer so a long prompt is never silently shortened."""
        room = max_length - int(bos) - int(eos)
        if room < 1:
            raise GenforgeError(f"max_length {max_length} leaves no room for text")
        rows, cut = [], 0
        for ids in (e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)):
            if len(ids) > room:
                ids, cut = ids[:room], cut + 1
            rows.append([BOS] * bos + ids + [EOS] * eos)
        if cut and not self._warned:
            self._warned = True
            warnings.warn(f"{cut} text(s) longer than the model's {max_length}-token context were cut "
                          f"to fit")
        width = max(pad_to or 0, max((len(r) for r in rows), default=1))
        out = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of ``ids``, stopping at the first [EOS]; markers and padding are dropped."""
        if torch.is_tensor(ids):
            ids = ids.tolist()
        kept = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                kept.append(int(i))
        return self.tok.decode(kept, skip_special_tokens=True).strip()


def tokenizer_for(texts: Optional[Iterable[str]], run_dir: Optional[str | Path] = None, kind: str = "bpe",
                  vocab_size: int = 1000, lowercase: bool = True) -> Optional[TextTokenizer]:
    """The run's tokenizer: ``run_dir/tokenizer.json`` when it exists (a resumed run keeps the ids
    its weights were trained with), else trained on ``texts`` and written there; None with neither
    (a task built without data, outside a run).

    ``vocab_size`` is the model's: a tokenizer with more tokens (a char alphabet larger than the
    cap, or another run's file) is refused before anything is written, so a refused run leaves no
    file behind that would block the same run directory on the next try."""
    saved = run_dir is not None and (Path(run_dir) / FILENAME).is_file()
    if saved:
        tok = TextTokenizer.load(Path(run_dir) / FILENAME)
    elif texts is None:
        return None
    else:
        tok = TextTokenizer.train(texts, kind=kind, vocab_size=vocab_size, lowercase=lowercase)
    if tok.vocab_size > vocab_size:
        source = f"{Path(run_dir) / FILENAME} has" if saved else "the text needs"
        raise GenforgeError(f"{source} {tok.vocab_size} tokens, more than model.params.vocab_size={vocab_size}; "
                            f"raise model.params.vocab_size to at least {tok.vocab_size}")
    if not saved and run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        tok.save(Path(run_dir) / FILENAME)
    return tok


def caption_texts(column: Sequence[str | Sequence[str]]) -> list[str]:
    """Every caption of a caption column, whose entries are a str or a list of str."""
    out: list[str] = []
    for c in column:
        out.extend([c] if isinstance(c, str) else list(c))
    return out
