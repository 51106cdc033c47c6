"""``genforge translate`` and ``genforge eval translate``: commands on the shared typer apps of cli.py,
kept here because cli.py is long enough already."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

from .cli import _echo_json, app, eval_app
from .errors import GenforgeError

#: lines translated per chunk of a file: outputs appear as chunks finish, memory stays flat
CHUNK_LINES = 512


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GenforgeError(f"{name} is not UTF-8 text: byte offset {e.start} (0x{data[e.start]:02x}) cannot "
                            f"be decoded; convert it, e.g. iconv -f latin1 -t utf-8") from None


def _input_lines(text: Optional[str], file: Optional[str]) -> list[str]:
    if text is not None and file is not None:
        raise GenforgeError("give either TEXT or --file, not both")
    if text is None and file is None:
        raise GenforgeError("nothing to translate: give TEXT, --file PATH, or '-' to read standard input")
    if text is not None and text != "-":
        return [text]
    if text == "-" or file == "-":
        body = _decode(sys.stdin.buffer.read(), "standard input")
    else:
        p = Path(file).expanduser()
        if not p.is_file():
            raise GenforgeError(f"--file {file}: no such file")
        body = _decode(p.read_bytes(), str(p))
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":  # the final newline ends the last line; it starts no new one
        lines.pop()
    return lines


def _chunks(lines: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(lines), size):
        yield lines[i:i + size]


@app.command("translate")
def translate_cmd(
    text: Optional[str] = typer.Argument(None, help="Text to translate ('-': one text per line from "
                                         "standard input)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Translate run directory or shipped "
                                        "model; default: the shipped translator."),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="Translate this UTF-8 file line by line "
                                       "('-': standard input)."),
    beam: int = typer.Option(4, "--beam", help="Beam width, 1 to 16 (1: greedy)."),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="Beams are ranked by log-probability "
                                         "/ length**this (0: raw total; 1: per-token average)."),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Most output tokens ([BOS] and [EOS] "
                                          "included; default: twice the source's plus 10)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Sentences decoded together."),
    device: str = typer.Option("auto"),
):
    """Translate text with a translate run: one output line per input line, in order."""
    from . import load
    from .pipelines.translate import TranslatePipeline
    from .tasks.translate import check_decoding

    check_decoding(beam, length_penalty, max_len, batch_size)  # before the model is loaded
    lines = _input_lines(text, file)
    if model is None:
        from .pipelines import shipped_default

        model = shipped_default("translate", "translator", "translate_en_es")
    pipe = load(model, device=device)
    if not isinstance(pipe, TranslatePipeline):
        raise GenforgeError(f"{model} is a {pipe.cfg.task!r} run; translate needs a translate run")
    for part in _chunks(lines, CHUNK_LINES):
        out = pipe.translate(part, beam=beam, length_penalty=length_penalty, max_len=max_len,
                             batch_size=batch_size)
        # a translation never spans lines: output line i answers input line i
        sys.stdout.write("".join(o.replace("\n", " ") + "\n" for o in out))
        sys.stdout.flush()


@eval_app.command("translate")
def eval_translate(
    run_dir: str = typer.Argument(..., help="Translate run directory."),
    n: int = typer.Option(500, "-n", help="Held-out pairs to score (the first n)."),
    beam: int = typer.Option(4, "--beam", help="Beam width, 1 to 16 (1: greedy)."),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="Beams are ranked by log-probability "
                                         "/ length**this."),
    batch_size: int = typer.Option(32, "--batch-size", help="Sentences decoded together."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    device: str = typer.Option("auto"),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON report here."),
):
    """sacreBLEU BLEU and chrF on the run's held-out pairs (its data.path, test split)."""
    from . import load
    from .pipelines.translate import TranslatePipeline
    from .tasks.translate import check_decoding, translation_report
    from .train.checkpoint import atomic_write_json, check_writable

    check_decoding(beam, length_penalty, None, batch_size)
    if n < 1:
        raise GenforgeError(f"-n must be at least 1 held-out pair, got {n}")
    pipe = load(run_dir, device=device)
    if not isinstance(pipe, TranslatePipeline):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; eval translate needs a translate run")
    if out is not None:
        check_writable(out.parent)
    report = {"run_dir": str(pipe.run_dir), "data": pipe.cfg.data.path,
              **translation_report(pipe.model, pipe.tokenizer, pipe.cfg.data, n=n, beam=beam,
                                   length_penalty=length_penalty, batch_size=batch_size)}
    if out is not None:
        atomic_write_json(out, report)
    if as_json:
        _echo_json(report)
        return
    typer.echo(f"BLEU = {report['bleu']:.2f}  {report['bleu_signature']}")
    typer.echo(f"chrF = {report['chrf']:.2f}  {report['chrf_signature']}")
    typer.echo(f"{report['sentences']} held-out pairs, beam {beam}, length penalty {length_penalty:g}, "
               f"{report['sentences_per_s']} sentences/s")
