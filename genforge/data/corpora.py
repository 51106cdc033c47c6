"""Default text corpora, built offline from Debian packages into plain files the `text` and `parallel`
datasets read.

- ``web``: the World English Bible (Debian ``sword-text-web``, module engWEB2015eb; public domain), dumped
  with ``mod2imp`` (``libsword-utils``) and stripped of its OSIS markup: ``<note>`` and ``<title>``
  elements are dropped (each replaced by a space, so words on either side stay apart), then every other
  tag. One verse per line, a ``Book chapter`` heading line and a blank line before each chapter.
- ``python-docs``: the reStructuredText sources of the Python documentation (Debian ``python3-doc`` /
  ``python3.X-doc``, ``html/_sources/**/*.rst.txt``, the newest Python version's; PSF License), one file
  after another, in path order. ``source_dir`` (``--source``) points the build at another folder of
  ``*.rst.txt`` files (a copy of the docs' ``_sources``, or the ``html`` folder above it).
- ``en-es``: the World English Bible paired verse by verse with the 1909 Reina-Valera (Debian
  ``sword-text-sparv``, module spaRV1909eb; public domain). The two modules number some verses
  differently (and only the English one carries the deuterocanon), so verses are paired by reference and a
  pair whose character-length ratio lies outside ``[1 / max_ratio, max_ratio]`` is dropped as a likely
  misalignment.
- ``es-en``: the same verse pairs (the same alignment and drops) with the two sides swapped, for a
  Spanish -> English translator.

Each build writes its files atomically (temporary name, then rename) with a ``metadata.json`` naming the
source, the licence and the counts, which the datasets carry into a run's metadata.
"""
from __future__ import annotations

import glob
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

from ..errors import GenforgeError

Progress = Optional[Callable[[int, int], None]]

WEB_MODULE, SPARV_MODULE = "engWEB2015eb", "spaRV1909eb"
LICENSES = {
    WEB_MODULE: ("World English Bible (eBible.org; Debian sword-text-web)",
                 "public domain (\"World English Bible\" is a trademark of eBible.org: a changed text may "
                 "not carry that name)"),
    SPARV_MODULE: ("Reina-Valera 1909 (eBible.org; Debian sword-text-sparv)", "public domain"),
    "python-docs": ("Python documentation reStructuredText sources (Debian python3-doc)",
                    "PSF License Agreement (Python Software Foundation)"),
}
TEXT_CORPORA = ("web", "python-docs")
PAIRS = ("en-es", "es-en")

_DROP = re.compile(r"<(note|title)\b[^>]*?(?:/>|>.*?</\1\s*>)", re.S)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_REF = re.compile(r"^(.+) (\d+):(\d+)$")


def strip_osis(osis: str) -> str:
    """Plain text of an OSIS fragment: notes and titles dropped, tags removed, entities decoded,
    whitespace runs folded to one space."""
    text = _DROP.sub(" ", osis)
    text = _TAG.sub("", text)
    return _SPACE.sub(" ", html.unescape(text)).strip()


def parse_imp(dump: str) -> dict[str, str]:
    """``mod2imp`` output (``$$$Book C:V`` lines, each followed by that entry's OSIS) as reference ->
    OSIS, in the module's order; headings (``[ Module Heading ]``) are left out."""
    entries: dict[str, str] = {}
    key, lines = None, []
    for line in dump.splitlines():
        if line.startswith("$$$"):
            if key is not None:
                entries[key] = "\n".join(lines)
            ref = line[3:].strip()
            key, lines = (ref if _REF.match(ref) else None), []
        elif key is not None:
            lines.append(line)
    if key is not None:
        entries[key] = "\n".join(lines)
    return entries


def sword_module(module: str) -> dict[str, str]:
    """Reference -> OSIS for an installed SWORD module, dumped with mod2imp."""
    if shutil.which("mod2imp") is None:
        raise GenforgeError("mod2imp not found; install Debian's libsword-utils (apt-get install "
                            "libsword-utils sword-text-web sword-text-sparv)")
    proc = subprocess.run(["mod2imp", module], capture_output=True)
    entries = parse_imp(proc.stdout.decode("utf-8", errors="replace"))
    if proc.returncode != 0 or not entries:
        package = "sword-text-web" if module == WEB_MODULE else "sword-text-sparv"
        raise GenforgeError(f"SWORD module {module} is not installed or empty; install Debian's {package} "
                            f"(apt-get install {package})")
    return entries


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_meta(out: Path, meta: dict) -> None:
    _write_atomic(out / "metadata.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def web_text(entries: dict[str, str], progress: Progress = None) -> tuple[str, int]:
    """The stripped Bible as text (see the module doc) and its verse count."""
    out: list[str] = []
    chapter, verses = None, 0
    total = len(entries)
    for i, (ref, osis) in enumerate(entries.items(), 1):
        book, ch, v = _REF.match(ref).groups()
        text = strip_osis(osis)
        if text and v != "0":
            if (book, ch) != chapter:
                chapter = (book, ch)
                out.append(f"\n{book} {ch}\n" if out else f"{book} {ch}\n")
            out.append(text + "\n")
            verses += 1
        if progress and (i % 1000 == 0 or i == total):
            progress(i, total)
    return "".join(out), verses


def _python_minor(path: Path) -> int:
    # /usr/share/doc/python3.11/...: 3.11 must sort above 3.9, which as text it does not
    m = re.search(r"/python3(?:\.(\d+))?[^/]*/html/_sources$", str(path))
    return int(m.group(1)) if m and m.group(1) else -1


def python_doc_sources(root: Optional[Path] = None) -> tuple[Path, list[Path]]:
    """The ``_sources`` folder read and its ``*.rst.txt`` files in path order: under ``root`` when
    given, else the newest installed Python's documentation."""
    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise GenforgeError(f"--source {str(root)!r} is not a folder; give the Python docs' _sources "
                                f"folder (or the html folder holding it)")
        if (root / "_sources").is_dir():
            root = root / "_sources"
        files = sorted(root.rglob("*.rst.txt"))
        if not files:
            raise GenforgeError(f"no *.rst.txt files under {root}; give the Python docs' _sources folder")
        return root, files
    # python3-doc, python3.11-doc, ... are mostly symlinks to one folder: resolved, each counts once
    found = sorted({Path(p).resolve() for p in glob.glob("/usr/share/doc/python3*/html/_sources")},
                   key=lambda p: (_python_minor(p), str(p)))
    if not found:
        raise GenforgeError("the Python documentation sources are not installed; install Debian's "
                            "python3-doc (apt-get install python3-doc), or give their folder with --source")
    return found[-1], sorted(found[-1].rglob("*.rst.txt"))


def build_text(corpus: str, out: Path, progress: Progress = None, source_dir: Optional[Path] = None) -> dict:
    """Write corpus ``corpus`` (one of ``TEXT_CORPORA``) into folder ``out``; returns its metadata.
    ``source_dir``: python-docs only, the folder of ``*.rst.txt`` files to read (see the module doc)."""
    if corpus not in TEXT_CORPORA:
        raise GenforgeError(f"unknown text corpus {corpus!r}; choose one of: {', '.join(TEXT_CORPORA)}")
    if source_dir is not None and corpus != "python-docs":
        raise GenforgeError(f"--source applies to --corpus python-docs only; the {corpus} corpus is read from "
                            f"its Debian package")
    extra: dict = {}
    if corpus == "web":
        text, verses = web_text(sword_module(WEB_MODULE), progress)
        name, counts = "web.txt", {"verses": verses}
        source, licence = LICENSES[WEB_MODULE]
    else:
        root, files = python_doc_sources(source_dir)
        extra = {"sources": str(root)}
        parts = []
        for i, f in enumerate(files, 1):
            parts.append(f.read_text(encoding="utf-8-sig", errors="replace").strip() + "\n")
            if progress and (i % 50 == 0 or i == len(files)):
                progress(i, len(files))
        text, name, counts = "\n\n".join(parts), "python-docs.txt", {"files": len(files)}
        source, licence = LICENSES["python-docs"]
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / name, text)
    meta = {"corpus": corpus, "source": source, "license": licence, "file": name,
            "characters": len(text), **counts, **extra}
    _write_meta(out, meta)
    return meta


def align_pairs(src: dict[str, str], tgt: dict[str, str], max_ratio: float = 1.8,
                progress: Progress = None) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Verse pairs (plain text) present in both modules, in ``src``'s order, with the counts of what was
    dropped: references only one side has, empty verses, and pairs whose length ratio is off."""
    pairs: list[tuple[str, str]] = []
    dropped = {"only_one_side": 0, "empty": 0, "length_ratio": 0}
    dropped["only_one_side"] = len(set(tgt) - set(src))
    total = len(src)
    for i, (ref, s_osis) in enumerate(src.items(), 1):
        if progress and (i % 1000 == 0 or i == total):
            progress(i, total)
        if ref not in tgt:
            dropped["only_one_side"] += 1
            continue
        if ref.endswith(":0"):  # book and chapter introductions, not verses
            continue
        s, t = strip_osis(s_osis), strip_osis(tgt[ref])
        if not s or not t:
            dropped["empty"] += 1
            continue
        ratio = len(t) / len(s)
        if not 1 / max_ratio <= ratio <= max_ratio:
            dropped["length_ratio"] += 1
            continue
        pairs.append((s.replace("\t", " "), t.replace("\t", " ")))
    return pairs, dropped


def build_parallel(pair: str, out: Path, max_ratio: float = 1.8, progress: Progress = None) -> dict:
    """Write ``out/pairs.tsv`` (``source<TAB>target`` per line: English then Spanish for ``en-es``,
    Spanish then English for ``es-en``) and ``out/metadata.json``."""
    if pair not in PAIRS:
        raise GenforgeError(f"unknown language pair {pair!r}; choose one of: {', '.join(PAIRS)}")
    if not max_ratio > 1:
        raise GenforgeError(f"--max-ratio must be above 1, got {max_ratio}")
    # aligned English -> Spanish either way, so es-en holds exactly the en-es pairs (same drops, same order)
    pairs, dropped = align_pairs(sword_module(WEB_MODULE), sword_module(SPARV_MODULE), max_ratio, progress)
    src_lang, tgt_lang = pair.split("-")
    if src_lang == "es":
        pairs = [(t, s) for s, t in pairs]
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "pairs.tsv", "".join(f"{s}\t{t}\n" for s, t in pairs))
    meta = {"pair": pair, "source_lang": src_lang, "target_lang": tgt_lang,
            "source": f"{LICENSES[WEB_MODULE][0]} + {LICENSES[SPARV_MODULE][0]}, aligned by verse reference",
            "license": f"English: {LICENSES[WEB_MODULE][1]}; Spanish: {LICENSES[SPARV_MODULE][1]}",
            "file": "pairs.tsv", "pairs": len(pairs), "max_length_ratio": max_ratio, "dropped": dropped}
    _write_meta(out, meta)
    return meta
