"""Text -> phonemes: the speech front end every speech model, dataset and pipeline shares.

``normalize`` writes out what a reader would say (numbers, dates, times, money, abbreviations, symbols)
and keeps punctuation as pause marks; ``split_sentences`` cuts long input into chunks an acoustic model
can take; ``phonemize`` turns them into IPA with espeak-ng (through phonemizer); ``PhonemeInventory``
maps IPA characters to ids. A voice stores its inventory as ``phonemes.json`` in its run dir, so the
ids it was trained on are the ids it is driven with.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
import warnings
from pathlib import Path
from typing import Iterable, Optional

from ..errors import GenforgeError
from .rules import expand

#: longest chunk ``split_sentences`` returns: LJSpeech's clips are at most ~190 characters, and an
#: acoustic model trained on them handles longer input badly
MAX_CHARS = 180
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PHONEMES_FILE = "phonemes.json"

_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                             "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
                             "\u2013": " - ", "\u2014": " - ", "\u2015": " - ", "\u2212": "-",
                             "\u2026": "...", "\u00a0": " ", "\t": " ", "\n": " ", "\r": " "})
#: what is left of the text after normalising: letters, apostrophes, hyphens in words, pause marks
_KEEP = re.compile(r"[^A-Za-z' ,.;:!?-]")


def _fold(text: str) -> str:
    """Non-ASCII characters transliterated (é -> e, ß -> ss, Ж -> Zh); those with no ASCII form (emoji,
    most symbols) dropped, listed in one warning."""
    if text.isascii():
        return text
    from unidecode import unidecode

    out, dropped, spelled = [], [], []
    for ch in text:
        if ch.isascii():
            out.append(ch)
            continue
        t = unidecode(ch)
        if not t.strip() or "[?]" in t or not any(c.isalnum() for c in t):
            if not ch.isspace() and unicodedata.category(ch)[0] not in "PZ":  # punctuation is not lost
                dropped.append(ch)
            out.append(" ")
        else:
            out.append(t)
            # accented Latin letters (café, naïve) are English spelling; other scripts are guessed at
            if ch.isalnum() and not unicodedata.name(ch, "").startswith("LATIN"):
                spelled.append(ch)
    if dropped:
        shown = "".join(dict.fromkeys(dropped))
        warnings.warn(f"normalize: dropped {len(dropped)} character(s) with no English reading: {shown}")
    if spelled:
        shown = "".join(dict.fromkeys(spelled))
        warnings.warn(f"normalize: read {len(spelled)} character(s) of another script as English letters "
                      f"(spelled, not translated): {shown}")
    return "".join(out)


def normalize(text: str) -> str:
    """``text`` as words a reader says, punctuation kept as pause marks.

    "Dr. Smith paid $3.50 on Jan. 5th, 1999 at 3:30 p.m." ->
    "Doctor Smith paid three dollars and fifty cents on January fifth, nineteen ninety-nine at three
    thirty p m." Case is kept; an empty or unspeakable text gives "" (``text_to_ids`` refuses it).
    """
    text = unicodedata.normalize("NFKC", str(text)).translate(_TYPOGRAPHY)
    text = expand(text)
    text = _fold(text)
    if any(c.isdigit() for c in text):  # digits of other scripts, transliterated only now
        text = expand(text)
    text = re.sub(r"\s+-+\s+|--+", ", ", text)
    text = re.sub(r"[()\[\]{}]", ", ", text)
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])", " ", text)  # quotes, not apostrophes
    text = _KEEP.sub(" ", text)
    text = re.sub(r"(?<![A-Za-z])-+|-+(?![A-Za-z])", " ", text)  # hyphens only inside words
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"([,;:])[,;:]+", r"\1", text)
    text = re.sub(r"[,;:]+([.!?])", r"\1", text)
    text = re.sub(r"([.!?])[,;:]+", r"\1", text)
    text = re.sub(r"([,.;:!?])(?=[A-Za-z])", r"\1 ", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"^[\s,.;:!?]+", "", text)
    return text


_TITLES = {"dr", "mr", "mrs", "ms", "st", "prof", "gen", "capt", "lt", "col", "sgt", "rev", "gov", "sen",
           "rep", "mt", "no", "vs", "jr", "sr", "etc", "inc", "ltd", "co", "e.g", "i.e", "jan", "feb", "mar",
           "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def _pack(pieces: Iterable[str], max_chars: int, sep: str) -> list[str]:
    out: list[str] = []
    for p in pieces:
        if out and len(out[-1]) + len(sep) + len(p) <= max_chars:
            out[-1] = out[-1] + sep + p
        else:
            out.append(p)
    return out


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    """A sentence over ``max_chars``: cut after commas/semicolons/colons, then between words."""
    if len(sentence) <= max_chars:
        return [sentence]
    clauses = [c.strip() for c in re.split(r"(?<=[,;:])\s+", sentence) if c.strip()]
    out: list[str] = []
    for chunk in _pack(clauses, max_chars, " "):
        if len(chunk) <= max_chars:
            out.append(chunk)
        else:
            out.extend(_pack(chunk.split(), max_chars, " "))
    return out


def split_sentences(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """``text`` cut into sentences (at . ! ? before a capital or digit, not after a title such as "Dr."
    or an initial), each at most ``max_chars`` long (longer ones cut at commas, then between words)."""
    sentences: list[str] = []
    for para in re.split(r"\n\s*\n", str(text)):
        para = re.sub(r"\s+", " ", para).strip()
        start = 0
        for m in _BOUNDARY.finditer(para):
            before = para[start:m.start()].rstrip(".!?\"')]")
            last = before.split()[-1].lower() if before.split() else ""
            if last in _TITLES or (len(last) == 1 and last.isalpha() and last != "i"):  # an initial
                continue
            sentences.append(para[start:m.start()])
            start = m.end()
        sentences.append(para[start:])
    out: list[str] = []
    for s in sentences:
        s = s.strip()
        if any(c.isalnum() for c in s):
            out.extend(_cut_long(s, max_chars))
    return out


_backend = None
_backend_lock = threading.Lock()
#: how espeak-ng phonemizes; part of phonemizer_key, so a change here also re-phonemizes caches
_ESPEAK_SETTINGS = {"language": "en-us", "preserve_punctuation": True, "with_stress": True,
                    "language_switch": "remove-flags"}


def _espeak():
    global _backend
    with _backend_lock:
        if _backend is None:
            try:
                from phonemizer.backend import EspeakBackend
            except ImportError:
                raise GenforgeError("phonemizing needs the phonemizer package: pip install phonemizer") from None
            logging.getLogger("phonemizer").setLevel(logging.ERROR)  # per-line word-count chatter
            try:
                _backend = EspeakBackend(**_ESPEAK_SETTINGS, logger=logging.getLogger("phonemizer"))
            except RuntimeError as e:
                raise GenforgeError(f"espeak-ng is not usable ({e}); install it: apt-get install espeak-ng") from None
        return _backend


def phonemizer_key() -> str:
    """What the IPA of a text depends on besides the text: espeak-ng's and phonemizer's versions and
    ``_ESPEAK_SETTINGS``. Caches of phonemized text are keyed by it, so an upgrade re-phonemizes."""
    import phonemizer

    settings = " ".join(f"{k}={v}" for k, v in sorted(_ESPEAK_SETTINGS.items()))
    return f"espeak-ng {'.'.join(map(str, _espeak().version()))}; phonemizer {phonemizer.__version__}; {settings}"


def phonemize(texts: list[str]) -> list[str]:
    """IPA of each text (en-us, espeak-ng): stress marks and punctuation kept, words separated by single
    spaces. One espeak call for the whole list (it is slow per call); "" for a text with no letters."""
    from phonemizer.separator import Separator

    if isinstance(texts, str):
        raise TypeError("phonemize takes a list of texts; wrap a single text in a list")
    texts = [re.sub(r"\s+", " ", str(t)).strip() for t in texts]
    # phonemizer misaligns a batch that holds empty lines, so only the speakable texts go to espeak
    todo = [i for i, t in enumerate(texts) if any(c.isalpha() for c in t)]
    out = [""] * len(texts)
    if todo:
        backend = _espeak()
        with _backend_lock:
            ipa = backend.phonemize([texts[i] for i in todo], separator=Separator(phone="", word=" "),
                                    strip=True, njobs=1)
        for i, p in zip(todo, ipa):
            out[i] = re.sub(r"\s+", " ", p).strip()
    return out


class PhonemeInventory:
    """IPA characters <-> ids: 0 pad, 1 bos, 2 eos, 3 unk, then the symbols in sorted order."""

    def __init__(self, symbols: Iterable[str]):
        self.symbols: list[str] = [s for s in symbols if s not in SPECIALS]
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("phoneme symbols must be unique")
        self.tokens = [*SPECIALS, *self.symbols]
        self._ids = {s: i for i, s in enumerate(self.tokens)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, phoneme_strings: Iterable[str]) -> "PhonemeInventory":
        chars: set[str] = set()
        for s in phoneme_strings:
            chars.update(s)
        return cls(sorted(chars))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, phonemes: str) -> list[int]:
        """``[BOS, id of each character (UNK when unseen), EOS]``."""
        return [self.bos_id, *(self._ids.get(c, self.unk_id) for c in phonemes), self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.tokens[i] for i in ids if i >= len(SPECIALS) and i < len(self.tokens))

    def unknown(self, phonemes: str) -> set[str]:
        return {c for c in phonemes if c not in self._ids}

    def save(self, path: str | Path) -> Path:
        """Write ``phonemes.json`` (``path`` is a run dir, or the file itself)."""
        p = Path(path)
        p = p / PHONEMES_FILE if p.is_dir() or not p.suffix else p
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps({"specials": list(SPECIALS), "symbols": self.symbols}, ensure_ascii=False,
                                  indent=1) + "\n", encoding="utf-8")
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> "PhonemeInventory":
        p = Path(path)
        p = p / PHONEMES_FILE if p.is_dir() else p
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
            symbols = raw["symbols"]
        except FileNotFoundError:
            raise GenforgeError(f"{p} not found: a speech run dir keeps its phoneme inventory there") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise GenforgeError(f"{p} is not a phoneme inventory (JSON with a 'symbols' list); "
                                f"the run directory is damaged") from None
        return cls(symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhonemeInventory) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"PhonemeInventory({len(self.symbols)} symbols)"


def text_to_ids(text: str, inventory: PhonemeInventory, max_chars: int = MAX_CHARS) -> list[list[int]]:
    """normalize -> split_sentences -> phonemize -> encode: one id list per sentence."""
    sentences = split_sentences(normalize(text), max_chars)
    ipa = [p for p in phonemize(sentences) if p]
    if not ipa:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise GenforgeError(f"nothing to speak in {shown!r}: give text with words or numbers "
                            f"(punctuation and emoji alone are not read)")
    return [inventory.encode(p) for p in ipa]


def sentences_to_phonemes(text: str, max_chars: Optional[int] = None) -> list[tuple[str, str]]:
    """(normalized sentence, IPA) pairs of ``text``: what ``text_to_ids`` speaks, for display."""
    sentences = split_sentences(normalize(text), max_chars or MAX_CHARS)
    return [(s, p) for s, p in zip(sentences, phonemize(sentences)) if p]
