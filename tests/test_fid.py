"""FID / KID / precision-recall against hand-computed values, and the classifier feature net."""
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from genforge.errors import GenforgeError
from genforge.eval import (
    ClassifierFeatures,
    compute_metrics,
    feature_stats,
    fid_from_features,
    fid_report,
    frechet_distance,
    kid,
    precision_recall,
)
from genforge.eval import fid as fid_mod


def _rng(seed=0):
    return np.random.default_rng(seed)


EPS = np.finfo(np.float64).eps


def _fid_tol(mu1, s1, mu2, s2):
    """Rounding bound of FID = |mu1-mu2|^2 + tr s1 + tr s2 - 2 tr sqrt(s1 s2) for well-separated
    eigenvalues: the terms cancel, so the error scales with their size, not with the result; each of
    the d eigenvalues and sums carries a few dozen roundings (factor, product, solve, sqrt)."""
    d = np.atleast_1d(mu1).shape[0]
    size = np.sum((np.asarray(mu1) - np.asarray(mu2)) ** 2) + 2.0 * (np.trace(np.atleast_2d(s1)) + np.trace(np.atleast_2d(s2)))
    return 64 * d * EPS * size


def _kid_tol(x, y, degree=3):
    """Rounding bound of an unbiased MMD^2: three means of m^2 kernel values that cancel, summed in
    different orders by the vectorised and the hand-written code (worst case ~m^2 eps each)."""
    from genforge.eval.fid import polynomial_kernel

    m = min(len(x), len(y))
    size = sum(np.abs(polynomial_kernel(a, b, degree=degree)).mean() for a, b in ((x, x), (y, y), (x, y), (x, y)))
    return 8 * m * m * EPS * size


# ----------------------------------------------------------------------------------------- FID


def test_feature_stats_matches_numpy_and_takes_tensors():
    x = _rng().standard_normal((50, 4))
    mu, sigma = feature_stats(torch.from_numpy(x).float())
    np.testing.assert_allclose(mu, x.astype(np.float32).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float32), rowvar=False), rtol=1e-4, atol=1e-6)
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    with pytest.raises(GenforgeError):
        feature_stats(np.zeros((1, 4)))


def test_fid_of_a_set_with_itself_is_zero():
    x = _rng().standard_normal((400, 64)) * 3.0 + 1.0
    mu, sigma = feature_stats(x)
    scale = np.trace(sigma)
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-6 * scale
    assert fid_from_features(x, x) < 1e-6 * scale


def test_fid_of_rank_deficient_set_with_itself_is_zero():
    # fewer samples than dims: singular covariance takes the eigh route instead of Cholesky
    x = _rng(1).standard_normal((20, 64))
    mu, sigma = feature_stats(x)
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-6 * np.trace(sigma)
    assert fid_from_features(x, x) < 1e-6 * np.trace(sigma)


def test_fid_from_features_few_samples_matches_independent_routes():
    # n < d: fid_from_features solves the trace term in n x n. Reference: with A = Xc1^T/sqrt(n1-1),
    # B = Xc2^T/sqrt(n2-1), the eigenvalues of s1 s2 = A A^T B B^T are the squared singular values of A^T B
    rng = _rng(12)
    x, y = rng.standard_normal((20, 64)), rng.standard_normal((30, 64)) * 1.5 + 0.3
    (mu1, s1), (mu2, s2) = feature_stats(x), feature_stats(y)
    a, b = (x - mu1).T / np.sqrt(19), (y - mu2).T / np.sqrt(29)
    sv = np.linalg.svd(a.T @ b, compute_uv=False)
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * sv.sum()
    # The bound comes from the conditioning, not from one BLAS's digits: forming the n x n matrix
    # m = A^T s2 A and solving it moves each eigenvalue by at most delta ~ n eps ||A||^2 ||s2|| (Weyl);
    # sqrt turns that into delta / (2 sqrt(lambda)) for a clear eigenvalue but sqrt(delta) for the one
    # the centring makes zero (its computed value is rounding noise, ~1e-15 here, ~1e-8 after sqrt)
    delta = 10 * 20 * np.finfo(float).eps * np.linalg.norm(a, 2) ** 2 * np.linalg.norm(s2, 2)
    tol = 2.0 * sum(min(np.sqrt(delta), delta / (2.0 * s)) if s > 0 else np.sqrt(delta) for s in sv)
    assert tol < 1e-4 * want  # still a real check: ~4e-6 against a value of ~127
    assert fid_from_features(x, y) == pytest.approx(want, abs=tol)
    assert fid_from_features(y, x) == pytest.approx(want, abs=tol)
    # the d x d eigh route loses ~1e-8 per zero eigenvalue (sqrt of rounding noise)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, abs=1e-4)


def test_fid_grows_monotonically_with_noise():
    rng = _rng(2)
    real = rng.standard_normal((2000, 32))
    fids = [fid_from_features(real, real + rng.standard_normal(real.shape) * s)
            for s in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert fids[0] < 1e-9
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.5), (3.0, 0.0, 1.0, 4.0)])
def test_frechet_distance_1d_closed_form(m1, s1, m2, s2):
    want = (m1 - m2) ** 2 + s1 + s2 - 2.0 * math.sqrt(s1 * s2)
    got = frechet_distance([m1], [[s1]], [m2], [[s2]])
    assert got == pytest.approx(want, abs=_fid_tol([m1], [[s1]], [m2], [[s2]]))


def test_frechet_distance_diagonal_closed_form():
    rng = _rng(3)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    d1, d2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    tol = _fid_tol(mu1, np.diag(d1), mu2, np.diag(d2))
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(want, abs=tol)


def test_frechet_distance_commuting_singular_closed_form():
    # sigma1 = Q D1 Q^T, sigma2 = Q D2 Q^T commute, so tr sqrt(s1 s2) = sum sqrt(d1 d2); D1 has zeros
    rng = _rng(4)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    d1 = np.array([2.0, 1.0, 0.5, 0.0, 0.0, 3.0, 0.0, 1.5])
    d2 = rng.uniform(0.2, 2.0, 8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(d1) @ q.T, mu2, q @ np.diag(d2) @ q.T)
    # rounding leaves ~1e-16 eigenvalues where d1 is 0, and their square roots are ~1e-8
    assert got == pytest.approx(want, abs=1e-6)
    # exactly singular diagonal sigma1: Cholesky fails on it and sigma2 is factored instead; on diagonal
    # matrices every eigenvalue is exact, so the zeros stay zeros and the clear-eigenvalue bound holds
    tol = _fid_tol(mu1, np.diag(d1), mu2, np.diag(d2))
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(want, abs=tol)
    assert frechet_distance(mu2, np.diag(d2), mu1, np.diag(d1)) == pytest.approx(want, abs=tol)
    # both singular: the eigh route
    d2[[1, 3]] = 0.0
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    tol = _fid_tol(mu1, np.diag(d1), mu2, np.diag(d2))
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(want, abs=tol)


def test_frechet_distance_matches_scipy_sqrtm_16d():
    rng = _rng(5)
    a, b = rng.standard_normal((16, 40)), rng.standard_normal((16, 40)) * 0.7
    s1, s2 = a @ a.T / 40, b @ b.T / 40 + 0.1 * np.eye(16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    # both covariances are full rank (s2 has a 0.1 ridge, s1 40 samples in 16 dims), so the square roots
    # are well conditioned: the error is a few hundred eps times the terms' size, whatever the BLAS
    scale = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, abs=1e3 * np.finfo(float).eps * scale)


def test_frechet_distance_shape_mismatch_is_genforge_error():
    with pytest.raises(GenforgeError, match="same feature net"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------------------- KID


def _mmd2_hand(x, y, degree=3):
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** degree  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (m * m)


def test_kid_matches_hand_loop():
    rng = _rng(6)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)) + 0.5
    # a subset of all 5 rows is a permutation, and MMD^2 does not depend on order
    mean, std = kid(x, y, subsets=3, subset_size=5)
    tol = _kid_tol(x, y)
    assert mean == pytest.approx(_mmd2_hand(x, y), abs=tol)
    assert std == pytest.approx(0.0, abs=tol)
    # subset_size larger than the sets is clipped, not an error
    assert kid(x, y, subsets=2, subset_size=1000)[0] == pytest.approx(mean, abs=tol)


def test_kid_subsets_are_seeded_and_match_hand_loop():
    rng = _rng(7)
    x, y = rng.standard_normal((12, 4)), rng.standard_normal((9, 4))
    mean, std = kid(x, y, subsets=4, subset_size=6, degree=2, seed=3)
    r = np.random.RandomState(3)
    vals, tols = [], []
    for _ in range(4):
        a, b = x[r.choice(12, 6, replace=False)], y[r.choice(9, 6, replace=False)]
        vals.append(_mmd2_hand(a, b, degree=2))
        tols.append(_kid_tol(a, b, degree=2))
    # each subset's MMD^2 is off by at most its own rounding bound; the mean and the (population) std are
    # both 1-Lipschitz in the largest of those errors, and the std's own sums and sqrt add ~n eps of it
    tol = max(tols) + 8 * len(vals) * EPS * np.std(vals)
    assert mean == pytest.approx(np.mean(vals), abs=tol)
    assert std == pytest.approx(np.std(vals), abs=tol)


def test_kid_zero_for_same_distribution_positive_for_shift():
    rng = _rng(8)
    a, b = rng.standard_normal((600, 16)), rng.standard_normal((600, 16))
    same_mean, same_std = kid(a, b, subsets=20, subset_size=300)
    shift_mean, _ = kid(a, b + 1.0, subsets=20, subset_size=300)
    assert abs(same_mean) < 0.01 and abs(same_mean) < 4 * same_std + 1e-3
    assert shift_mean > 0.1 and shift_mean > 50 * abs(same_mean)


# ------------------------------------------------------------------------------ precision/recall


def _pr_hand(real, fake, k):
    def radii(s):
        return [sorted(np.linalg.norm(s - p, axis=1))[k] for p in s]  # [0] is the point itself

    def covered(q, centres, r):
        return np.mean([any(np.linalg.norm(c - p) <= rc for c, rc in zip(centres, r)) for p in q])

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def test_precision_recall_identical_and_disjoint():
    x = _rng(9).standard_normal((200, 8))
    assert precision_recall(x, x.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 1000.0, k=3) == (0.0, 0.0)


def test_precision_recall_hand_checked_2d():
    # k=1: every real point's ball has radius 1 (unit-square neighbours; the far pair is 1 apart)
    real = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [-5, -5], [-5, -6]], dtype=float)
    # fake radii: 1.118 for the first two (distance to each other), 1 for the far pair
    fake = np.array([[0.5, 0.5], [1.5, 0], [5, 5], [5, 6]], dtype=float)
    p, r = precision_recall(real, fake, k=1)
    assert p == pytest.approx(2 / 4)  # (0.5,0.5) at 0.707 and (1.5,0) at 0.5 of a real point
    assert r == pytest.approx(4 / 6)  # the square is covered by the first two fakes, (-5,-5..-6) is not
    assert (p, r) == pytest.approx(_pr_hand(real, fake, 1))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_brute_force_and_chunking(monkeypatch, k):
    rng = _rng(10)
    real, fake = rng.standard_normal((60, 5)), rng.standard_normal((45, 5)) * 1.3 + 0.4
    want = _pr_hand(real, fake, k)
    assert precision_recall(real, fake, k=k) == pytest.approx(want)
    monkeypatch.setattr(fid_mod, "_chunk_rows", lambda n_cols, budget_bytes=0: 7)
    assert precision_recall(real, fake, k=k) == pytest.approx(want)


def test_precision_recall_needs_more_than_k_samples():
    with pytest.raises(GenforgeError, match="k=3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


# -------------------------------------------------------------------------------------- reports


def test_compute_metrics_and_fid_report_are_json_able():
    rng = _rng(11)
    real, fake = rng.standard_normal((80, 6)), rng.standard_normal((70, 6)) + 0.2
    m = compute_metrics(real, fake, kid_subsets=5)
    assert set(m) == {"fid", "kid_mean", "kid_std", "kid_subset_size", "precision", "recall", "n_real", "n_fake"}
    assert m["fid"] == pytest.approx(fid_from_features(real, fake))
    assert (m["n_real"], m["n_fake"]) == (80, 70)
    rep = fid_report(torch.from_numpy(real), torch.from_numpy(fake), "classifier-digits", seed=0, steps=4)
    assert rep["metric"] == "FID-classifier-digits" and rep["feature_net"] == "classifier-digits"
    assert rep["seed"] == 0 and rep["steps"] == 4 and rep["fid"] == pytest.approx(m["fid"])
    json.dumps(rep)
    with pytest.raises(GenforgeError, match="dims differ"):
        compute_metrics(real, fake[:, :5])


# ------------------------------------------------------------------------- classifier features


def test_classifier_features_preprocess_and_registry():
    from genforge.models.cnn import Classifier
    from genforge.registry import FEATURE_NETS

    assert FEATURE_NETS.get("classifier") is ClassifierFeatures
    torch.manual_seed(0)
    model = Classifier(in_channels=1, image_size=16, width=4, feature_dim=8)
    model.train()
    net = ClassifierFeatures(model, image_size=16, channels=1, name="clf")
    assert net.dim == 8 and net.name == "clf"
    rgb = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    got = net.features(rgb, batch_size=2)
    assert got.shape == (5, 8) and got.dtype == torch.float32
    assert model.training  # restored after the eval-mode pass
    x = rgb.float() / 127.5 - 1.0
    x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    model.eval()
    with torch.no_grad():
        want = model.features(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # grey in, RGB classifier: channel repeat; no resize at the native size
    model3 = Classifier(in_channels=3, image_size=16, width=4, feature_dim=8).eval()
    grey = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    got3 = ClassifierFeatures(model3, image_size=16, channels=3).features(grey)
    with torch.no_grad():
        want3 = model3.features((grey.float() / 127.5 - 1.0).repeat(1, 3, 1, 1))
    torch.testing.assert_close(got3, want3, rtol=1e-5, atol=1e-5)
    with pytest.raises(GenforgeError, match="uint8"):
        net.features(torch.zeros(2, 1, 16, 16))


# ------------------------------------------------------------- class accuracy of conditional generators


def test_class_accuracy_of_a_conditional_generator(tmp_path):
    """eval fid on a class-conditional generator also reports how often the feature-net classifier
    names the asked-for class; checked against the classifier pipeline run on the saved PNG images."""
    import genforge
    from genforge.data.transforms import to_pil_list, to_uint8
    from genforge.eval.runner import fid_for_run
    from serve_helpers import CLASSES, make_run

    cgan = make_run(tmp_path, "cgan", "gan", "cgan", {"z_dim": 16, "width": 8, "d_width": 8, "image_size": 16,
                                                    "channels": 1, "num_classes": 3}, CLASSES)
    clf = make_run(tmp_path, "clf", "classify", "cnn", {"in_channels": 1, "num_classes": 3, "image_size": 16,
                                                       "width": 4, "feature_dim": 16}, CLASSES)
    rep = fid_for_run(str(cgan), feature_net=str(clf), n=30, device="cpu")
    images = to_pil_list(to_uint8(genforge.load(cgan, device="cpu").generate(n=30, seed=0)))
    named = [r[0]["label"] for r in genforge.load(clf, device="cpu")(images, top_k=1)]
    asked = [CLASSES[i % 3] for i in range(30)]
    assert rep["class_accuracy"] == round(sum(a == b for a, b in zip(named, asked)) / 30, 4)
    assert set(rep["class_accuracy_per_class"]) == set(CLASSES)
    for c in CLASSES:
        hits = [a == b for a, b in zip(named, asked) if b == c]
        assert rep["class_accuracy_per_class"][c] == round(sum(hits) / len(hits), 4)
    json.dumps(rep)

    # no score where it would mean nothing: an unconditional generator, or a classifier of other classes
    gan = make_run(tmp_path, "gan", "gan", "dcgan", {"z_dim": 16, "width": 8, "d_width": 8, "image_size": 16,
                                                   "channels": 1})
    assert "class_accuracy" not in fid_for_run(str(gan), feature_net=str(clf), n=30, device="cpu")
    other = make_run(tmp_path, "clf-other", "classify", "cnn", {"in_channels": 1, "num_classes": 3,
                                                               "image_size": 16, "width": 4, "feature_dim": 16},
                     ["a", "b", "c"])
    assert "class_accuracy" not in fid_for_run(str(cgan), feature_net=str(other), n=30, device="cpu")


def test_eval_fid_passes_guidance_to_conditional_diffusion(tmp_path):
    from genforge.eval.runner import fid_for_run
    from serve_helpers import CLASSES, make_run

    # 64 channels in 32 norm groups: with one channel per group (narrower widths) GroupNorm removes the
    # per-channel class embedding of a fresh model and guidance could not change anything
    run = make_run(tmp_path, "cdiff", "diffusion", "diffusion",
                   {"widths": [64, 64], "attention": [False, False], "num_train_timesteps": 50, "image_size": 16,
                    "channels": 1, "num_classes": 3}, CLASSES)
    a = fid_for_run(str(run), n=12, steps=2, device="cpu", data="digits", feature_net="classifier-fashion")
    b = fid_for_run(str(run), n=12, steps=2, device="cpu", data="digits", feature_net="classifier-fashion",
                    guidance=3.0)
    assert a["guidance"] == 1.0 and b["guidance"] == 3.0 and a["fid"] != b["fid"]
