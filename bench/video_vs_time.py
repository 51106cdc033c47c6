"""Motion-verifier score against wall clock, read from a finished (or running) video run's own
progress grids: every ``sample_every`` steps the trainer draws one clip per grid row for fixed test
captions (``samples/prompts.txt``, same seed each time), and this scores each grid's clips with
genforge.eval.motion against those captions, next to the training time of that step in
``metrics.jsonl``. Nothing is sampled again, so it costs seconds; but a grid holds only 8 clips, so
each point moves in steps of 1/8. Needs grids that show every frame (data.frames <= 8).

    python bench/video_vs_time.py RUN_DIR [--name video_vs_time]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from genforge.data.transforms import GRID_PADDING as PAD  # noqa: E402
from genforge.eval.motion import verify_clips  # noqa: E402
from genforge.tasks import Task  # noqa: E402
from genforge.train.checkpoint import read_metrics  # noqa: E402
from genforge.train.trainer import GRID_SCALE as SCALE  # noqa: E402  (how the trainer draws its grids)


def grid_clips(path: Path, rows: int, frames: int, size: int) -> torch.Tensor:
    """(rows, frames, 3, size, size) uint8 clips cut back out of a progress grid."""
    a = np.asarray(Image.open(path).convert("RGB"))
    tile = size * SCALE
    want = (PAD + rows * (tile + PAD), PAD + Task.grid_columns * (tile + PAD))
    if a.shape[:2] != want:
        sys.exit(f"error: {path} is {a.shape[1]}x{a.shape[0]} px, not the {want[1]}x{want[0]} of a grid of "
                 f"{rows} clips x {Task.grid_columns} frames of {size} px")
    clips = torch.zeros(rows, frames, 3, size, size, dtype=torch.uint8)
    for r in range(rows):
        for c in range(frames):
            y, x = PAD + r * (tile + PAD), PAD + c * (tile + PAD)
            clips[r, c] = torch.from_numpy(a[y:y + tile:SCALE, x:x + tile:SCALE].copy()).permute(2, 0, 1)
    return clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", default="video_vs_time")
    args = ap.parse_args()
    cfg = json.loads((args.run / "config.json").read_text())
    frames, size = cfg["data"]["frames"], cfg["data"]["image_size"]
    if cfg["task"] != "video" or frames > Task.grid_columns:
        sys.exit(f"error: {args.run} is not a video run whose grids show all frames (frames <= {Task.grid_columns})")
    prompts = (args.run / "samples" / "prompts.txt").read_text().splitlines()
    times = {row["step"]: row["time"] for row in read_metrics(args.run / "metrics.jsonl")[0] if "time" in row}
    points = []
    for grid in sorted((args.run / "samples").glob("step_*.png")):
        step = int(grid.stem.split("_")[1])
        logged = [k for k in times if k <= step]
        rep = verify_clips(grid_clips(grid, len(prompts), frames, size), prompts)
        point = {"step": step, "minutes": round(times[max(logged)] / 60, 1) if logged else None,
                 "all_correct": rep["all_correct"], "motion": rep["accuracy"]["motion"],
                 "identity_frames": round(rep["identity_frames"], 3),
                 "by_objects": {k: v["all_correct"] for k, v in rep["by_objects"].items()}}
        print(json.dumps(point), flush=True)
        points.append(point)
    save(args.name, {"run": str(args.run), "guidance": cfg["task_params"].get("sample_guidance"),
                     "steps": cfg["task_params"].get("sample_steps"), "prompts": prompts, "points": points})


if __name__ == "__main__":
    main()
