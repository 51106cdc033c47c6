"""Plain text for language models: one UTF-8 file, or every .txt/.md file under a folder.

Each file is cut into chunks of whole lines (about ``CHUNK_CHARS`` characters), and a chunk's place in
the train or test split follows from a hash of its text, so the split is the same on every machine and
a chunk stays on its side when other files are added. A file that is not valid UTF-8 is skipped; the
skipped files are counted in one warning.
"""
from __future__ import annotations

import hashlib
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


@register_dataset("text")
def load_text(cfg) -> Examples:
    """``text`` column: chunks of the files at ``data.path`` in the configured split."""
    if not cfg.path:
        raise GenforgeError("dataset 'text' needs data.path=FILE_OR_FOLDER (UTF-8 text, or .txt/.md files)")
    root = Path(cfg.path).expanduser()
    files = text_files(root)
    pieces: list[str] = []
    skipped: list[str] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            skipped.append(str(f))
            continue
        pieces.extend(c for c in chunks(text) if c.strip())
    if skipped:
        warnings.warn(f"skipped {len(skipped)} file(s) that are not UTF-8 text (first: {skipped[0]})")
    if not pieces:
        raise GenforgeError(f"no UTF-8 text found at {root}; give a text file or a folder of .txt/.md files")
    if cfg.val_fraction > 0:
        test = cfg.split == "test"
        pieces = [c for c in pieces if held_out(c, cfg.val_fraction) == test]
        if not pieces:
            raise GenforgeError(f"data.val_fraction={cfg.val_fraction} leaves no text in the {cfg.split!r} "
                                f"split of {root}; change data.val_fraction or add text")
    if cfg.limit:
        pieces = pieces[:cfg.limit]
    meta = {"source": str(root), "license": "user-supplied", "files": len(files) - len(skipped),
            "skipped_files": len(skipped), "characters": sum(map(len, pieces))}
    return Examples(text=pieces, meta=meta)
