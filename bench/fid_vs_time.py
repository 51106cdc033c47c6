"""FID-<featurenet> against training wall-clock for a run directory's kept checkpoints.

    python bench/fid_vs_time.py runs/dcgan-fashion --feature-net classifier-fashion -n 1000

Each resume point under train_state/ (the recipe keeps up to 10) is sampled with the same seed and
scored against the same reference images; its wall-clock is the training time logged in
metrics.jsonl at that step. Writes bench/results/fid_vs_time_<run>.json and a PNG plot.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, peak_rss_mb, save  # noqa: E402

import genforge  # noqa: E402
from genforge.data import load_dataset  # noqa: E402
from genforge.data.transforms import to_uint8  # noqa: E402
from genforge.eval import fid_report  # noqa: E402
from genforge.eval.runner import classifier_feature_net  # noqa: E402
from genforge.train.checkpoint import load_weights  # noqa: E402
from genforge.tuning import tune_malloc  # noqa: E402


def plot(points: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot([p["minutes"] for p in points], [p["fid"] for p in points], "o-")
    for p in points:
        ax.annotate(str(p["step"]), (p["minutes"], p["fid"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("training wall-clock (minutes)")
    ax.set_ylabel(points[0]["metric"])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--feature-net", default="classifier-fashion")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (diffusion, DPM-Solver++)")
    ap.add_argument("--name", help="result name (default: the run directory's name)")
    args = ap.parse_args()
    tune_malloc()
    pipe = genforge.load(args.run_dir)
    net = classifier_feature_net(args.feature_net)
    real = net.features(load_dataset(pipe.cfg.data.model_copy(update={"split": "test", "limit": args.n})).images)
    times = {}
    for line in (args.run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        times.setdefault(row["step"], row["time"])
    points = []
    for state in sorted((args.run_dir / "train_state").glob("step_*")):
        step = int(state.name.split("_")[1])
        weights = state / ("ema.safetensors" if (state / "ema.safetensors").exists() else "model.safetensors")
        load_weights(pipe.model, weights)
        fake = to_uint8(pipe.generate(n=args.n, seed=0, steps=args.steps))
        rep = fid_report(real, net.features(fake), net.name)
        points.append({"step": step, "images": step * pipe.cfg.train.batch_size,
                       "minutes": round(times.get(step, 0.0) / 60, 2), "fid": rep["fid"],
                       "kid_mean": rep["kid_mean"], "metric": rep["metric"]})
        print(points[-1], flush=True)
    name = args.name or args.run_dir.name
    png = RESULTS / f"fid_vs_time_{name}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(points, f"{name}: {points[0]['metric']} vs training time (n={args.n})", png)
    save(f"fid_vs_time_{name}", {"run_dir": str(args.run_dir), "n": args.n, "points": points,
                                 "plot": str(png.relative_to(RESULTS.parent.parent)),
                                 "peak_rss_mb": round(peak_rss_mb(), 1)})


if __name__ == "__main__":
    main()
