"""genforge's language-model recipe against a textbook character-level GPT loop, on the same text and the
same training wall clock; decoding speed with and without the KV cache; first-token latency.

    python bench/lm.py [--corpus PATH] [--recipe gpt_tiny] [--minutes 3] [--threads 1] [--run RUN_DIR]

(a) The recipe (genforge's trainer, its tokenizer, its schedule) trains first; its step count is set from
a short timed calibration so it ends near ``--minutes``; the baseline (nanoGPT's shakespeare-char CPU
settings: 4 layers, 4 heads, 128 wide, context 64, batch 12, AdamW lr 1e-3, no warm-up, constant lr,
character vocabulary) then trains for exactly the seconds the recipe took, in the same process with the
same thread count. Both are scored on the same held-out chunks (the text dataset's hash split) in bits
per character of the text scored; a validation curve on the first 8 K held-out characters is taken every
~``--curve-seconds`` of training, its time not counted. (b) tokens/s of greedy decoding, batch 1, with and
without the cache. (c) time to the first piece of `pipe.stream` for a 100-character prompt, median of 21.
Results: bench/results/NAME.json and NAME.png (validation curves). The machine is shared: load averages
are recorded.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from itertools import accumulate
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, peak_rss_mb, save  # noqa: E402

import genforge  # noqa: E402
from genforge.config import RECIPES_DIR, load_config  # noqa: E402
from genforge.data import load_dataset  # noqa: E402
from genforge.models.gpt import GPT, stream_ids  # noqa: E402
from genforge.tasks.lm import _nll, bits_per_unit, score_text  # noqa: E402
from genforge.train.trainer import Trainer  # noqa: E402

VIM = Path("/usr/share/vim/vim90/doc")
CURVE_CHARS = 8192


# -- the baseline: a minimal character-level GPT and its loop ---------------------------------------------
class MiniBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(C, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class MiniGPT(nn.Module):
    def __init__(self, vocab: int, block_size: int = 64, n_layer: int = 4, n_head: int = 4, d: int = 128):
        super().__init__()
        self.block_size = block_size
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(block_size, d)
        self.blocks = nn.Sequential(*[MiniBlock(d, n_head) for _ in range(n_layer)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln(self.blocks(x)))


def train_baseline(train_text: str, held: str, seconds: float, curve_every: float, seed: int = 0) -> dict:
    chars = sorted(set(train_text))
    stoi = {c: i for i, c in enumerate(chars)}
    encode = lambda s: torch.tensor([stoi.get(c, len(chars)) for c in s], dtype=torch.long)  # noqa: E731
    data, val, curve_ids = encode(train_text), encode(held), encode(held[:CURVE_CHARS])
    torch.manual_seed(seed)
    model = MiniGPT(len(chars) + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)
    trained, steps, curve, next_point = 0.0, 0, [], 0.0
    while trained < seconds:
        if trained >= next_point:
            total, n = _nll(model, curve_ids, 16)
            curve.append({"seconds": round(trained, 2), "step": steps, "bpc": bits_per_unit(total, n)})
            next_point += curve_every
        t0 = time.perf_counter()
        ix = torch.randint(len(data) - model.block_size - 1, (12,), generator=gen)
        x = torch.stack([data[i:i + model.block_size] for i in ix])
        y = torch.stack([data[i + 1:i + model.block_size + 1] for i in ix])
        loss = F.cross_entropy(model(x).view(-1, len(chars) + 1), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trained += time.perf_counter() - t0
        steps += 1
    total, n = _nll(model, curve_ids, 16)
    curve.append({"seconds": round(trained, 2), "step": steps, "bpc": bits_per_unit(total, n)})
    total, n = _nll(model, val, 16)  # every held-out character after the first, as for genforge
    return {"steps": steps, "seconds": round(trained, 1), "params": sum(p.numel() for p in model.parameters()),
            "held_out_chars": n, "bpc": bits_per_unit(total, n), "final_train_loss": float(loss.detach()),
            "curve": curve}


# -- genforge's recipe through its own trainer ----------------------------------------------------------
class CurveTrainer(Trainer):
    """The trainer, with a held-out curve point where it would save samples (lm tasks draw none)."""

    curve_text: str = ""
    started: float = 0.0
    eval_seconds: float = 0.0

    def save_samples(self, logger, step):
        t0 = time.perf_counter()
        r = score_text(self.inference_model, self.task.tokenizer, [self.curve_text])
        self.curve.append({"seconds": round(t0 - self.started - self.eval_seconds, 2), "step": step,
                           "bpc": r["val_bpc"]})
        self.eval_seconds += time.perf_counter() - t0


def recipe_overrides(corpus: Path, steps: int, extra: list[str]) -> list[str]:
    return [f"data.path={corpus}", f"train.steps={steps}", "train.tensorboard=false",
            "task_params.eval_tokens=0", *extra]


def seconds_per_step(recipe: Path, corpus: Path, extra: list[str], work: Path) -> float:
    """Timed difference of a 10- and a 40-step run: the per-step cost without the start-up."""
    took = []
    for steps in (10, 40):
        trainer = Trainer(load_config(recipe, recipe_overrides(corpus, steps, [*extra, "train.ckpt_every=100000"])),
                          work / f"calibrate{steps}")
        t0 = time.perf_counter()
        trainer.fit()
        took.append(time.perf_counter() - t0)
    return max(1e-3, (took[1] - took[0]) / 30)


def train_genforge(recipe: Path, corpus: Path, seconds: float, curve_every: float, extra: list[str],
                   held: list[str], work: Path) -> tuple[dict, Path]:
    per_step = seconds_per_step(recipe, corpus, extra, work)
    steps = max(20, int(seconds / per_step))
    every = max(1, int(curve_every / per_step))
    cfg = load_config(recipe, recipe_overrides(corpus, steps, [*extra, f"train.sample_every={every}"]))
    trainer = CurveTrainer(cfg, work / "genforge")
    trainer.curve, trainer.curve_text = [], "".join(held)[:CURVE_CHARS]
    trainer.curve.append({"seconds": 0.0, "step": 0,
                          "bpc": score_text(trainer.model, trainer.task.tokenizer, [trainer.curve_text])["val_bpc"]})
    trainer.started = time.perf_counter()
    result = trainer.fit()
    trained = time.perf_counter() - trainer.started - trainer.eval_seconds
    trainer.curve[-1]["seconds"] = round(trained, 2)  # the final point is taken after the last step
    model = trainer.inference_model
    r = score_text(model, trainer.task.tokenizer, held)
    return {"recipe": recipe.stem, "steps": steps, "seconds_per_step_calibrated": round(per_step, 4),
            "seconds": round(trained, 1), "params": sum(p.numel() for p in model.parameters()),
            "held_out_chars": r["val_chars"], "bpc": r["val_bpc"], "bpb": r["val_bpb"], "val_loss": r["val_loss"],
            "final_train_loss": result["metrics"].get("loss"), "curve": trainer.curve}, work / "genforge"


# -- decoding speed and latency ---------------------------------------------------------------------
def decode_speed(model: GPT, new_tokens: int, repeats: int = 3) -> dict:
    model.eval()
    prompt = torch.full((1, 1), 4, dtype=torch.long)
    rate = {}
    for cache in (True, False):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in stream_ids(model, prompt, new_tokens, temperature=0, use_cache=cache):
                pass
            best = min(best, time.perf_counter() - t0)
        rate["cached" if cache else "uncached"] = round(new_tokens / best, 1)
    rate["speedup"] = round(rate["cached"] / rate["uncached"], 2)
    rate["new_tokens"] = new_tokens
    return rate


def first_token_ms(pipe, prompt: str, n: int = 21) -> dict:
    for _ in range(3):
        next(pipe.stream(prompt, max_tokens=1, temperature=0))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        next(pipe.stream(prompt, max_tokens=1, temperature=0))
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2),
            "prompt_chars": len(prompt)}


def plot(curves: dict[str, list[dict]], path: Path, width: int = 640, height: int = 360) -> None:
    """Held-out bits per character against training seconds, one line per run (Pillow only)."""
    from PIL import Image, ImageDraw

    pts = [p for c in curves.values() for p in c]
    x1 = max(p["seconds"] for p in pts) or 1.0
    y0, y1 = min(p["bpc"] for p in pts), min(8.0, max(p["bpc"] for p in pts))
    left, right, top, bottom = 56, 16, 16, 36
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    xy = lambda s, v: (left + s / x1 * (width - left - right),  # noqa: E731
                       height - bottom - (min(v, y1) - y0) / max(1e-9, y1 - y0) * (height - top - bottom))
    d.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
    for i in range(5):
        v = y0 + (y1 - y0) * i / 4
        d.text((4, xy(0, v)[1] - 6), f"{v:.2f}", fill=(0, 0, 0))
    d.text((left, height - bottom + 6), "0 s", fill=(0, 0, 0))
    d.text((width - right - 140, height - bottom + 6), f"{x1:.0f} s of training", fill=(0, 0, 0))
    d.text((left + 4, height - 16), "held-out bits per character", fill=(0, 0, 0))
    for i, (name, c) in enumerate(curves.items()):
        colour = [(31, 119, 180), (214, 39, 40)][i % 2]
        d.line([xy(p["seconds"], p["bpc"]) for p in c], fill=colour, width=2)
        d.text((width - right - 150, top + 4 + 14 * i), name, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def default_corpus(work: Path) -> Path:
    web = Path("data/text-web")
    if web.exists():
        return web
    out = work / "corpus"
    out.mkdir()
    files = sorted(VIM.glob("usr_[012]*.txt"))
    if not files:
        sys.exit(f"no corpus: give --corpus (neither data/text-web nor {VIM}/usr_*.txt exists)")
    for f in files:
        shutil.copy(f, out / f.name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="text file or folder (default: data/text-web, else Vim's "
                    "user manual usr_0*-usr_2*.txt)")
    ap.add_argument("--recipe", default="gpt_tiny", help="recipe name under genforge/recipes or a YAML path")
    ap.add_argument("--set", nargs="*", default=[], help="extra recipe overrides, e.g. train.lr=3e-3")
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall clock of each run (0: skip (a))")
    ap.add_argument("--curve-seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-chars", type=int, default=100_000, help="score the first held-out chunks up to "
                    "this many characters (0: all)")
    ap.add_argument("--run", help="run directory for (b)/(c) (default: the run trained in (a))")
    ap.add_argument("--name", default="lm", help="results file bench/results/NAME.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    recipe = Path(args.recipe) if args.recipe.endswith(".yaml") else RECIPES_DIR / f"{args.recipe}.yaml"
    out: dict = {"threads": args.threads, "load_average_start": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = args.corpus or default_corpus(work)
        run = Path(args.run) if args.run else None
        if args.minutes > 0:
            cfg = load_config(recipe, recipe_overrides(corpus, 1, args.set))
            train_text = "".join(load_dataset(cfg.data).column("text"))
            held = load_dataset(cfg.data.model_copy(update={"split": "test"})).column("text")
            if args.eval_chars:  # the first held-out chunks, the same for both runs
                keep = [n for n, total in enumerate(accumulate(map(len, held))) if total >= args.eval_chars]
                held = held[:keep[0] + 1] if keep else held
            out["corpus"] = {"path": str(args.corpus or corpus.name), "train_chars": len(train_text),
                             "held_out_chars": len("".join(held))}
            gf, run_dir = train_genforge(recipe, corpus, args.minutes * 60, args.curve_seconds, args.set, held, work)
            print(f"genforge {gf['recipe']}: {gf['steps']} steps in {gf['seconds']} s, held-out {gf['bpc']:.4f} "
                  f"bits/char", file=sys.stderr)
            out["load_average_mid"] = list(os.getloadavg())
            base = train_baseline(train_text, "".join(held), gf["seconds"], args.curve_seconds)
            print(f"baseline char GPT: {base['steps']} steps in {base['seconds']} s, held-out {base['bpc']:.4f} "
                  f"bits/char", file=sys.stderr)
            out.update(genforge=gf, baseline=base, bpc_reduction=round(1 - gf["bpc"] / base["bpc"], 4))
            gf["overrides"] = args.set
            label = f"genforge {gf['recipe']}" + (" (with --set)" if args.set else "")
            plot({label: gf["curve"], "baseline char GPT": base["curve"]},
                 RESULTS / f"{args.name}.png")
            run = run or run_dir
        if run is not None:
            pipe = genforge.load(run, device="cpu")
            out["decode_tokens_per_s"] = {"run_model": decode_speed(pipe.model, pipe.model.block_size - 1)}
            wide = GPT(vocab_size=256, block_size=512, n_layer=4, n_head=4, n_embd=128)
            out["decode_tokens_per_s"]["gpt_context_512_untrained"] = decode_speed(wide, 511, repeats=1)
            out["first_token"] = first_token_ms(pipe, ("The quick brown fox jumps over the lazy dog. " * 3)[:100])
            print(f"decode {out['decode_tokens_per_s']}\nfirst token {out['first_token']}", file=sys.stderr)
        out["load_average_end"] = list(os.getloadavg())
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    save(args.name, out)


if __name__ == "__main__":
    main()
