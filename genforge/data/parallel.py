"""Parallel text for translation: sentence pairs from a ``src<TAB>tgt`` file or two aligned files.

``data.path`` is a ``.tsv`` file, a folder holding one ``*.tsv`` (``genforge data parallel`` writes
``pairs.tsv`` with a ``metadata.json`` beside it, whose source and license go into the dataset's
meta), or, with ``data.target_path`` set, a plain text file whose line i translates to line i of
``target_path``. A pair's side of the train/test split follows from a hash of its source sentence
(as for ``text`` chunks), so it is the same on every machine and a repeated source sentence never sits
on both sides. Lines without a tab and pairs with an empty side are skipped and counted in one warning;
a file holding a NUL byte (binary, or UTF-16) or bytes that are not UTF-8 is a one-line error.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..errors import GenforgeError
from ..registry import register_dataset
from . import Examples
from .text import binary_reason, held_out

METADATA = "metadata.json"


def read_utf8(path: Path) -> str:
    """The text of ``path``; a NUL byte or bytes that are not UTF-8 are a one-line error naming the byte
    offset."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise GenforgeError(f"cannot read {path}: {e.strerror or e}") from None
    why = binary_reason(path, data)
    if why:
        raise GenforgeError(f"{why}; give UTF-8 text (a UTF-16 file: iconv -f utf-16 -t utf-8)")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark from a Windows editor is not text
    except UnicodeDecodeError as e:
        raise GenforgeError(f"{path} is not UTF-8 text: byte offset {e.start} (0x{data[e.start]:02x}) "
                            f"cannot be decoded; convert it, e.g. iconv -f latin1 -t utf-8") from None


def _tsv_file(root: Path) -> Path:
    if root.is_file():
        return root
    if root.is_dir():
        found = sorted(root.glob("*.tsv"))
        if len(found) == 1:
            return found[0]
        what = "no .tsv file" if not found else f"{len(found)} .tsv files ({', '.join(p.name for p in found)})"
        raise GenforgeError(f"data.path folder {root} holds {what}; it needs exactly one src<TAB>tgt .tsv "
                            f"file (or give the file itself)")
    raise GenforgeError(f"data.path {str(root)!r} does not exist; give a src<TAB>tgt .tsv file, a folder "
                        f"holding one, or a source text file with data.target_path")


def _lines(text: str) -> list[str]:
    # str.splitlines would also split at U+2028, form feeds and the like inside a sentence
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_pairs(path: Path, target_path: Path | None = None) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(source, target) pairs in file order and the counts of skipped lines by reason."""
    skipped = {"no_tab": 0, "empty_side": 0}
    pairs: list[tuple[str, str]] = []
    if target_path is not None:
        src, tgt = _lines(read_utf8(path)), _lines(read_utf8(target_path))
        # a final newline leaves one empty last element on each side
        src, tgt = (x[:-1] if x and x[-1] == "" else x for x in (src, tgt))
        if len(src) != len(tgt):
            raise GenforgeError(f"data.path {path} has {len(src)} lines but data.target_path {target_path} has "
                                f"{len(tgt)}; the two files must be aligned line by line")
        rows = zip(src, tgt)
    else:
        rows = []
        for line in _lines(read_utf8(path)):
            if not line.strip():
                continue  # blank lines separate nothing in a tsv; not worth a warning
            if "\t" not in line:
                skipped["no_tab"] += 1
                continue
            s, t = line.split("\t", 1)
            rows.append((s, t.split("\t", 1)[0]))  # a third column (a verse reference, ...) is ignored
    for s, t in rows:
        s, t = s.strip(), t.strip()
        if not s or not t:
            skipped["empty_side"] += 1
            continue
        pairs.append((s, t))
    return pairs, skipped


def _metadata(folder: Path) -> dict:
    f = folder / METADATA
    if not f.is_file():
        return {}
    try:
        meta = json.loads(read_utf8(f))
    except json.JSONDecodeError as e:
        raise GenforgeError(f"{f} is not valid JSON ({e.msg} at line {e.lineno}); fix or delete it") from None
    return meta if isinstance(meta, dict) else {}


@register_dataset("parallel")
def load_parallel(cfg) -> Examples:
    """``source`` and ``target`` columns: the sentence pairs at ``data.path`` in the configured split."""
    if not cfg.path:
        raise GenforgeError("dataset 'parallel' needs data.path=FILE.tsv (src<TAB>tgt lines), a folder holding "
                            "one, or data.path=SOURCE.txt data.target_path=TARGET.txt")
    root = Path(cfg.path).expanduser()
    if cfg.target_path:
        target = Path(cfg.target_path).expanduser()
        for p, key in ((root, "data.path"), (target, "data.target_path")):
            if not p.is_file():
                raise GenforgeError(f"{key} {str(p)!r} is not a file; with data.target_path both are text "
                                    f"files aligned line by line")
        pairs, skipped = read_pairs(root, target)
        source, info = f"{root} + {target}", {}
    else:
        tsv = _tsv_file(root)
        pairs, skipped = read_pairs(tsv)
        source, info = str(tsv), _metadata(tsv.parent)
    bad = sum(skipped.values())
    if bad:
        why = ", ".join(f"{n} {'without a tab' if k == 'no_tab' else 'with an empty side'}"
                        for k, n in skipped.items() if n)
        warnings.warn(f"skipped {bad} line(s) of {source} ({why})")
    if not pairs:
        why = "empty: no lines of text" if not bad else f"all {bad} line(s) skipped"
        raise GenforgeError(f"no sentence pairs in {source} ({why}); each line needs source<TAB>target text")
    if cfg.val_fraction > 0:
        test = cfg.split == "test"
        pairs = [p for p in pairs if held_out(p[0], cfg.val_fraction) == test]
        if not pairs:
            raise GenforgeError(f"data.val_fraction={cfg.val_fraction} leaves no pairs in the {cfg.split!r} "
                                f"split of {source}; change data.val_fraction or add pairs")
    if cfg.limit:
        pairs = pairs[:cfg.limit]
    meta = {"source": info.get("source", source), "license": info.get("license", "user-supplied"),
            "pairs": len(pairs), "skipped_lines": bad}
    for key in ("pair", "source_lang", "target_lang"):
        if key in info:
            meta[key] = info[key]
    return Examples(source=[p[0] for p in pairs], target=[p[1] for p in pairs], meta=meta)
