"""Language-model evaluation commands: `genforge eval text` and `genforge eval perplexity` (its JSON
alias), kept out of cli.py, which registers them by importing this module."""
from __future__ import annotations

import typer

from .cli import _echo_json, eval_app
from .errors import GenforgeError

SPLITS = ("test", "train")


def text_report(run_dir: str, split: str = "test", max_tokens: int = 0, device: str = "auto") -> dict:
    """Loss, perplexity, bits per character and per byte of a language-model run on its own text
    (``data.path``, the given split); ``max_tokens`` > 0 caps the tokens scored."""
    from . import load
    from .data import load_dataset
    from .pipelines.lm import LMPipeline
    from .tasks.lm import score_text

    if split not in SPLITS:
        raise GenforgeError(f"--split must be one of: {', '.join(SPLITS)}; got {split!r}")
    if max_tokens < 0:
        raise GenforgeError(f"-n/--max-tokens must be 0 (all) or more, got {max_tokens}")
    pipe = load(run_dir, device=device)
    if not isinstance(pipe, LMPipeline):
        raise GenforgeError(f"{run_dir} is a {pipe.cfg.task!r} run; eval text needs a language-model (lm) run")
    if split == "test" and pipe.cfg.data.val_fraction == 0:
        raise GenforgeError(f"{run_dir} held no text out (data.val_fraction=0): there is nothing unseen to "
                            f"score; use --split train to score the training text")
    held = load_dataset(pipe.cfg.data.model_copy(update={"split": split, "limit": None}))
    return {"run_dir": str(pipe.run_dir), "split": split,
            **score_text(pipe.model, pipe.tokenizer, held.column("text"), max_tokens)}


@eval_app.command("text")
def eval_text(
    run_dir: str = typer.Argument(..., help="Language-model run directory."),
    split: str = typer.Option("test", "--split", help="Which text of the run's data.path: test (held "
                              "out) or train."),
    max_tokens: int = typer.Option(0, "-n", "--max-tokens", help="Score at most this many tokens (0: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str = typer.Option("auto"),
):
    """Loss (nats/token), perplexity, bits per character and bits per byte of the run's text.

    Bits per character/byte are the summed loss over ln 2 over the characters/UTF-8 bytes of exactly
    the text scored, so runs with different tokenizers compare."""
    r = text_report(run_dir, split, max_tokens, device)
    if as_json:
        _echo_json(r)
        return
    typer.echo(f"{r['run_dir']} ({r['split']} split): {r['val_tokens']} tokens, {r['val_chars']} characters, "
               f"{r['val_bytes']} bytes\n"
               f"loss {r['val_loss']:.4f} nats/token   perplexity {r['val_ppl']:.3f}\n"
               f"{r['val_bpc']:.4f} bits/character   {r['val_bpb']:.4f} bits/byte")


@eval_app.command("perplexity")
def eval_perplexity(
    run_dir: str = typer.Argument(..., help="Language-model run directory."),
    max_tokens: int = typer.Option(0, "--max-tokens", help="Score at most this many held-out tokens (0: all)."),
    device: str = typer.Option("auto"),
    split: str = typer.Option("test", "--split", help="test (held out) or train."),
):
    """Next-token loss and perplexity on the run's held-out text, as JSON (the same as `eval text --json`)."""
    _echo_json(text_report(run_dir, split, max_tokens, device))
