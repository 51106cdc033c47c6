"""FID, KID and precision/recall on feature vectors, plus the genforge-classifier feature net.

The metric functions are pure: feature arrays in, numbers out, float64 throughout, so they can be
checked against hand-computed values. Feature nets only turn uint8 images into those arrays.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GenforgeError
from ..registry import register_feature_net


def _as_f64(feats: Any, what: str = "features") -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().double().numpy()
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2:
        raise GenforgeError(f"{what} must be a 2-D array (n_samples, dim), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise GenforgeError(f"{what} contain NaN or inf; check the feature net and the images fed to it")
    return arr


# ---------------------------------------------------------------------------------------------- FID


def feature_stats(feats: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof=1, as pytorch-fid) of (n, dim) features."""
    x = _as_f64(feats)
    if x.shape[0] < 2:
        raise GenforgeError(f"FID needs at least 2 feature vectors per set, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray,
                        factor1: Optional[np.ndarray] = None) -> float:
    """tr sqrt(sigma1 @ sigma2) for symmetric PSD sigma1, sigma2 without a matrix square root.

    For any A with A A^T = sigma1, sigma1 @ sigma2 has the same non-zero eigenvalues as the
    symmetric PSD matrix A^T sigma2 A, so one symmetric eigenvalue solve (no eigenvectors) gives
    the trace. A is ``factor1`` when the caller has one (centred features, d x n: then the solve is
    only n x n), else the Cholesky factor of whichever sigma is positive definite (cheapest), else
    the symmetric square root from eigh, which also covers two singular sigmas. scipy.linalg.sqrtm of the
    non-symmetric product is ~10-50x slower at 2048 dims.
    """
    a = factor1
    if a is None:
        for s1, s2 in ((sigma1, sigma2), (sigma2, sigma1)):  # tr sqrt(s1 s2) = tr sqrt(s2 s1)
            try:
                a, sigma1, sigma2 = np.linalg.cholesky(s1), s1, s2
                break
            except np.linalg.LinAlgError:
                continue
    if a is None:  # both singular: eigh (with eigenvectors, ~3x the cost of eigvalsh)
        w, v = np.linalg.eigh(sigma1)
        a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = a.T @ sigma2 @ a
    m = (m + m.T) * 0.5  # rounding makes m very slightly asymmetric; eigvalsh reads one triangle
    ev = np.linalg.eigvalsh(m)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def _check_stats(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any):
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise GenforgeError(
            f"FID statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {s1.shape} vs {s2.shape}; both sets must come from the same feature net"
        )
    return mu1, (s1 + s1.T) * 0.5, mu2, (s2 + s2.T) * 0.5


def _frechet(mu1, s1, mu2, s2, factor1: Optional[np.ndarray] = None) -> float:
    diff = mu1 - mu2
    fid = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2, factor1))
    # the exact value is >= 0; rounding can leave a tiny negative for identical statistics
    return max(fid, 0.0)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2)."""
    return _frechet(*_check_stats(mu1, sigma1, mu2, sigma2))


def fid_from_features(feats1: Any, feats2: Any) -> float:
    """FID of two (n, d) feature sets; with fewer samples than dims the trace term is solved in
    n x n (the centred features factor the covariance) instead of d x d."""
    x1, x2 = _as_f64(feats1, "first features"), _as_f64(feats2, "second features")
    if x1.shape[1] != x2.shape[1]:
        raise GenforgeError(f"FID feature dims differ: {x1.shape[1]} vs {x2.shape[1]}")
    if x2.shape[0] < x1.shape[0]:
        x1, x2 = x2, x1  # FID is symmetric; factor the smaller set
    mu1, s1 = feature_stats(x1)
    mu2, s2 = feature_stats(x2)
    factor1 = None
    if x1.shape[0] - 1 < x1.shape[1]:
        factor1 = (x1 - mu1).T / np.sqrt(x1.shape[0] - 1)
    return _frechet(*_check_stats(mu1, s1, mu2, s2), factor1=factor1)


# ---------------------------------------------------------------------------------------------- KID


def polynomial_kernel(x: np.ndarray, y: np.ndarray, *, degree: int = 3,
                      gamma: Optional[float] = None, coef0: float = 1.0) -> np.ndarray:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 estimate from kernel matrices of two equal-size samples (Binkowski et al.)."""
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid(feats1: Any, feats2: Any, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of unbiased MMD^2 over random equal-size subsets.

    Matches torch-fidelity (cubic kernel (x.y/d + 1)^3, subsets drawn without replacement from a
    seeded RandomState) except that subset_size is clipped to the smaller set instead of raising.
    """
    x, y = _as_f64(feats1, "first features"), _as_f64(feats2, "second features")
    if x.shape[1] != y.shape[1]:
        raise GenforgeError(f"KID feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise GenforgeError(f"KID needs at least 2 feature vectors per set, got {x.shape[0]}, {y.shape[0]}")
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        a = x[rng.choice(x.shape[0], m, replace=False)]
        b = y[rng.choice(y.shape[0], m, replace=False)]
        mmds[i] = mmd2_unbiased(polynomial_kernel(a, a, degree=degree), polynomial_kernel(b, b, degree=degree),
                                polynomial_kernel(a, b, degree=degree))
    return float(mmds.mean()), float(mmds.std())


# --------------------------------------------------------------------------------- precision/recall


def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.T) + b_sq[None]
    return d.clamp_(min=0.0)


def _chunk_rows(n_cols: int, budget_bytes: int = 1 << 28) -> int:
    # bound each (rows, n_cols) float64 block to ~256 MB so 10k x 10k (800 MB whole) still fits
    return max(1, budget_bytes // (8 * max(n_cols, 1)))


def knn_radii(feats: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Squared distance from each row to its k-th nearest other row (the sample itself excluded)."""
    n = feats.shape[0]
    sq = (feats * feats).sum(1)
    out = torch.empty(n, dtype=feats.dtype)
    step = _chunk_rows(n)
    for s in range(0, n, step):
        d = _sq_dists(feats[s:s + step], feats, sq)
        idx = torch.arange(d.shape[0])
        d[idx, idx + s] = 0.0  # the self-distance is exactly 0; the expansion can leave rounding
        # the k+1-th smallest including self is the k-th nearest neighbour, as in the reference code
        out[s:s + step] = torch.kthvalue(d, k + 1, dim=1).values
    return out


def precision_recall(real_feats: Any, fake_feats: Any, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    precision: share of fake samples inside the real manifold (union of balls around each real
    sample with radius = distance to its k-th nearest real neighbour); recall: share of real
    samples inside the fake manifold built the same way. Distances are compared squared.
    """
    real = torch.from_numpy(_as_f64(real_feats, "real features"))
    fake = torch.from_numpy(_as_f64(fake_feats, "fake features"))
    if real.shape[1] != fake.shape[1]:
        raise GenforgeError(f"precision/recall feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise GenforgeError(
            f"precision/recall with k={k} needs more than {k} samples per set, "
            f"got {real.shape[0]} real and {fake.shape[0]} fake; use more samples or a smaller k"
        )
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    # one pass over the fake x real distances answers both questions, so it is computed once
    real_sq = (real * real).sum(1)
    fake_in_real = torch.empty(fake.shape[0], dtype=torch.bool)
    real_in_fake = torch.zeros(real.shape[0], dtype=torch.bool)
    step = _chunk_rows(real.shape[0])
    for s in range(0, fake.shape[0], step):
        d = _sq_dists(fake[s:s + step], real, real_sq)
        fake_in_real[s:s + step] = (d <= r_real[None]).any(1)
        real_in_fake |= (d <= r_fake[s:s + step, None]).any(0)
    return float(fake_in_real.double().mean()), float(real_in_fake.double().mean())


def compute_metrics(real_feats: Any, fake_feats: Any, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, pr_k: int = 3, seed: int = 0,
                    with_precision_recall: bool = True) -> dict:
    real = _as_f64(real_feats, "real features")
    fake = _as_f64(fake_feats, "fake features")
    if real.shape[1] != fake.shape[1]:
        raise GenforgeError(f"real and fake feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    out: dict = {"fid": fid_from_features(real, fake)}
    # Subsets as large as the sets would all be the whole set, and their std would be rounding noise:
    # use at most half the smaller set so the subsets differ (MMD^2's estimate is unbiased at any size)
    size = min(kid_subset_size, max(2, min(real.shape[0], fake.shape[0]) // 2))
    out["kid_mean"], out["kid_std"] = kid(real, fake, subsets=kid_subsets, subset_size=size, seed=seed)
    out["kid_subset_size"] = size
    if with_precision_recall:
        out["precision"], out["recall"] = precision_recall(real, fake, k=pr_k)
    out["n_real"], out["n_fake"] = int(real.shape[0]), int(fake.shape[0])
    return out


# ------------------------------------------------------------------------------------- feature nets


def check_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) or (N, H, W) uint8 -> (N, C, H, W) uint8 on CPU; anything else is a clear error."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise GenforgeError(
            f"feature nets take uint8 image tensors (N, C, H, W), got {got}; convert float images in "
            "[-1, 1] with genforge.data.transforms.to_uint8"
        )
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise GenforgeError(f"feature nets take (N, 1|3, H, W) images, got shape {tuple(images.shape)}")
    return images.detach().cpu()


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 1:  # ITU-R 601 luma, the weights PIL's convert("L") uses
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.repeat(1, channels, 1, 1)


@register_feature_net("classifier")
class ClassifierFeatures:
    """Penultimate features of a trained genforge Classifier; callers report FID-<name>."""

    def __init__(self, model: nn.Module, image_size: int = 32, channels: int = 1,
                 name: str = "classifier", class_names: Optional[Sequence[str]] = None):
        if not hasattr(model, "features"):
            raise GenforgeError(f"{type(model).__name__} has no .features(x); pass a genforge Classifier")
        self.model, self.image_size, self.channels, self.name = model, image_size, channels, name
        self.class_names = list(class_names) if class_names else None
        self.dim = int(getattr(model, "feature_dim", 0)) or self._probe_dim()

    def _probe_dim(self) -> int:
        x = torch.zeros(1, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        return int(self.features(x).shape[1])

    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return self._run(images, self.model.features, self.dim, batch_size)

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The classifier's top-1 class index of each uint8 image (same preprocessing as features)."""
        return self._run(images, self.model, 1, batch_size).argmax(1)

    def _run(self, images: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], empty_dim: int,
             batch_size: int) -> torch.Tensor:
        images = check_uint8_images(images)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()  # dropout / batch-norm batch statistics would make features sample-dependent
        out = []
        try:
            with torch.no_grad():
                for s in range(0, images.shape[0], batch_size):
                    x = images[s:s + batch_size].to(device).float() / 127.5 - 1.0  # inverse of to_uint8
                    x = convert_channels(x, self.channels)
                    if x.shape[-2:] != (self.image_size, self.image_size):
                        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          align_corners=False, antialias=True)
                    out.append(fn(x).float().flatten(1).cpu())
        finally:
            self.model.train(was_training)
        if not out:
            return torch.zeros(0, empty_dim)
        return torch.cat(out)
