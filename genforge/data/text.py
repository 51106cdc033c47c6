"""Plain text for language models: one UTF-8 file, or every .txt/.md file under a folder.

Each file is cut into chunks of whole lines (about ``CHUNK_CHARS`` characters), and a chunk's place in
the train or test split follows from a hash of its text, so the split is the same on every machine and
a chunk stays on its side when other files are added. A file that is not valid UTF-8, or that holds a
NUL byte (binary), is skipped, and one warning counts the skipped files and names the first with the
byte offset of its first bad byte; a UTF-8 byte-order mark is dropped. With no text left the error says
why (no files, empty files, or the first skipped file and its bad byte).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from ..errors import GenforgeError
from ..registry import register_dataset
from . import Examples

SUFFIXES = (".txt", ".md")
#: small enough that a few-KB test corpus still gives a batch of chunks, large enough that a held-out
#: chunk holds whole paragraphs rather than lines torn from their neighbours
CHUNK_CHARS = 512


def text_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    raise GenforgeError(f"data.path {str(path)!r} does not exist; give a UTF-8 text file or a folder of "
                        f".txt/.md files")


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """``text`` cut at line ends into pieces of at least ``size`` characters (the last may be shorter);
    a single line longer than ``2 * size`` is cut inside the line. Joined, the pieces give ``text``."""
    out, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        while len(line) > 2 * size:
            if cur:
                out.append("".join(cur))
                cur, n = [], 0
            out.append(line[:size])
            line = line[size:]
        cur.append(line)
        n += len(line)
        if n >= size:
            out.append("".join(cur))
            cur, n = [], 0
    if cur:
        out.append("".join(cur))
    return out


def held_out(chunk: str, fraction: float) -> bool:
    digest = hashlib.sha1(chunk.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def binary_reason(path: Path, raw: bytes) -> str:
    """Why ``raw`` (the bytes of ``path``) is not text, if it holds a NUL byte (a binary or UTF-16 file,
    which can still decode as UTF-8); "" when it holds none."""
    nul = raw.find(b"\0")
    return f"{path} looks binary (NUL byte at byte offset {nul})" if nul >= 0 else ""


def read_text(path: Path) -> tuple[str | None, str]:
    """(text, "") of a UTF-8 file, or (None, why not) naming the file and the offset of its bad byte."""
    raw = path.read_bytes()
    why = binary_reason(path, raw)
    if why:
        return None, why
    try:
        return raw.decode("utf-8").removeprefix("\ufeff"), ""
    except UnicodeDecodeError as e:
        return None, f"{path} is not UTF-8 (byte 0x{raw[e.start]:02x} at byte offset {e.start})"


def corpus_metadata(root: Path) -> dict:
    """Source and licence from the ``metadata.json`` that ``genforge data`` writes beside a corpus."""
    path = (root if root.is_dir() else root.parent) / "metadata.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: str(meta[k]) for k in ("source", "license") if isinstance(meta, dict) and k in meta}


@register_dataset("text")
def load_text(cfg) -> Examples:
    """``text`` column: chunks of the files at ``data.path`` in the configured split."""
    if not cfg.path:
        raise GenforgeError("dataset 'text' needs data.path=FILE_OR_FOLDER (UTF-8 text, or .txt/.md files)")
    root = Path(cfg.path).expanduser()
    files = text_files(root)
    if not files:
        raise GenforgeError(f"no {'/'.join(SUFFIXES)} files under {root}; give a UTF-8 text file or a folder "
                            f"of .txt/.md files")
    pieces: list[str] = []
    skipped: list[str] = []
    for f in files:
        text, why = read_text(f)
        if text is None:
            skipped.append(why)
            continue
        pieces.extend(c for c in chunks(text) if c.strip())
    if skipped and pieces:
        warnings.warn(f"skipped {len(skipped)} file(s) that are not UTF-8 text (first: {skipped[0]}); "
                      f"convert them to UTF-8 (iconv -t UTF-8) or move them out of data.path")
    if not pieces:
        why = (f"{len(skipped)} of {len(files)} file(s) skipped, first: {skipped[0]}" if skipped
               else f"the {len(files)} file(s) are empty or whitespace")
        raise GenforgeError(f"no UTF-8 text found at {root} ({why}); give UTF-8 text files")
    if cfg.val_fraction > 0:
        test = cfg.split == "test"
        pieces = [c for c in pieces if held_out(c, cfg.val_fraction) == test]
        if not pieces:
            raise GenforgeError(f"data.val_fraction={cfg.val_fraction} leaves no text in the {cfg.split!r} "
                                f"split of {root}; change data.val_fraction or add text")
    if cfg.limit:
        pieces = pieces[:cfg.limit]
    meta = {"source": str(root), "license": "user-supplied", **corpus_metadata(root),
            "files": len(files) - len(skipped),
            "skipped_files": len(skipped), "characters": sum(map(len, pieces))}
    return Examples(text=pieces, meta=meta)
