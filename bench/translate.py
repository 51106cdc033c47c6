"""Translation quality and speed of a translate run on its held-out pairs: sacreBLEU BLEU and chrF per
decoding setting (greedy, beam search with several length penalties), sentences/s, and Apertium
(`apertium eng-spa`, a rule-based system from Debian's apertium-eng-spa) on the same lines as a
labelled baseline.

    python bench/translate.py [RUN_DIR] [-n 500] [--settings 1:1 4:1 4:0.6 4:0] [--threads 2]

A setting is BEAM:LENGTH_PENALTY; beams are ranked by log-probability / length ** LENGTH_PENALTY.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, save  # noqa: E402

import genforge  # noqa: E402
from genforge.tasks.translate import held_out_pairs, translation_metrics, translation_report  # noqa: E402

#: Apertium's language-pair mode per genforge pair name
APERTIUM_MODES = {"en-es": "eng-spa", "es-en": "spa-eng"}


def apertium(lines: list[str], mode: str) -> tuple[list[str], float]:
    """Apertium's translations of ``lines`` (one per line, in order) and the seconds it took.
    -u drops the '*' it puts before words it does not know, which would only cost it chrF."""
    text = "".join(line.replace("\n", " ") + "\n" for line in lines)
    t0 = time.perf_counter()
    done = subprocess.run(["apertium", "-u", mode], input=text, capture_output=True, text=True, timeout=1800,
                          check=True)
    seconds = time.perf_counter() - t0
    out = done.stdout.split("\n")
    out = out[:-1] if out and out[-1] == "" else out
    if len(out) != len(lines):
        raise SystemExit(f"apertium returned {len(out)} lines for {len(lines)}; cannot align its output")
    return [o.strip() for o in out], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/translate-en-es", help="translate run directory")
    ap.add_argument("-n", type=int, default=500, help="held-out pairs to score (the first n)")
    ap.add_argument("--settings", nargs="+", default=["1:1", "4:1", "4:0.6", "4:0"],
                    help="decoding settings BEAM:LENGTH_PENALTY")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pair", default="en-es", help="Apertium pair for the baseline (en-es, es-en)")
    ap.add_argument("--no-apertium", action="store_true", help="skip the rule-based baseline")
    ap.add_argument("--name", default="translate", help="results file bench/results/NAME.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    pipe = genforge.load(args.run, device="cpu")
    pairs = held_out_pairs(pipe.cfg.data, args.n)
    src, refs = list(pairs.column("source")), list(pairs.column("target"))
    results = {}
    for setting in args.settings:
        beam, lp = setting.split(":")
        report = translation_report(pipe.model, pipe.tokenizer, pipe.cfg.data, n=args.n, beam=int(beam),
                                    length_penalty=float(lp), batch_size=args.batch_size, pairs=pairs)
        label = "greedy" if int(beam) == 1 else f"beam {beam}, length penalty {float(lp):g}"
        results[label] = report
        print(f"{label:30s} BLEU {report['bleu']:6.2f}  chrF {report['chrf']:6.2f}  "
              f"{report['sentences_per_s']:8.2f} sentences/s", file=sys.stderr)
    baseline = None
    mode = APERTIUM_MODES.get(args.pair)
    if args.no_apertium:
        pass
    elif mode is None or shutil.which("apertium") is None:
        print(f"apertium {mode or args.pair} is not available (apt-get install apertium-eng-spa); "
              f"no baseline", file=sys.stderr)
    else:
        hyps, seconds = apertium(src, mode)
        baseline = {"system": f"Apertium {mode} (rule-based; Debian apertium-eng-spa), not a genforge model",
                    "sentences": len(src), **translation_metrics(hyps, refs),
                    "sentences_per_s": round(len(src) / max(seconds, 1e-9), 2),
                    "examples": [{"source": s, "translation": h, "reference": r}
                                 for s, h, r in list(zip(src, hyps, refs))[:3]]}
        print(f"{'apertium ' + mode + ' (rule-based)':30s} BLEU {baseline['bleu']:6.2f}  "
              f"chrF {baseline['chrf']:6.2f}  {baseline['sentences_per_s']:8.2f} sentences/s", file=sys.stderr)
    save(args.name, {"run": str(pipe.run_dir), "data": pipe.cfg.data.path, "n": len(src),
                     "batch_size": args.batch_size, "threads": args.threads,
                     "load_average": list(os.getloadavg()),
                     "params": sum(p.numel() for p in pipe.model.parameters()),
                     "train_steps": pipe.cfg.train.steps, "decoding": results, "apertium_baseline": baseline,
                     "peak_rss_mb": round(peak_rss_mb(), 1)})


if __name__ == "__main__":
    main()
