"""`genforge data`: build the default corpora offline from Debian packages (see genforge/data/corpora.py)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from .cli import app

data_app = typer.Typer(no_args_is_help=True, help="Build default datasets from packages on this machine.")
app.add_typer(data_app, name="data")


@data_app.command("text")
def data_text(
    corpus: str = typer.Option("web", "--corpus", help="web (World English Bible, public domain) or "
                               "python-docs (the Python documentation's reStructuredText, PSF License)."),
    out: Path = typer.Option(None, "--out", help="Folder to write (default data/text-CORPUS)."),
    source: Path = typer.Option(None, "--source", help="python-docs only: a folder of *.rst.txt files to read "
                                "(the docs' _sources, or the html folder above it) instead of the newest "
                                "/usr/share/doc/python3*/html/_sources."),
):
    """Build a language-model corpus: plain UTF-8 text + metadata.json (source, licence, counts)."""
    from .data.corpora import build_text
    from .train.logging import step_progress

    out = out or Path(f"data/text-{corpus}")
    with step_progress(f"data text {corpus}") as progress:
        meta = build_text(corpus, out, progress, source_dir=source)
    typer.echo(json.dumps({"out": str(out), **meta}, ensure_ascii=False))
    typer.echo(f"train on it: genforge train gpt_web data.path={out}", err=True)


@data_app.command("parallel")
def data_parallel(
    pair: str = typer.Option("en-es", "--pair", help="Language pair, source-target: en-es (World English Bible "
                             "+ Reina-Valera 1909, aligned by verse; both public domain) or es-en (the same "
                             "pairs, Spanish first)."),
    out: Path = typer.Option(None, "--out", help="Folder to write (default data/parallel-PAIR)."),
    max_ratio: float = typer.Option(1.8, "--max-ratio", help="Drop pairs whose character-length ratio "
                                    "exceeds this (likely misaligned verses)."),
):
    """Build a translation corpus: pairs.tsv (source<TAB>target per line) + metadata.json."""
    from .data.corpora import build_parallel
    from .train.logging import step_progress

    out = out or Path(f"data/parallel-{pair}")
    with step_progress(f"data parallel {pair}") as progress:
        meta = build_parallel(pair, out, max_ratio, progress)
    typer.echo(json.dumps({"out": str(out), **meta}, ensure_ascii=False))
    typer.echo(f"train on it: genforge train translate_{pair.replace('-', '_')} data.path={out}", err=True)
