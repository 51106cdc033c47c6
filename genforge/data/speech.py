"""Speech in the LJSpeech layout: ``metadata.csv`` (``id|text|normalized[|speaker]``) and ``wavs/ID.wav``.

Each clip is read with soundfile, mixed to mono, resampled to ``MelConfig.sample_rate`` (scipy's
polyphase resampler: exact for the usual 16/22.05/24/44.1/48 kHz ratios), and trimmed of leading and
trailing silence (frames more than ``TRIM_DB`` below the clip's loudest frame). Those trimmed clips and
their log-mels are cached under ``DATA/.genforge-cache/`` keyed by each wav's size and mtime and by the
mel settings, and the espeak phonemes in one JSON file keyed by text, so only the first load is slow.
The ``audio`` column reads clips from that cache when indexed (LJSpeech is ~8 GB as float32), the mels
stay in memory (~1 GB for LJSpeech's 13,100 clips). A wav that cannot be read, or is empty or silent, is
skipped; the skipped clips are counted in one warning and in ``meta["skipped"]``.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..audio.features import MelConfig, log_mel
from ..errors import GenforgeError
from ..registry import register_dataset
from . import Examples

CACHE_DIR = ".genforge-cache"
#: bump when the audio processing changes, so old caches are not reused
CACHE_VERSION = 1
#: silence threshold for trimming, in dB below the loudest frame (LJSpeech's own clips trim cleanly at 40;
#: 60, librosa's default, leaves breaths and room noise in)
TRIM_DB = 40.0
#: frames of the trimming analysis kept on each side of the voiced part, so soft onsets are not clipped
TRIM_MARGIN = 2


def held_out_id(utt_id: str, fraction: float) -> bool:
    digest = hashlib.sha1(utt_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def read_metadata(root: Path) -> tuple[list[dict[str, str]], bool]:
    """Rows of ``root/metadata.csv`` as dicts (id, text, normalized, speaker when given) and whether any
    row names a speaker. A header row (first field ``id``) is allowed."""
    path = root / "metadata.csv"
    if not path.is_file():
        raise GenforgeError(f"{path} not found: a speech folder needs metadata.csv (id|text|normalized per "
                            f"line) and wavs/ID.wav, the LJSpeech layout")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    names = ["id", "text", "normalized", "speaker"]
    if lines and lines[0].split("|")[0].strip().lower() == "id":
        names = [c.strip().lower() for c in lines[0].split("|")]
        lines = lines[1:]
    rows = []
    for line in lines:
        if not line.strip():
            continue
        row = {k: v.strip() for k, v in zip(names, line.split("|"))}
        if row.get("id") and (row.get("text") or row.get("normalized")):
            rows.append(row)
    return rows, any(r.get("speaker") for r in rows)


def load_wav(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sample_rate``."""
    import soundfile as sf

    from ..audio.features import resample

    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(resample(wav.mean(axis=1), sr, sample_rate), dtype=np.float32)


def trim_silence(wav: np.ndarray, top_db: float = TRIM_DB, frame: int = 1024, hop: int = 256,
                 margin: int = TRIM_MARGIN) -> np.ndarray:
    """``wav`` without the leading and trailing frames quieter than ``top_db`` below its loudest frame;
    empty when the clip is silent."""
    if wav.size == 0:
        return wav
    pad = np.pad(wav, (frame // 2, frame // 2))
    n = 1 + max(0, len(pad) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    rms = np.sqrt(np.mean(pad[np.minimum(idx, len(pad) - 1)] ** 2, axis=1))
    peak = rms.max()
    if peak <= 1e-6:  # digital silence
        return wav[:0]
    loud = np.nonzero(20 * np.log10(np.maximum(rms, 1e-10) / peak) > -top_db)[0]
    start = max(0, (loud[0] - margin) * hop)
    end = min(len(wav), (loud[-1] + margin + 1) * hop)
    return wav[start:end]


class CachedClips(Sequence):
    """Trimmed clips read from their cache files on indexing: one float32 tensor (samples,) each."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        from safetensors import safe_open

        with safe_open(str(self.files[i]), framework="pt") as f:
            return f.get_tensor("audio")


def _cache_root(root: Path) -> Path:
    """``root/.genforge-cache``, or a per-folder cache under ~/.cache when the data folder is read-only."""
    cache = root / CACHE_DIR
    try:
        cache.mkdir(exist_ok=True)
        probe = cache / ".write-probe"
        probe.touch()
        probe.unlink()
        return cache
    except OSError:
        key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genforge" / "speech" / key
        cache.mkdir(parents=True, exist_ok=True)
        return cache


def _clip_key(utt_id: str, st: os.stat_result, mel: MelConfig) -> str:
    text = json.dumps([utt_id, st.st_size, st.st_mtime_ns, mel.to_dict(), TRIM_DB, TRIM_MARGIN, CACHE_VERSION])
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _prepare_clip(wav_path: Path, cache_file: Path, mel_cfg: MelConfig) -> Optional[str]:
    """Write ``cache_file`` (audio + mel) for one wav; the reason it was skipped, or None."""
    from safetensors.torch import save_file

    try:
        wav = load_wav(wav_path, mel_cfg.sample_rate)
    except Exception:  # soundfile raises several types for truncated or foreign files
        return "unreadable"
    if not np.isfinite(wav).all():
        return "unreadable"
    wav = trim_silence(wav)
    if wav.size < mel_cfg.hop_length:
        return "empty"
    audio = torch.from_numpy(np.clip(wav, -1.0, 1.0))
    tmp = cache_file.with_name(cache_file.name + ".tmp")
    save_file({"audio": audio.contiguous(), "mel": log_mel(audio, mel_cfg).contiguous()}, str(tmp))
    os.replace(tmp, cache_file)
    return None


def _phonemes_cached(cache: Path, texts: list[str]) -> list[str]:
    """IPA of each text through ``cache/phonemes.json`` (text -> IPA; only new texts go to espeak). The
    file records the phonemizer it came from (``phonemizer_key``): after an espeak-ng or phonemizer
    upgrade it is rebuilt, so training never mixes IPA that today's front end would not produce."""
    from ..speech.frontend import phonemize, phonemizer_key

    path = cache / "phonemes.json"
    key = phonemizer_key()
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        known: dict[str, str] = saved["ipa"] if saved.get("phonemizer") == key else {}
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        known = {}
    todo = sorted({t for t in texts if t not in known})
    if todo:
        for i in range(0, len(todo), 2000):
            part = todo[i:i + 2000]
            known.update(zip(part, phonemize(part)))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"phonemizer": key, "ipa": known}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    return [known[t] for t in texts]


def _folder_license(root: Path) -> tuple[str, str]:
    """(licence, source) from ``metadata.json`` or a ``LICENSE`` file in the folder."""
    meta_file = root / "metadata.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if isinstance(meta, dict) and meta.get("license"):
                return str(meta["license"]), str(meta.get("source", root))
        except json.JSONDecodeError:
            pass
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING"):
        if (root / name).is_file():
            first = (root / name).read_text(encoding="utf-8", errors="replace").strip().splitlines()
            return (first[0].strip() if first else name), str(root)
    return "user-supplied", str(root)


def load_speech(root: str | Path, split: str = "train", val_fraction: float = 0.0, limit: Optional[int] = None,
                mel_cfg: MelConfig = MelConfig(), progress=None) -> Examples:
    """The LJSpeech-layout folder ``root`` as Examples (text, phonemes, audio, mel, maybe speaker)."""
    from ..speech.frontend import normalize

    root = Path(root).expanduser()
    if not root.is_dir():
        raise GenforgeError(f"data.path {str(root)!r} is not a folder; give an LJSpeech-layout folder "
                            f"(metadata.csv + wavs/)")
    rows, has_speaker = read_metadata(root)
    if val_fraction > 0:
        rows = [r for r in rows if held_out_id(r["id"], val_fraction) == (split == "test")]
    if limit:
        rows = rows[:limit]
    cache = _cache_root(root)
    skipped = {"missing": 0, "unreadable": 0, "empty": 0, "no_text": 0}
    kept, files = [], []
    prepared = 0
    for i, row in enumerate(rows, 1):
        wav_path = root / "wavs" / f"{row['id']}.wav"
        try:
            if Path(row["id"]).name != row["id"] or row["id"].startswith("."):
                raise OSError("an id is a file name, not a path")
            st = wav_path.stat()
        except OSError:
            skipped["missing"] += 1
            continue
        cache_file = cache / f"{_clip_key(row['id'], st, mel_cfg)}.safetensors"
        skip_file = cache_file.with_suffix(".skip")  # a bad wav is judged once, until it changes
        if skip_file.exists():
            why = skip_file.read_text().strip() or "unreadable"
            skipped[why if why in skipped else "unreadable"] += 1
            continue
        if not cache_file.exists():
            prepared += 1
            why = _prepare_clip(wav_path, cache_file, mel_cfg)
            if why:
                skip_file.write_text(why)
                skipped[why] += 1
                continue
        kept.append(row)
        files.append(cache_file)
        if progress and prepared and (i % 50 == 0 or i == len(rows)):  # a cached load is quiet
            progress(i, len(rows))
    texts, keep_idx = [], []
    for j, row in enumerate(kept):
        t = normalize(row.get("normalized") or row.get("text") or "")
        if t:
            texts.append(t)
            keep_idx.append(j)
        else:
            skipped["no_text"] += 1
    kept, files = [kept[j] for j in keep_idx], [files[j] for j in keep_idx]
    phonemes = _phonemes_cached(cache, texts)
    n_skipped = sum(skipped.values())
    if n_skipped:
        shown = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items() if v)
        warnings.warn(f"skipped {n_skipped} of {len(rows)} clip(s) in {root}: {shown}")
    if not kept:
        raise GenforgeError(f"no usable clips in the {split!r} split of {root} ({len(rows)} metadata rows, "
                            f"{n_skipped} skipped); check wavs/ID.wav and data.val_fraction")
    from safetensors import safe_open

    mels = []
    for f in files:
        with safe_open(str(f), framework="pt") as sf_:
            mels.append(sf_.get_tensor("mel"))
    licence, source = _folder_license(root)
    meta: dict[str, Any] = {"name": "ljspeech", "source": source, "license": licence, "path": str(root),
                            "split": split, "held_out": split == "test" and val_fraction > 0,
                            "sample_rate": mel_cfg.sample_rate, "mel": mel_cfg.to_dict(), "skipped": skipped,
                            "cache": str(cache), "frames": int(sum(m.shape[-1] for m in mels)),
                            "seconds": round(sum(m.shape[-1] for m in mels) * mel_cfg.hop_length
                                             / mel_cfg.sample_rate, 1)}
    speaker = None
    if has_speaker:
        speaker = [r.get("speaker") or "" for r in kept]
        meta["speakers"] = sorted(set(speaker))
    return Examples(text=texts, phonemes=phonemes, audio=CachedClips(files), mel=mels, speaker=speaker,
                    meta=meta)


@register_dataset("ljspeech")
def load_ljspeech(cfg) -> Examples:
    """An LJSpeech-layout folder at ``data.path`` (``genforge data speech`` writes one)."""
    if not cfg.path:
        raise GenforgeError("dataset 'ljspeech' needs data.path=FOLDER (metadata.csv + wavs/ID.wav; "
                            "`genforge data speech --out FOLDER` builds one)")
    from ..train.logging import step_progress

    with step_progress("ljspeech: caching clips and mels") as progress:
        return load_speech(cfg.path, cfg.split, cfg.val_fraction, cfg.limit, progress=progress)
