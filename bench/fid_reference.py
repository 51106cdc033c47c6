"""The floor of FID-<featurenet>: real training images against real test images, same n.

    python bench/fid_reference.py [--dataset fashion] [--feature-net classifier-fashion] [-n 2000]

A generator's FID is only meaningful next to this number (same feature net, same n).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from genforge.config import DataConfig  # noqa: E402
from genforge.data import load_dataset  # noqa: E402
from genforge.eval import fid_report  # noqa: E402
from genforge.eval.runner import classifier_feature_net  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="fashion")
    ap.add_argument("--feature-net", default="classifier-fashion")
    ap.add_argument("-n", type=int, default=2000)
    args = ap.parse_args()
    net = classifier_feature_net(args.feature_net)
    test = load_dataset(DataConfig(name=args.dataset, split="test", limit=args.n))
    train = load_dataset(DataConfig(name=args.dataset, split="train", limit=args.n))
    rep = fid_report(net.features(test.images), net.features(train.images), net.name,
                     dataset=args.dataset, real="test split", compared="train split")
    save(f"fid_reference_{args.dataset}", rep)


if __name__ == "__main__":
    main()
