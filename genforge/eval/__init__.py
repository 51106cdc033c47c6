"""Sample-quality metrics: FID / KID / precision-recall over pluggable feature nets.

Importing this package registers the feature nets ("classifier", "inception") in
``genforge.registry.FEATURE_NETS``.
"""
from __future__ import annotations

from typing import Any

from .fid import (
    ClassifierFeatures,
    compute_metrics,
    feature_stats,
    fid_from_features,
    frechet_distance,
    kid,
    precision_recall,
)
from .inception import FIDInceptionV3, InceptionFeatures


def fid_report(real_feats: Any, fake_feats: Any, feature_net_name: str, **info: Any) -> dict:
    """JSON-able FID/KID/PR record; the metric is named FID-<feature net> so nobody reads a
    classifier-feature FID as the standard Inception one."""
    m = compute_metrics(real_feats, fake_feats)
    return {
        "metric": f"FID-{feature_net_name}",
        "fid": float(m["fid"]),
        "kid_mean": float(m["kid_mean"]),
        "kid_std": float(m["kid_std"]),
        "precision": float(m["precision"]),
        "recall": float(m["recall"]),
        "n_real": int(m["n_real"]),
        "n_fake": int(m["n_fake"]),
        "feature_net": feature_net_name,
        **info,
    }


__all__ = [
    "ClassifierFeatures",
    "FIDInceptionV3",
    "InceptionFeatures",
    "compute_metrics",
    "feature_stats",
    "fid_from_features",
    "fid_report",
    "frechet_distance",
    "kid",
    "precision_recall",
]
