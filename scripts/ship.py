"""Copy a finished run into genforge/assets/NAME as a shipped default, with its measured figures.

    python scripts/ship.py runs/dcgan-fashion [--name dcgan-fashion] [-n 2000] [--fp16]
    python scripts/ship.py runs/tts-joe --name voice-joe --fp16 --vocoder vocoder-joe --notes bench/results/tts.json

Keeps config.json, model.safetensors (fp16 with --fp16), tokenizer.json, phonemes.json, speakers.json,
metrics.jsonl and, for image generators, a 64-image sample grid (no resume state), and records into
config.json's `notes` the FID report (image generators), test accuracy (classifiers) or the run's own
final held-out evaluation (language models: loss, perplexity, bits per character; translators: sacreBLEU
BLEU and chrF; voices: teacher-forced losses and length ratio; video: the motion verifier). ``--notes``
adds a benchmark's JSON (e.g. bench/tts.py's WER, MCD and RTF) under ``notes.bench``. A vocoder or GAN
ships without its discriminators (training only); ``--vocoder NAME`` points a voice at a shipped vocoder.
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

#: task -> the weight-name prefix of its training-only part, left out of a shipped model
TRAINING_ONLY = {"vocoder": "discriminators.", "gan": "discriminator."}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--feature-net")
    ap.add_argument("--fp16", action="store_true", help="store floating-point weights as fp16")
    ap.add_argument("--notes", type=Path, help="a benchmark's JSON to keep under notes.bench")
    ap.add_argument("--vocoder", help="(voices) the shipped vocoder's name, written as task_params.vocoder")
    args = ap.parse_args()
    src, name = args.run_dir, args.name or args.run_dir.name
    dst = ASSETS_DIR / name
    tmp = ASSETS_DIR / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "metrics.jsonl", "tokenizer.json", "phonemes.json",
              "speakers.json"):
        if (src / f).exists():
            shutil.copy2(src / f, tmp / f)
    cfg = json.loads((tmp / "config.json").read_text())
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(tmp / "model.safetensors", "pt") as f:
        metadata = f.metadata()
    weights = load_file(tmp / "model.safetensors")
    training_only = TRAINING_ONLY.get(cfg["task"])
    if training_only:  # discriminators only train the generator, which is all sampling runs
        weights = {k: v for k, v in weights.items() if not k.startswith(training_only)}
        cfg["model"]["params"]["discriminator"] = False
    if args.fp16:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, tmp / "model.safetensors", metadata=metadata)
    if args.vocoder:
        cfg["task_params"]["vocoder"] = f"../{args.vocoder}"
    atomic_write_json(tmp / "config.json", cfg)
    text_task = cfg["task"] in ("lm", "translate")
    own_eval = text_task or cfg["task"] in ("tts", "vocoder", "video")
    if cfg["task"] not in ("classify", "video_classify", "tts", "vocoder", "video") and not text_task:
        # a fresh grid from the shipped weights with today's samplers, not a training-time snapshot
        import genforge
        from genforge.data.transforms import make_grid, to_uint8

        make_grid(to_uint8(genforge.load(tmp).generate(n=64, seed=0))).save(tmp / "samples.png")
    rows = [json.loads(x) for x in (src / "metrics.jsonl").read_text().splitlines() if x.strip()]
    notes = {"train_minutes": round(max(r["time"] for r in rows) / 60, 1)}
    notes["steps"] = max(r["step"] for r in rows)
    if own_eval:  # the run's final evaluation on its held-out data
        final = next((r for r in reversed(rows) if any(k.startswith(("val_", "bleu", "motion_")) for k in r)), None)
        if final is not None:
            notes["held_out"] = {k: v for k, v in final.items() if k not in ("step", "time")}
    elif cfg["task"] == "classify":
        notes["test_accuracy"] = next(r["test_accuracy"] for r in reversed(rows) if "test_accuracy" in r)
    elif cfg["task"] == "video_classify":  # per attribute group: clips whose every word of it is right
        final = next(r for r in reversed(rows) if "test_accuracy" in r)
        notes["test_accuracy"] = {k[len("test_"):]: v for k, v in final.items() if k.startswith("test_")}
    else:
        rep = fid_for_run(str(tmp), n=args.n, feature_net=args.feature_net)
        notes["fid"] = {k: rep[k] for k in ("metric", "fid", "kid_mean", "precision", "recall", "n_real",
                                            "n_fake", "split", "class_accuracy") if k in rep}
        if "sampler" in rep:
            notes["fid"].update(sampler=rep["sampler"], steps=rep["steps"])
    if args.notes:
        notes["bench"] = json.loads(args.notes.read_text())
    cfg["notes"] = {**cfg.get("notes", {}), **notes}
    atomic_write_json(tmp / "config.json", cfg)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(json.dumps({"shipped": str(dst), **notes}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
