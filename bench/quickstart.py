"""The README's own-images quickstart, timed as a new user runs it: a folder of colour pictures, then
`genforge train quickstart data.path=FOLDER --out RUN` as a separate process, the way the README says.

    python bench/quickstart.py [--images 450] [--size 64] [--steps 1000] [--threads 2] [--keep DIR]

The folder holds ``--images`` PNGs of one or two small shapes (``--size`` px, rendered by
genforge.data.shapes, a third on coloured backgrounds), standing in for a user's own pictures.
Reported: wall seconds from start to the finished run (data loading, training, the ten sample grids
and checkpoints included), the seconds until the first sample grid was on disk, training steps/s
(median of the trainer's own log), the last loss, and the grid files written. Look at the grids
(``--keep DIR`` keeps the run): the numbers say how long, the pictures say whether it learned.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from genforge.data.shapes import render, scene_for_item  # noqa: E402


def make_folder(folder: Path, n: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        render(scene_for_item(i, seed="quickstart", max_objects=2), size).save(folder / f"pic_{i:04d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=450)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the training process")
    ap.add_argument("--keep", type=Path, default=None, help="keep the folder and the run here")
    ap.add_argument("--name", default="quickstart")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="gf_quickstart_"))
    pictures, run = root / "pictures", root / "run"
    make_folder(pictures, args.images, args.size)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "genforge.cli", "train", "quickstart", f"data.path={pictures}",
           f"train.steps={args.steps}", "--out", str(run)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_grid = None
    while proc.poll() is None:
        if first_grid is None and any((run / "samples").glob("step_*.png")):
            first_grid = time.perf_counter() - start
        time.sleep(0.5)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"quickstart failed (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["it_per_s"] for r in rows if "it_per_s" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    grids = sorted(p.name for p in (run / "samples").glob("step_*.png"))
    save(args.name, {"images": args.images, "image_px": args.size, "steps": args.steps,
                     "threads": args.threads, "wall_s": round(wall, 1),
                     "first_grid_s": None if first_grid is None else round(first_grid, 1),
                     "median_steps_per_s": round(statistics.median(rates), 2) if rates else None,
                     "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                     "grids": grids, "run": str(run) if args.keep else None})


if __name__ == "__main__":
    main()
