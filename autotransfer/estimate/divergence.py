"""Two-sample divergences between feature sets: MMD, debiased Wasserstein (POT), CORAL.

Over 400 lines: three estimators (MMD, debiased Wasserstein, CORAL), each with its calibration and
bias correction; they share the sampling and standardisation code here.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import ot

from autotransfer.core.errors import AutotransferRuntimeError, InvalidValueError

__all__ = [
    "MMDResult",
    "mmd2_unbiased",
    "mmd_permutation_test",
    "median_pairwise_distance",
    "sinkhorn_divergence",
    "emd_debiased",
    "sliced_wasserstein",
    "coral_distance",
]

# Pairwise-distance statistics (median heuristic, cost scale) use at most this many pooled
# points: the median of ~10^6 distances is already stable to a fraction of a percent.
_MEDIAN_MAX_POINTS = 1000


class MMDResult(NamedTuple):
    """Outcome of :func:`mmd_permutation_test`."""

    mmd2: float
    """Unbiased MMD² of the (subsampled) sets."""
    p_value: float
    """``(1 + #{permuted MMD² >= observed}) / (1 + n_permutations)``."""
    bandwidth: float
    """RBF bandwidth σ used, ``k(x, y) = exp(-|x - y|² / (2σ²))``."""


def _as_array(X, name: str) -> np.ndarray:
    """``X`` (numpy or torch, any float/int dtype) as a float64 numpy ``(n, d)`` array."""
    if hasattr(X, "detach"):  # torch.Tensor without importing torch
        X = X.detach().cpu().numpy()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InvalidValueError(f"{name} must be a 2-d (n, d) array, but got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise InvalidValueError(f"{name} contains NaN or infinite values (shape {X.shape})")
    return X


def _check_pair(X, Y, min_points: int = 2) -> tuple[np.ndarray, np.ndarray]:
    X, Y = _as_array(X, "X"), _as_array(Y, "Y")
    if X.shape[1] != Y.shape[1]:
        raise InvalidValueError(
            f"X and Y must have the same number of features, but got shapes {X.shape} and {Y.shape}"
        )
    if X.shape[0] < min_points or Y.shape[0] < min_points:
        raise InvalidValueError(
            f"X and Y need at least {min_points} points each, but got shapes {X.shape} and {Y.shape}"
        )
    return X, Y


def _subsample(X: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    if max_points < 2:
        raise InvalidValueError(f"max_points must be >= 2, but got {max_points!r}")
    if X.shape[0] <= max_points:
        return X
    return X[np.sort(rng.choice(X.shape[0], size=max_points, replace=False))]


def _sq_dists(A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    """``(n, m)`` squared Euclidean distances, float64, clipped at 0 (exact 0 on the diagonal
    when ``B`` is None). Inputs should be centred by the caller to limit cancellation."""
    B_ = A if B is None else B
    D = (A * A).sum(1)[:, None] + (B_ * B_).sum(1)[None, :] - 2.0 * (A @ B_.T)
    np.maximum(D, 0.0, out=D)
    if B is None:
        np.fill_diagonal(D, 0.0)
    return D


def _median_of_sq_dists(D: np.ndarray) -> float:
    """Median Euclidean distance over the off-diagonal pairs of a pooled ``(N, N)`` matrix
    of squared distances, falling back to the mean positive distance, then to 1.0 (all
    points identical), so the result is always a positive finite scale."""
    iu = np.triu_indices(D.shape[0], k=1)
    dist = np.sqrt(D[iu])
    med = float(np.median(dist)) if dist.size else 0.0
    if med > 0.0:
        return med
    positive = dist[dist > 0.0]
    return float(positive.mean()) if positive.size else 1.0


def median_pairwise_distance(X, Y=None, *, max_points: int = _MEDIAN_MAX_POINTS, seed: int = 0) -> float:
    """Median Euclidean distance between distinct points of the pooled sample ``X ∪ Y``.

    Args:
        X: ``(n, d)`` array (numpy or torch).
        Y: optional ``(m, d)`` array, pooled with ``X``.
        max_points: the pooled sample is subsampled (seeded) to this many points first.
        seed: subsampling seed.

    Returns:
        A positive float; when more than half the pairs coincide, the mean positive
        distance; 1.0 when all points are identical (so dividing by it is always safe).
    """
    Z = _as_array(X, "X") if Y is None else np.concatenate(_check_pair(X, Y, min_points=1))
    if Z.shape[0] < 2:
        raise InvalidValueError(f"need at least 2 points, but got shape {Z.shape}")
    Z = _subsample(Z, max_points, np.random.default_rng(seed))
    Z = Z - Z.mean(0)
    return _median_of_sq_dists(_sq_dists(Z))


def _pooled_kernel(X: np.ndarray, Y: np.ndarray, bandwidth: float | None) -> tuple[np.ndarray, float]:
    """RBF kernel matrix of the pooled ``(n + m, d)`` sample and the bandwidth used."""
    Z = np.concatenate([X, Y])
    Z = Z - Z.mean(0)
    D = _sq_dists(Z)
    if bandwidth is None:
        if Z.shape[0] <= _MEDIAN_MAX_POINTS:
            bandwidth = _median_of_sq_dists(D)
        else:
            bandwidth = median_pairwise_distance(Z, max_points=_MEDIAN_MAX_POINTS, seed=0)
    elif not (np.isfinite(bandwidth) and bandwidth > 0):
        raise InvalidValueError(f"bandwidth must be a positive finite float or None, but got {bandwidth!r}")
    K = np.exp(D / (-2.0 * float(bandwidth) ** 2))
    return K, float(bandwidth)


def _mmd2_from_masks(K: np.ndarray, W: np.ndarray, n: int, m: int) -> np.ndarray:
    """Unbiased MMD² for each column of the ``(N, P)`` 0/1 matrix ``W`` (1 = the X side)."""
    diag = np.diag(K)
    V = 1.0 - W
    KW = K @ W
    KV = K @ V
    sxx = (W * KW).sum(0) - diag @ W
    syy = (V * KV).sum(0) - diag @ V
    sxy = (V * KW).sum(0)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (n * m)


def mmd2_unbiased(X, Y, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with an RBF kernel (Gretton et al., JMLR 2012, eq. 3).

    ``k(x, y) = exp(-|x - y|² / (2 σ²))``, σ = ``bandwidth`` or, when None, the median
    pairwise Euclidean distance of the pooled sample (median heuristic; computed on at most
    1,000 pooled points). Memory is ``O((n + m)²)``: subsample large sets first.

    Args:
        X: ``(n, d)`` array (numpy or torch), n >= 2.
        Y: ``(m, d)`` array, m >= 2.
        bandwidth: σ > 0, or None for the median heuristic.

    Returns:
        MMD²_u, which can be slightly negative when the distributions are equal.
    """
    X, Y = _check_pair(X, Y)
    K, _ = _pooled_kernel(X, Y, bandwidth)
    n, m = X.shape[0], Y.shape[0]
    w = np.zeros((n + m, 1))
    w[:n] = 1.0
    return float(_mmd2_from_masks(K, w, n, m)[0])


def mmd_permutation_test(
    X,
    Y,
    *,
    n_permutations: int = 200,
    max_points: int = 500,
    bandwidth: float | None = None,
    seed: int = 0,
) -> MMDResult:
    """Unbiased MMD² with a permutation p-value for H0: X and Y share one distribution.

    Each side is subsampled (seeded) to at most ``max_points``; the pooled kernel matrix is
    computed once and every permutation reuses it (one ``(N, N) @ (N, P)`` product).

    Args:
        X: ``(n, d)`` array (numpy or torch), n >= 2.
        Y: ``(m, d)`` array, m >= 2.
        n_permutations: number of random relabellings, >= 1.
        max_points: cap per side.
        bandwidth: σ of the RBF kernel, or None for the median heuristic (pooled sample).
        seed: seeds subsampling and permutations.

    Returns:
        :class:`MMDResult` ``(mmd2, p_value, bandwidth)``, with
        ``p = (1 + #{perm >= observed}) / (1 + n_permutations)``.
    """
    if int(n_permutations) < 1:
        raise InvalidValueError(f"n_permutations must be >= 1, but got {n_permutations!r}")
    X, Y = _check_pair(X, Y)
    rng = np.random.default_rng(seed)
    X = _subsample(X, max_points, rng)
    Y = _subsample(Y, max_points, rng)
    n, m = X.shape[0], Y.shape[0]
    K, sigma = _pooled_kernel(X, Y, bandwidth)
    W = np.zeros((n + m, int(n_permutations) + 1))
    W[:n, 0] = 1.0
    for j in range(1, W.shape[1]):
        W[rng.permutation(n + m)[:n], j] = 1.0
    stats = _mmd2_from_masks(K, W, n, m)
    observed = stats[0]
    # a relative tolerance so that permutations equal to the observed split count as ">="
    tol = 1e-12 * max(1.0, abs(observed))
    exceed = int(np.sum(stats[1:] >= observed - tol))
    return MMDResult(float(observed), (1.0 + exceed) / (1.0 + n_permutations), sigma)


def _ot_scale(X: np.ndarray, Y: np.ndarray, scale: float | None, seed: int) -> float:
    if scale is None:
        return median_pairwise_distance(X, Y, seed=seed)
    if not (np.isfinite(scale) and scale > 0):
        raise InvalidValueError(f"scale must be a positive finite float or None, but got {scale!r}")
    return float(scale)


def _centre_and_scale(X: np.ndarray, Y: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    mu = np.concatenate([X, Y]).mean(0)
    return (X - mu) / scale, (Y - mu) / scale


def _split_halves(
    X: np.ndarray, Y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint random halves ``X1, X2, Y1, Y2`` of ``k = min(n, m) // 2`` points each."""
    k = min(X.shape[0], Y.shape[0]) // 2
    px, py = rng.permutation(X.shape[0]), rng.permutation(Y.shape[0])
    return X[px[:k]], X[px[k : 2 * k]], Y[py[:k]], Y[py[k : 2 * k]]


def _sinkhorn_cost_checked(a: np.ndarray, b: np.ndarray, reg: float, num_itermax: int) -> float:
    """``<P, M>`` of the entropic plan between uniform weights on ``a`` and ``b``."""
    M = _sq_dists(a, b)
    w_a = np.full(a.shape[0], 1.0 / a.shape[0])
    w_b = np.full(b.shape[0], 1.0 / b.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            P = ot.sinkhorn(
                w_a,
                w_b,
                M,
                reg,
                method="sinkhorn_stabilized",
                numItermax=int(num_itermax),
                stopThr=1e-7,
                warn=True,
            )
        except UserWarning as err:
            raise AutotransferRuntimeError(
                f"Sinkhorn did not converge in num_itermax={num_itermax} iterations at reg={reg} "
                f"({err}); raise num_itermax or reg"
            ) from err
    marginal_error = np.abs(P.sum(1) - w_a).sum() + np.abs(P.sum(0) - w_b).sum()
    if not np.isfinite(marginal_error) or marginal_error > 1e-5:
        raise AutotransferRuntimeError(
            f"Sinkhorn plan misses its marginals by {marginal_error:.2g} at reg={reg}, "
            f"num_itermax={num_itermax}; raise num_itermax or reg"
        )
    return float(np.sum(P * M))


def sinkhorn_divergence(
    X,
    Y,
    *,
    reg: float = 0.05,
    max_points: int = 1000,
    scale: float | None = None,
    num_itermax: int = 10_000,
    seed: int = 0,
) -> float:
    """Entropic OT between X and Y minus a split-half same-domain baseline at equal n.

    ``S = mean(OT(X1, Y2), OT(X2, Y1)) - mean(OT(X1, X2), OT(Y1, Y2))``, where ``X1, X2``
    (``Y1, Y2``) are disjoint random halves of ``k = min(n, m) // 2`` points and ``OT`` is
    the transport cost ``<P, M>`` of POT's ``ot.sinkhorn`` plan (stabilised, squared
    Euclidean cost, uniform weights).

    Why not POT's ``empirical_sinkhorn_divergence``: its self terms ``OT(X, X)`` see a zero
    diagonal, so at small ``reg`` in high dimension they collapse to ~0 while ``OT(X, Y)``
    keeps the full finite-sample bias (measured: 0.96 for a shift whose true W₂² is 0.005
    on this scale). Disjoint halves give every term the same bias, so it cancels.

    The features are first divided by ``scale``, by default the median pairwise distance of
    the pooled sample, so the median cost is ~1: ``reg`` is relative to that (no underflow
    at small reg) and the value is dimensionless (units of scale²). Pass a fixed ``scale``
    (e.g. from the source set) to compare several targets on one scale.

    Args:
        X: ``(n, d)`` array (numpy or torch), n >= 4.
        Y: ``(m, d)`` array, m >= 4.
        reg: entropic regularisation, relative to the normalised cost.
        max_points: each side is subsampled (seeded) to at most this many points.
        scale: feature scale, or None for the pooled median pairwise distance.
        num_itermax: Sinkhorn iterations per OT problem.
        seed: subsampling and split seed.

    Returns:
        ``S >= 0`` (negative estimates, i.e. no detectable difference, are clipped to 0).

    Raises:
        RuntimeError: if Sinkhorn does not reach its marginals within ``num_itermax``.
    """
    if not (np.isfinite(reg) and reg > 0):
        raise InvalidValueError(f"reg must be a positive float, but got {reg!r}")
    X, Y = _check_pair(X, Y, min_points=4)
    rng = np.random.default_rng(seed)
    X = _subsample(X, max_points, rng)
    Y = _subsample(Y, max_points, rng)
    s = _ot_scale(X, Y, scale, seed)
    X1, X2, Y1, Y2 = _split_halves(*_centre_and_scale(X, Y, s), rng)
    xy1, xy2, xx, yy = (
        _sinkhorn_cost_checked(a, b, float(reg), num_itermax) for a, b in ((X1, Y2), (X2, Y1), (X1, X2), (Y1, Y2))
    )
    cross, within = 0.5 * (xy1 + xy2), 0.5 * (xx + yy)
    return max(0.0, cross - within)


def _emd2_checked(a: np.ndarray, b: np.ndarray, num_itermax: int) -> float:
    M = _sq_dists(a, b)
    w_a = np.full(a.shape[0], 1.0 / a.shape[0])
    w_b = np.full(b.shape[0], 1.0 / b.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            cost, log = ot.emd2(w_a, w_b, M, numItermax=int(num_itermax), log=True)
        except UserWarning as err:
            raise AutotransferRuntimeError(
                f"exact OT (ot.emd2) stopped early at num_itermax={num_itermax} ({err}); "
                "raise num_itermax or lower max_points"
            ) from err
    if log.get("warning"):
        raise AutotransferRuntimeError(f"exact OT (ot.emd2) failed at num_itermax={num_itermax}: {log['warning']}")
    return float(cost)


def emd_debiased(
    X,
    Y,
    *,
    max_points: int = 1000,
    scale: float | None = None,
    num_itermax: int = 10_000_000,
    seed: int = 0,
) -> float:
    """Exact W₂² minus a split-half same-domain baseline at equal n.

    High-dimensional W₂² between finite samples is dominated by sample bias (two samples
    of one 512-d Gaussian are far apart), so each side is subsampled (seeded) and split
    into two random halves of ``k = min(n, m) // 2`` points, and

        ``W = mean(W(X1, Y2), W(X2, Y1)) - mean(W(X1, X2), W(Y1, Y2))``

    where every term is an exact ``ot.emd2`` at k vs k points (squared Euclidean cost):
    cross and same-domain terms carry the same bias. Features are divided by ``scale``
    (default: the pooled median pairwise distance), so the value is in units of scale².

    Args:
        X: ``(n, d)`` array (numpy or torch), n >= 4.
        Y: ``(m, d)`` array, m >= 4.
        max_points: each side is subsampled to at most this many points before splitting.
        scale: feature scale, or None for the pooled median pairwise distance.
        num_itermax: network-simplex iterations per problem; reaching it raises.
        seed: subsampling and split seed.

    Returns:
        The debiased W₂², clipped at 0.

    Raises:
        RuntimeError: if ``ot.emd2`` stops at ``num_itermax`` (POT only warns).
    """
    X, Y = _check_pair(X, Y, min_points=4)
    rng = np.random.default_rng(seed)
    X = _subsample(X, max_points, rng)
    Y = _subsample(Y, max_points, rng)
    s = _ot_scale(X, Y, scale, seed)
    Xs, Ys = _centre_and_scale(X, Y, s)
    X1, X2, Y1, Y2 = _split_halves(Xs, Ys, rng)
    cross = 0.5 * (_emd2_checked(X1, Y2, num_itermax) + _emd2_checked(X2, Y1, num_itermax))
    within = 0.5 * (_emd2_checked(X1, X2, num_itermax) + _emd2_checked(Y1, Y2, num_itermax))
    return max(0.0, cross - within)


def sliced_wasserstein(
    X,
    Y,
    *,
    n_projections: int = 256,
    scale: float | None = None,
    seed: int = 0,
) -> float:
    """Sliced W₂² via POT's ``ot.sliced_wasserstein_distance``: cheap for large sets.

    ``SW₂² = E_θ[W₂²(θᵀX, θᵀY)]`` over ``n_projections`` random directions (seeded), on all
    points (no subsampling). Features are divided by ``scale`` (default: the pooled median
    pairwise distance), so the value is in units of scale², like :func:`emd_debiased`.
    Not debiased: its 1-d sampling bias is ``O(1/n)``, small next to full W₂².

    Args:
        X: ``(n, d)`` array (numpy or torch), n >= 2.
        Y: ``(m, d)`` array, m >= 2.
        n_projections: number of random directions.
        scale: feature scale, or None for the pooled median pairwise distance.
        seed: projection seed.

    Returns:
        ``SW₂² >= 0``.
    """
    if int(n_projections) < 1:
        raise InvalidValueError(f"n_projections must be >= 1, but got {n_projections!r}")
    X, Y = _check_pair(X, Y)
    s = _ot_scale(X, Y, scale, seed)
    Xs, Ys = _centre_and_scale(X, Y, s)
    sw = ot.sliced_wasserstein_distance(Xs, Ys, n_projections=int(n_projections), p=2, seed=seed)
    return float(sw) ** 2


def coral_distance(X, Y) -> float:
    """CORAL distance ``|C_X - C_Y|_F² / (4 d²)`` (Sun & Saenko, ECCV-W 2016).

    ``C`` is the unbiased ``(d, d)`` feature covariance. Constant (zero-variance) features
    give zero rows and columns, not NaN. Not scale-free: it scales with the features⁴.

    Args:
        X: ``(n, d)`` array (numpy or torch), n >= 2.
        Y: ``(m, d)`` array, m >= 2.

    Returns:
        The distance, >= 0.
    """
    X, Y = _check_pair(X, Y)
    d = X.shape[1]
    Cx = np.atleast_2d(np.cov(X, rowvar=False))
    Cy = np.atleast_2d(np.cov(Y, rowvar=False))
    return float(np.sum((Cx - Cy) ** 2) / (4.0 * d * d))
