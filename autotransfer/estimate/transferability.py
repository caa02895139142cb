"""Label-aware transferability scores of final-layer features: LogME, LEEP, H-score."""
from __future__ import annotations

import numpy as np
from sklearn.covariance import LedoitWolf

__all__ = ["logme", "leep", "h_score"]


def _as_features(F, name: str = "F") -> np.ndarray:
    if hasattr(F, "detach"):
        F = F.detach().cpu().numpy()
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (n, d) array, but got shape {F.shape}")
    if not np.all(np.isfinite(F)):
        raise ValueError(f"{name} contains NaN or infinite values (shape {F.shape})")
    return F


def _as_labels(y, n: int, name: str = "F") -> tuple[np.ndarray, int]:
    """``y`` as ``(n,)`` int codes ``0..C-1`` (any label values) and ``C >= 2``."""
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) to match {name}, but got shape {y.shape}")
    classes, codes = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"y needs at least 2 classes, but got {classes.size} ({classes.tolist()!r})")
    return codes.reshape(-1), int(classes.size)


def _logme_evidence(
    U_t_y: np.ndarray, y_sq: float, sigma: np.ndarray, n: int, d: int, *, max_iter: int, tol: float
) -> float:
    """Maximised log evidence of one regression target (You et al. 2021, Algorithm 1).

    Model: ``y = F w + ε``, ``w ~ N(0, α⁻¹ I_d)``, ``ε ~ N(0, β⁻¹ I_n)``. With the thin SVD
    ``F = U diag(σ) Vᵀ`` (k = rank), ``z = Uᵀ y``, ``s = σ²``, the posterior mean is
    ``m = V (β σ z / (α + β s))`` and

        ``L = d/2 log α + n/2 log β - 1/2 Σ_d log(α + β s) - β/2 |y - F m|² - α/2 |m|²
        - n/2 log 2π``

    where the ``d - k`` zero eigenvalues contribute ``log α`` each. MacKay's fixed point
    ``γ = Σ β s / (α + β s)``, ``α = γ / |m|²``, ``β = (n - γ) / |y - F m|²`` is iterated
    from ``α = β = 1`` until ``α/β`` changes by less than ``tol`` (relative).
    """
    k = sigma.size
    s = sigma**2
    # |y - F m|² = |y|² - |z|² + |z - σ ⊙ (m in V coordinates)|², since U has orthonormal columns
    y_perp = max(y_sq - float(U_t_y @ U_t_y), 0.0)
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        lam = alpha / beta
        gamma = float(np.sum(s / (s + lam)))
        m_v = beta * sigma * U_t_y / (alpha + beta * s)
        m_sq = float(m_v @ m_v)
        res = y_perp + float(np.sum((U_t_y - sigma * m_v) ** 2))
        alpha = gamma / (m_sq + 1e-12)
        beta = (n - gamma) / (res + 1e-12)
        if abs(alpha / beta - lam) <= tol * lam:
            break
    m_v = beta * sigma * U_t_y / (alpha + beta * s)
    m_sq = float(m_v @ m_v)
    res = y_perp + float(np.sum((U_t_y - sigma * m_v) ** 2))
    # d/2 log α - 1/2 Σ_{zero eigenvalues} log α = k/2 log α (exact, also when α is huge);
    # with k = 0 (all-zero features) α is undetermined and drops out
    return (
        (k / 2.0 * np.log(alpha) if k else 0.0)
        + n / 2.0 * np.log(beta)
        - 0.5 * float(np.sum(np.log(alpha + beta * s)))
        - beta / 2.0 * res
        - alpha / 2.0 * m_sq
        - n / 2.0 * np.log(2.0 * np.pi)
    )


def logme(F, y, *, max_iter: int = 100, tol: float = 1e-6) -> float:
    """LogME (You et al., ICML 2021): mean over classes of the maximised log evidence / n.

    For each class ``c`` the one-hot target ``1[y = c]`` is regressed on the features by
    Bayesian linear regression; its log marginal evidence is maximised over the prior and
    noise precisions (α, β) by MacKay's fixed point (see ``_logme_evidence``), divided by
    n, and averaged over classes. One thin SVD of F serves every class. The reference
    implementation stops at a relative change of 1e-2 after at most 11 steps; here it
    iterates to ``tol`` (the values agree to ~1e-3). Features are used as given (no
    centring), as in the reference. Higher is better; typical values lie in [-2, 2].

    Args:
        F: ``(n, d)`` features (numpy or torch).
        y: ``(n,)`` class labels (any values, at least 2 distinct).
        max_iter: fixed-point iterations per class.
        tol: relative tolerance on α/β.

    Returns:
        LogME, a float.
    """
    F = _as_features(F)
    codes, n_classes = _as_labels(y, F.shape[0])
    n, d = F.shape
    U, sigma, _ = np.linalg.svd(F, full_matrices=False)
    keep = sigma > sigma.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    U, sigma = U[:, keep], sigma[keep]
    evidences = []
    for c in range(n_classes):
        target = (codes == c).astype(np.float64)
        evidences.append(
            _logme_evidence(U.T @ target, float(target @ target), sigma, n, d, max_iter=max_iter, tol=tol)
            / n
        )
    return float(np.mean(evidences))


def leep(source_probs, y) -> float:
    """LEEP (Nguyen et al., ICML 2020): log expected empirical prediction of target labels.

    With ``θ = source_probs`` (the SOURCE head's softmax on the target images),
    ``P(y, z) = 1/n Σ_i θ_iz 1[y_i = y]``, ``P(y | z) = P(y, z) / P(z)`` and

        ``LEEP = 1/n Σ_i log Σ_z P(y_i | z) θ_iz``.

    Source classes that receive no probability mass are dropped. Higher is better; LEEP <= 0.

    Args:
        source_probs: ``(n, Z)`` source-class probabilities, rows summing to 1.
        y: ``(n,)`` target labels (any values, at least 2 distinct).

    Returns:
        LEEP, a float <= 0.
    """
    theta = _as_features(source_probs, "source_probs")
    codes, n_classes = _as_labels(y, theta.shape[0], "source_probs")
    if theta.min() < 0.0 or not np.allclose(theta.sum(1), 1.0, atol=1e-3):
        raise ValueError(
            "source_probs must be probabilities (non-negative rows summing to 1); "
            f"got row sums in [{theta.sum(1).min():.4g}, {theta.sum(1).max():.4g}] and minimum "
            f"{theta.min():.4g}: apply a softmax to the source logits"
        )
    theta = theta / theta.sum(1, keepdims=True)
    n = theta.shape[0]
    onehot = np.eye(n_classes)[codes]  # (n, C)
    joint = onehot.T @ theta / n  # (C, Z)
    p_z = joint.sum(0)
    used = p_z > 0.0
    conditional = joint[:, used] / p_z[used]  # P(y | z), (C, Z')
    eep = np.einsum("iz,iz->i", theta[:, used], conditional[codes])
    return float(np.mean(np.log(eep)))


def h_score(F, y, *, shrinkage: bool = True) -> float:
    """H-score (Bao et al., ICIP 2019): ``tr(cov(F)⁻¹ cov(E[F | y]))``.

    ``cov(E[F | y])`` is the covariance of each sample's class-mean feature. With
    ``shrinkage`` the feature covariance is Ledoit-Wolf shrunk (scikit-learn) before the
    inverse, as in the regularised H-score of Ibrahim et al. (ICLR 2023); the inverse is a
    Hermitian pseudo-inverse either way, so constant features (zero variance) give a finite
    score. Higher is better; at most ``min(d, C - 1)`` without shrinkage.

    Args:
        F: ``(n, d)`` features (numpy or torch).
        y: ``(n,)`` class labels (any values, at least 2 distinct).
        shrinkage: Ledoit-Wolf shrinkage of ``cov(F)`` (recommended when n is not >> d).

    Returns:
        H-score, a float >= 0.
    """
    F = _as_features(F)
    codes, n_classes = _as_labels(y, F.shape[0])
    F = F - F.mean(0)
    if shrinkage:
        cov_f = LedoitWolf(assume_centered=True).fit(F).covariance_
    else:
        cov_f = F.T @ F / F.shape[0]
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    class_means = np.zeros((n_classes, F.shape[1]))
    np.add.at(class_means, codes, F)
    class_means /= counts[:, None]
    cov_g = class_means.T @ (class_means * counts[:, None]) / F.shape[0]  # cov of g(x) = E[F | y(x)]
    inv = np.linalg.pinv(cov_f, hermitian=True)
    return float(max(0.0, np.sum(inv * cov_g)))
