"""Captioned image folders, in the two layouts public caption data ships in.

* Hugging Face imagefolder: ``metadata.jsonl`` lines like ``{"file_name": "a/b.png", "text": "..."}``
  (``caption`` or ``captions`` are accepted for ``text``, a list for several captions). A folder may
  hold several metadata files; each one's ``file_name`` is relative to the folder it sits in. With
  ``train/`` and ``test/`` (or ``validation/``) subfolders, ``data.split`` picks one.
* COCO captions JSON (``images`` with id/file_name, ``annotations`` with image_id/caption):
  ``data.path`` is the JSON file, or a folder holding ``captions_*.json`` (itself or in
  ``annotations/``). Images are looked up beside the JSON, in a subfolder named like it
  (``captions_train2017.json`` -> ``train2017/``) or in the folder above ``annotations/``. With both a
  train and a val/test JSON, ``data.split`` picks one.

Without split folders or files, ``data.val_fraction`` of the images (by a hash of the file name, as for
``folder``) is the test split. Each image's ``caption`` is a str, or a list of str when it has several.
Entries that cannot be used (bad JSON lines, no text, missing or unreadable images) are skipped and
counted in one warning; nothing usable at all is a GenforgeError.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch

from ..config import DataConfig
from ..errors import GenforgeError
from ..registry import register_dataset
from . import ImageSet
from .folder import _CHUNK, _decode, held_out_file

METADATA = "metadata.jsonl"
TEXT_KEYS = ("text", "caption", "captions")
_TEST_DIRS = ("test", "validation", "val")
_USER_LICENCE = "the user's: the terms of wherever these files came from apply"
_PROBE = 50  # file names tried per candidate folder when looking for COCO's images


class _Skips:
    """How many entries were dropped for each reason, and the first one as an example, for one warning line."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: list[str] = []

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < 1:
            self.examples.append(example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = ", ".join(f"{n} {reason}" for reason, n in self.counts.items())
        return f"{parts}; e.g. {self.examples[0]}" if self.examples else parts


def _texts(value: Any) -> list[str]:
    """Non-empty captions in an entry's text value (a str or a list of str); [] if it has none."""
    items = value if isinstance(value, list) else [value]
    return [t.strip() for t in items if isinstance(t, str) and t.strip()]


def _merge(into: list[str], texts: list[str]) -> None:
    """Add ``texts`` to an image's captions, once each: data sets repeat lines when merged."""
    for t in texts:
        if t not in into:
            into.append(t)


def _inside(base: Path, name: str) -> Optional[Path]:
    """``base / name`` if ``name`` is a relative path that stays inside ``base``, else None."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    return base / rel


# ---------------------------------------------------------------- Hugging Face metadata.jsonl

def _metadata_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if METADATA in filenames:
            found.append(Path(dirpath) / METADATA)
    return found


def _read_metadata(files: list[Path], root: Path, skips: _Skips) -> dict[Path, list[str]]:
    captions: dict[Path, list[str]] = {}
    for meta in files:
        where = meta.relative_to(root).as_posix()
        with open(meta, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as e:
                    skips.add("bad JSON lines", f"{where} line {lineno}: {e.msg}")
                    continue
                name = entry.get("file_name") if isinstance(entry, dict) else None
                path = _inside(meta.parent, name) if isinstance(name, str) else None
                if path is None:
                    skips.add("entries without a file_name inside the folder",
                              f"{where} line {lineno}: file_name {name!r}")
                    continue
                texts = next((t for k in TEXT_KEYS if k in entry and (t := _texts(entry[k]))), [])
                if not texts:
                    skips.add("entries without text", f"{where} line {lineno}: no non-empty "
                              f"{' / '.join(TEXT_KEYS)} for {name}")
                    continue
                _merge(captions.setdefault(path, []), texts)
    return captions


# ---------------------------------------------------------------- COCO captions JSON

def _split_of(path: Path) -> Optional[str]:
    stem = path.stem.lower()
    if "train" in stem:
        return "train"
    if any(w in stem for w in ("val", "test")):
        return "test"
    return None


def _coco_file(root: Path, split: str) -> tuple[Optional[Path], bool]:
    """The captions JSON for ``split`` under ``root`` (or None), and whether train and test are separate files."""
    found = sorted(p for d in (root, root / "annotations") if d.is_dir() for p in d.glob("captions_*.json"))
    if not found:
        return None, False
    by_split = {s: [p for p in found if _split_of(p) == s] for s in ("train", "test")}
    if by_split["train"] and by_split["test"]:
        return by_split[split][0], True
    return found[0], False


def _image_dir(json_path: Path, names: list[str]) -> Path:
    """The folder in which most of the first file names exist: beside the JSON, or a folder named like it."""
    here = json_path.parent
    tag = re.sub(r"^captions_", "", json_path.stem)
    bases = [here] + ([here.parent] if here.name == "annotations" else [])
    probe = names[:_PROBE]

    def hits(d: Path) -> int:
        return sum(1 for n in probe if (p := _inside(d, n)) is not None and p.is_file())

    best, best_hits = here, -1
    # Nearest folders first, and stop at one holding every probed name: listing the subfolders of a
    # folder of 100k images is the slow part, and a JSON beside its images never needs it.
    for d in _candidates([here] + [b / tag for b in bases], bases):
        n = hits(d)
        if n > best_hits:
            best, best_hits = d, n
        if n == len(probe):
            break
    return best


def _candidates(first: list[Path], bases: list[Path]) -> Iterator[Path]:
    seen: set[Path] = set()
    for d in first:
        if d not in seen and d.is_dir():
            seen.add(d)
            yield d
    for b in bases:
        for d in sorted(b.iterdir()):
            if d not in seen and not d.name.startswith(".") and d.is_dir():
                seen.add(d)
                yield d


def _read_coco(json_path: Path, skips: _Skips) -> tuple[Path, dict[Path, list[str]], Any]:
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenforgeError(f"{json_path} is not readable COCO JSON ({e}); point data.path at a "
                            "captions_*.json file or a folder of images with metadata.jsonl") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("annotations"), list):
        raise GenforgeError(f"{json_path} has no 'images' and 'annotations' lists, so it is not COCO captions "
                            "JSON; point data.path at captions_train2017.json or similar")
    names: dict[Any, str] = {}
    for img in doc["images"]:
        if not (isinstance(img, dict) and isinstance(img.get("file_name"), str)
                and isinstance(img.get("id"), (int, str))):
            skips.add("image entries without id or file_name", f"{json_path.name}: {str(img)[:80]}")
            continue
        names[img["id"]] = img["file_name"]
    texts: dict[Any, list[str]] = {}
    for ann in doc["annotations"]:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        image_id = image_id if isinstance(image_id, (int, str)) else None  # a list id would not hash
        caption = _texts(ann.get("caption")) if isinstance(ann, dict) else []
        if image_id not in names:
            skips.add("captions of unknown images", f"{json_path.name}: image_id {image_id!r}")
        elif not caption:
            skips.add("entries without text", f"{json_path.name}: empty caption for {names[image_id]}")
        else:
            _merge(texts.setdefault(image_id, []), caption)
    for image_id, name in names.items():
        if image_id not in texts:
            skips.add("images without captions", f"{json_path.name}: {name}")
    image_dir = _image_dir(json_path, [names[i] for i in texts])
    captions: dict[Path, list[str]] = {}
    for image_id, caps in texts.items():
        path = _inside(image_dir, names[image_id])
        if path is None:
            skips.add("entries without a file_name inside the folder", f"{json_path.name}: {names[image_id]!r}")
        else:
            _merge(captions.setdefault(path, []), caps)
    return image_dir, captions, doc.get("licenses")


# ---------------------------------------------------------------- loader

def _licence(root: Path, coco_licenses: Any) -> Union[str, list[str]]:
    """The licence the data declares (COCO's licenses, a dataset card's ``license:``), else the user's."""
    if isinstance(coco_licenses, list):
        names = [str(x.get("name") or x.get("url")) for x in coco_licenses if isinstance(x, dict)]
        if names:
            return list(dict.fromkeys(names))
    for card in (root / "README.md", root.parent / "README.md"):
        try:
            text = card.read_text(encoding="utf-8", errors="replace")[:20000]
        except OSError:
            continue
        front = re.match(r"---\s*\n(.*?)\n---", text, re.S)
        found = re.search(r"^licen[cs]e:\s*(\S.*)$", front.group(1), re.M) if front else None
        if found:
            return found.group(1).strip().strip("'\"")
    return _USER_LICENCE


def _locate(cfg: DataConfig) -> tuple[Path, str, Optional[Path], bool]:
    """(root, format, COCO JSON or None, whether the split came from separate folders/files)."""
    if cfg.path is None:
        raise GenforgeError("data.path is required for the captions dataset; set data.path to a folder with "
                            "metadata.jsonl or to a COCO captions_*.json file")
    given = Path(cfg.path).expanduser()
    if not given.exists():
        raise GenforgeError(f"caption data {given} does not exist; set data.path to a folder with metadata.jsonl "
                            "or to a COCO captions_*.json file")
    if given.is_file():
        if given.name == METADATA:
            return given.parent, "metadata.jsonl", None, False
        return given.parent, "coco", given, False
    test_dir = next((given / d for d in _TEST_DIRS if (given / d).is_dir()), None)
    if (given / "train").is_dir() and test_dir is not None and _metadata_files(given / "train"):
        return (given / "train" if cfg.split == "train" else test_dir), "metadata.jsonl", None, True
    if _metadata_files(given):
        return given, "metadata.jsonl", None, False
    coco, separate = _coco_file(given, cfg.split)
    if coco is not None:
        return given, "coco", coco, separate
    raise GenforgeError(f"no {METADATA} or captions_*.json found in {given}; add a {METADATA} with file_name "
                        "and text per image (or use data.name=folder for images without captions)")


def _decode_all(paths: list[Path], size: int, channels: int, want: int,
                root: Path, skips: _Skips) -> tuple[list[np.ndarray], list[int]]:
    kept: list[np.ndarray] = []
    kept_idx: list[int] = []
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), _CHUNK):
            chunk = paths[start: start + _CHUNK]
            for k, (arr, why) in enumerate(pool.map(lambda p: _decode(p, size, channels), chunk)):
                if arr is None:
                    reason = "missing files" if not chunk[k].is_file() else "unreadable images"
                    skips.add(reason, f"{_shown(chunk[k], root)} ({why[:120]})")
                elif len(kept) < want:
                    kept.append(arr)
                    kept_idx.append(start + k)
            if len(kept) >= want:
                break
    return kept, kept_idx


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


@register_dataset("captions")
def load_captions(cfg: DataConfig) -> ImageSet:
    """Captioned images resized (shorter side) and centre-cropped to ``cfg.image_size``."""
    root, fmt, coco, has_splits = _locate(cfg)
    skips = _Skips()
    licenses = None
    if coco is None:
        captions = _read_metadata(_metadata_files(root), root, skips)
        base = root
    else:
        base, captions, licenses = _read_coco(coco, skips)
    source = coco or root
    items = sorted(captions.items(), key=lambda kv: _shown(kv[0], base))
    if not has_splits and cfg.val_fraction > 0:
        test = cfg.split == "test"
        items = [kv for kv in items if held_out_file(Path(_shown(kv[0], base)), cfg.val_fraction) == test]
    held_out = cfg.split == "test" and (has_splits or cfg.val_fraction > 0)

    want = len(items) if cfg.limit is None else min(cfg.limit, len(items))
    kept, kept_idx = _decode_all([p for p, _ in items], cfg.image_size, cfg.channels or 3, want, base, skips)
    if skips.total:
        tried = len(kept) + skips.total
        warnings.warn(f"skipped {skips.total} of {tried} caption entries in {source}: {skips.summary()}",
                      stacklevel=2)
    if not kept:
        why = f" (skipped: {skips.summary()})" if skips.total else ""
        split_note = f" in the {cfg.split!r} split (data.val_fraction={cfg.val_fraction})" \
            if not has_splits and cfg.val_fraction > 0 and captions else ""
        raise GenforgeError(f"no usable captioned images{split_note} in {source}{why}; each entry needs an "
                            "existing image file and a non-empty caption")
    chosen = [items[i] for i in kept_idx]
    return ImageSet(
        images=torch.from_numpy(np.stack(kept)),
        captions=[caps[0] if len(caps) == 1 else list(caps) for _, caps in chosen],
        meta={"name": "captions", "format": fmt, "split": cfg.split, "path": str(source), "held_out": held_out,
              "files": [_shown(p, base) for p, _ in chosen], "skipped": skips.total,
              "skipped_by_reason": dict(skips.counts), "license": _licence(root, licenses)},
    )
