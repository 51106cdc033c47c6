"""Copy a finished run into genforge/assets/NAME as a shipped default, with its measured figures.

    python scripts/ship.py runs/dcgan-fashion [--name dcgan-fashion] [-n 2000]

Keeps config.json, model.safetensors, metrics.jsonl and a 64-image sample grid (no resume state), and
records into config.json's `notes` the FID report (generators) or test accuracy (classifiers).
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
    args = ap.parse_args()
    src, name = args.run_dir, args.name or args.run_dir.name
    dst = ASSETS_DIR / name
    tmp = ASSETS_DIR / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "metrics.jsonl"):
        shutil.copy2(src / f, tmp / f)
    cfg = json.loads((tmp / "config.json").read_text())
    if cfg["task"] != "classify":
        # a fresh grid from the shipped weights with today's samplers, not a training-time snapshot
        import genforge
        from genforge.data.transforms import make_grid, to_uint8

        make_grid(to_uint8(genforge.load(tmp).generate(n=64, seed=0))).save(tmp / "samples.png")
    rows = [json.loads(x) for x in (src / "metrics.jsonl").read_text().splitlines() if x.strip()]
    notes = {"train_minutes": round(max(r["time"] for r in rows) / 60, 1)}
    if cfg["task"] == "classify":
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
