"""`genforge speak`: text -> WAV with an acoustic run (and its vocoder), kept out of cli.py, which
registers it by importing this module."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import typer

from .cli import app
from .errors import GenforgeError
from .train.checkpoint import ordinary_mode

#: sample formats a WAV can be written in (soundfile subtypes)
SUBTYPES = {"16": "PCM_16", "float": "FLOAT"}


def write_wav(path: Path, wav, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write ``wav`` to ``path`` through a temporary file in the same folder, renamed into place, so a
    failure never leaves a half-written file under the asked-for name."""
    return write_wav_chunks(path, [wav], sample_rate, subtype)[0]


def write_wav_chunks(path: Path, chunks: Iterable, sample_rate: int, subtype: str = "PCM_16",
                     gap: int = 0, check: Optional[Callable[[Any], None]] = None) -> tuple[Path, int]:
    """``write_wav`` for audio that comes in chunks (one per sentence), ``gap`` zero samples between
    them: each chunk goes to the temporary file as it comes, so a long text never holds its whole
    audio in memory. ``check(chunk)`` may raise to abandon the file. Returns (path, samples)."""
    import numpy as np
    import soundfile as sf

    path = Path(path).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise GenforgeError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise GenforgeError(f"--out {path} is a directory; give a file name such as out.wav")
    fd, tmp = tempfile.mkstemp(prefix=".speak-", suffix=".wav", dir=folder)
    os.close(fd)
    samples = 0
    try:
        with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=1, subtype=subtype, format="WAV") as f:
            for chunk in chunks:
                if check is not None:
                    check(chunk)
                if samples and gap:
                    f.write(np.zeros(gap, dtype=np.float32))
                    samples += gap
                f.write(chunk)
                samples += len(chunk)
        ordinary_mode(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise GenforgeError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path, samples


def _read_text(text: Optional[str], file: Optional[Path]) -> str:
    if text is not None and file is not None:
        raise GenforgeError("give the text as an argument or with --file, not both")
    if file is not None:
        if str(file) == "-":
            return sys.stdin.read()
        try:
            return Path(file).expanduser().read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GenforgeError(f"--file {file} not found") from None
        except (UnicodeDecodeError, IsADirectoryError):
            raise GenforgeError(f"--file {file} is not a UTF-8 text file") from None
    if text is None or text == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise GenforgeError('nothing to say: give the text (genforge speak "Hello."), --file FILE, '
                                "or pipe it on stdin")
        return sys.stdin.read()
    return text


@app.command("speak")
def speak_cmd(
    text: Optional[str] = typer.Argument(None, help='The text to say ("-" or none: read stdin).'),
    model: Optional[str] = typer.Option(None, "--voice", "--model", "-m", help="Voice: an acoustic (task: "
                                        "tts) run directory or shipped model; default: the shipped voice."),
    vocoder: Optional[str] = typer.Option(None, "--vocoder", help="Vocoder run directory; default: the one "
                                          "the acoustic run names (task_params.vocoder), else Griffin-Lim; "
                                          "griffin-lim forces it."),
    out: Path = typer.Option(Path("speech.wav"), "--out", "-o", help="WAV file to write."),
    file: Optional[Path] = typer.Option(None, "--file", "-f",
                                        help="Read the text from this file ('-': stdin)."),
    rate: float = typer.Option(1.0, "--rate", help="Speaking rate: 2 is twice as fast, 0.5 half (0.25-4)."),
    pitch: float = typer.Option(0.0, "--pitch", help="Pitch shift in semitones (-12 to 12)."),
    speaker: Optional[str] = typer.Option(None, "--speaker", help="Speaker name of a multi-speaker voice."),
    sample_format: str = typer.Option("16", "--format", help="WAV samples: 16 (PCM) or float."),
    device: str = typer.Option("auto"),
):
    """Say TEXT with a trained voice and write it as a WAV file (written atomically)."""
    import time

    import numpy as np

    from .pipelines.speech import GAP_SECONDS, check_controls, load_speech

    if sample_format not in SUBTYPES:
        raise GenforgeError(f"--format must be one of: {', '.join(SUBTYPES)}; got {sample_format!r}")
    check_controls(rate, pitch)
    words = _read_text(text, file)
    if not words.strip():
        raise GenforgeError("the text is empty: give something to say")
    if model is None:
        from .pipelines import shipped_default

        model = shipped_default("tts", "voice", "tts_joe")
    pipe = load_speech(model, vocoder, device=device)
    def finite(chunk) -> None:
        if not np.isfinite(chunk).all():
            raise GenforgeError(f"{model} produced non-finite audio; the run is damaged or diverged")

    start = time.perf_counter()
    sr = pipe.sample_rate
    # sentence by sentence into the file: memory stays one sentence's audio, however long the text
    path, samples = write_wav_chunks(out, pipe.stream(words, rate=rate, pitch_shift=pitch, speaker=speaker), sr,
                                     SUBTYPES[sample_format], gap=int(GAP_SECONDS * sr), check=finite)
    took = time.perf_counter() - start
    seconds = samples / sr
    typer.echo(f"wrote {path} ({seconds:.2f} s at {sr} Hz, vocoder {pipe.vocoder_name}; "
               f"made in {took:.2f} s, real-time factor {took / max(seconds, 1e-9):.3f})")
