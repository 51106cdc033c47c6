"""Copy a finished run into genforge/assets/NAME as a shipped default, with its measured figures.

    python scripts/ship.py runs/dcgan-fashion [--name dcgan-fashion] [-n 2000] [--fp16]

Keeps config.json, model.safetensors (fp16 with --fp16), tokenizer.json, metrics.jsonl and, for image
generators, a 64-image sample grid (no resume state), and records into config.json's `notes` the FID
report (generators), test accuracy (classifiers) or the run's own final held-out evaluation (language
models: loss, perplexity, bits per character; translators: sacreBLEU BLEU and chrF).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from genforge.eval.runner import fid_for_run
from genforge.pipelines import ASSETS_DIR
from genforge.train.checkpoint import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--feature-net")
    ap.add_argument("--fp16", action="store_true", help="store floating-point weights as fp16")
    args = ap.parse_args()
    src, name = args.run_dir, args.name or args.run_dir.name
    dst = ASSETS_DIR / name
    tmp = ASSETS_DIR / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "metrics.jsonl", "tokenizer.json"):
        if (src / f).exists():
            shutil.copy2(src / f, tmp / f)
    if args.fp16:
        from safetensors.torch import load_file, save_file

        weights = load_file(tmp / "model.safetensors")
        save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
                  tmp / "model.safetensors")
    cfg = json.loads((tmp / "config.json").read_text())
    text_task = cfg["task"] in ("lm", "translate")
    if cfg["task"] != "classify" and not text_task:
        # a fresh grid from the shipped weights with today's samplers, not a training-time snapshot
        import genforge
        from genforge.data.transforms import make_grid, to_uint8

        make_grid(to_uint8(genforge.load(tmp).generate(n=64, seed=0))).save(tmp / "samples.png")
    rows = [json.loads(x) for x in (src / "metrics.jsonl").read_text().splitlines() if x.strip()]
    notes = {"train_minutes": round(max(r["time"] for r in rows) / 60, 1)}
    if text_task:  # the run's final evaluation on its held-out text
        final = next(r for r in reversed(rows) if any(k in r for k in ("val_bpc", "bleu")))
        notes["held_out"] = {k: v for k, v in final.items() if k not in ("step", "time")}
    elif cfg["task"] == "classify":
        notes["test_accuracy"] = next(r["test_accuracy"] for r in reversed(rows) if "test_accuracy" in r)
    else:
        rep = fid_for_run(str(tmp), n=args.n, feature_net=args.feature_net)
        notes["fid"] = {k: rep[k] for k in ("metric", "fid", "kid_mean", "precision", "recall", "n_real",
                                            "n_fake", "split", "class_accuracy") if k in rep}
        if "sampler" in rep:
            notes["fid"].update(sampler=rep["sampler"], steps=rep["steps"])
    cfg["notes"] = {**cfg.get("notes", {}), **notes}
    atomic_write_json(tmp / "config.json", cfg)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(json.dumps({"shipped": str(dst), **notes}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
