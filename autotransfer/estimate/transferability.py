"""Label-aware transferability scores of final-layer features: LogME (and over chance), LEEP, NLEEP, H-score."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from autotransfer.core.errors import InvalidValueError

__all__ = [
    "logme",
    "logme_evidence",
    "logme_chance",
    "logme_over_chance",
    "reference_rows",
    "leep",
    "nleep",
    "gmm_posteriors",
    "h_score",
    "TRANSFER_REF_IMAGES",
    "NLEEP_COMPONENTS_PER_CLASS",
    "NLEEP_PCA_VARIANCE",
]

#: Images on which ``logme_over_chance`` is measured (a stratified, seeded subsample when the
#: target has more). LogME per sample grows with n (its Occam term is spread over more
#: samples: +0.05 to +0.20 from 100 to 300 images on the benchmark targets), so a fixed n keeps
#: the signal comparable across target sizes; 300 is the larger size at which it was
#: calibrated against measured transfer gains (benchmarks/RESULTS.md, "Estimator follow-ups
#: (session 2)").
TRANSFER_REF_IMAGES = 300


def _as_features(F, name: str = "F") -> np.ndarray:
    if hasattr(F, "detach"):
        F = F.detach().cpu().numpy()
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2:
        raise InvalidValueError(f"{name} must be a 2-d (n, d) array, but got shape {F.shape}")
    if not np.all(np.isfinite(F)):
        raise InvalidValueError(f"{name} contains NaN or infinite values (shape {F.shape})")
    return F


def _as_labels(y, n: int, name: str = "F") -> tuple[np.ndarray, int]:
    """``y`` as ``(n,)`` int codes ``0..C-1`` (any label values) and ``C >= 2``."""
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise InvalidValueError(f"y must have shape ({n},) to match {name}, but got shape {y.shape}")
    classes, codes = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise InvalidValueError(f"y needs at least 2 classes, but got {classes.size} ({classes.tolist()!r})")
    return codes.reshape(-1), int(classes.size)


def logme_evidence(
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


def _spectrum(F: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero singular values ``σ`` ``(k,)`` of ``F`` ``(n, d)`` and ``Uᵀ targets`` ``(k, C)``.

    From the eigendecomposition of the smaller Gram matrix, ``FFᵀ = U diag(σ²) Uᵀ`` when
    ``n <= d`` (else ``FᵀF = V diag(σ²) Vᵀ`` and ``Uᵀ t = diag(1/σ) Vᵀ Fᵀ t``): 4x cheaper than a
    thin SVD of 1,000 x 1,280 features. Eigenvalues below ``max(n, d) eps`` of the largest
    (the Gram's rounding level) count as zero; such directions change LogME by ``~σ²/(α/β)``,
    far below its 1e-3 agreement with the reference implementation.
    """
    n, d = F.shape
    gram = F @ F.T if n <= d else F.T @ F
    s, vectors = np.linalg.eigh(gram)
    keep = s > s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    s, vectors = s[keep], vectors[:, keep]
    sigma = np.sqrt(s)
    if n <= d:
        return sigma, vectors.T @ targets
    return sigma, (vectors.T @ (F.T @ targets)) / sigma[:, None]


def logme(F, y, *, max_iter: int = 100, tol: float = 1e-6) -> float:
    """LogME (You et al., ICML 2021): mean over classes of the maximised log evidence / n.

    For each class ``c`` the one-hot target ``1[y = c]`` is regressed on the features by
    Bayesian linear regression; its log marginal evidence is maximised over the prior and
    noise precisions (α, β) by MacKay's fixed point (see ``logme_evidence``), divided by
    n, and averaged over classes. One spectrum of F serves every class (``_spectrum``). The reference
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
    targets = (codes[:, None] == np.arange(n_classes)[None, :]).astype(np.float64)  # (n, C)
    sigma, projected = _spectrum(F, targets)
    evidences = [
        logme_evidence(projected[:, c], float(counts), sigma, n, d, max_iter=max_iter, tol=tol) / n
        for c, counts in enumerate(targets.sum(0))
    ]
    return float(np.mean(evidences))


def logme_chance(y) -> float:
    """LogME of features that carry no label information, in closed form: ``(n,)`` labels -> float.

    With class proportions ``p_c``, the best a feature-free Gaussian model of the one-hot target
    ``1[y = c]`` can do is its own mean and variance ``p_c (1 - p_c)``: a log likelihood per
    sample of ``-1/2 (1 + ln(2π p_c (1 - p_c)))``. Its mean over classes is the level LogME falls
    to for uninformative features (a constant feature reaches it up to an ``O(log n / n)``
    Occam term). It depends only on the class count and balance: -0.21 for 10 balanced classes,
    -0.50 for 5, -0.73 for 2 (-0.61 for a 27/73% split).
    """
    y = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
    if y.ndim != 1:
        raise InvalidValueError(f"y must be a 1-d array of labels, but got shape {y.shape}")
    codes, _ = _as_labels(y, y.shape[0], "y")
    p = np.bincount(codes) / codes.size
    return float(np.mean(-0.5 * (1.0 + np.log(2.0 * np.pi * p * (1.0 - p)))))


def logme_over_chance(F, y, *, max_images: int = TRANSFER_REF_IMAGES, seed: int = 0) -> tuple[float, int]:
    """LogME minus its chance level (``logme_chance``) on at most ``max_images`` images.

    LogME's raw value depends on the task (class count and balance set its floor, n its Occam
    term); over chance, at a fixed number of images, it reads as "nats per image the features
    explain beyond the class frequencies", comparable across targets. Above ``max_images`` a
    stratified, seeded subsample (``autotransfer.data.sampling.allocate``) is used.

    Args:
        F: ``(n, d)`` features (numpy or torch).
        y: ``(n,)`` class labels (any values, at least 2 distinct).
        max_images: images used (the calibration size, ``TRANSFER_REF_IMAGES``).
        seed: seeds the subsample.

    Returns:
        ``(LogME - chance, images used)``.
    """
    F = _as_features(F)
    codes, n_classes = _as_labels(y, F.shape[0])
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 2 * n_classes:
        raise InvalidValueError(
            f"max_images must be an integer >= 2 x classes ({2 * n_classes}), but got {max_images!r}"
        )
    if F.shape[0] > max_images:
        rows = reference_rows(codes, int(max_images), seed)
        F, codes = F[rows], codes[rows]
    return logme(F, codes) - logme_chance(codes), int(F.shape[0])


def reference_rows(y, max_images: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices ``(min(n, max_images),)`` of a stratified, seeded subsample of ``(n,)``
    labels (``autotransfer.data.sampling.allocate`` per class): the images ``logme_over_chance``
    (and the estimator's NLEEP) are measured on."""
    from autotransfer.data.sampling import allocate

    y = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
    if y.ndim != 1:
        raise InvalidValueError(f"y must be a 1-d array of labels, but got shape {y.shape}")
    _, codes = np.unique(y, return_inverse=True)
    codes = codes.reshape(-1)
    if codes.size <= max_images:
        return np.arange(codes.size)
    rng = np.random.default_rng(seed)
    counts = np.bincount(codes)
    take = allocate(counts, int(max_images), seed)
    return np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(codes == c), size=int(k), replace=False) for c, k in enumerate(take) if k]
        )
    )


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
        raise InvalidValueError(
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


#: Gaussian components per target class in NLEEP (Li et al. 2021: "five times the number of
#: target classes").
NLEEP_COMPONENTS_PER_CLASS = 5
#: Fraction of the feature variance the PCA keeps before the mixture is fitted (the paper: 80%).
NLEEP_PCA_VARIANCE = 0.8


def gmm_posteriors(F, n_components: int, *, pca_variance: float = NLEEP_PCA_VARIANCE, seed: int = 0) -> np.ndarray:
    """Posteriors ``P(z | x)`` ``(n, K)`` of a Gaussian mixture fitted on the PCA of ``F`` ``(n, d)``.

    scikit-learn's ``PCA(n_components=pca_variance)`` keeps the fewest components that explain
    that fraction of the variance (``pca_variance = 1``: all of them); ``GaussianMixture`` with
    ``n_components`` full-covariance components (its defaults: k-means initialisation, one
    init, ``reg_covar = 1e-6``) is fitted on the projection with ``random_state=seed``, and its
    ``predict_proba`` returned. Deterministic for a given seed.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    F = _as_features(F)
    n = F.shape[0]
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or not 1 <= n_components <= n:
        raise InvalidValueError(f"n_components must be an integer in [1, {n}] (the images), but got {n_components!r}")
    if isinstance(pca_variance, bool) or not isinstance(pca_variance, (int, float)) or not 0.0 < pca_variance <= 1.0:
        raise InvalidValueError(f"pca_variance must be a fraction in (0, 1], but got {pca_variance!r}")
    if float(np.ptp(F, axis=0).max(initial=0.0)) == 0.0:
        raise InvalidValueError(f"F has no variance (all {n} rows are equal): a mixture cannot be fitted")
    keep: float | None = None if pca_variance >= 1.0 else float(pca_variance)
    Z = PCA(n_components=keep, svd_solver="full", random_state=seed).fit_transform(F)
    try:
        gmm = GaussianMixture(n_components=int(n_components), random_state=seed).fit(Z)
    except ValueError as err:  # sklearn: a component's covariance is ill-defined
        raise InvalidValueError(
            f"the Gaussian mixture of {n_components} components could not be fitted on {n} x {Z.shape[1]} "
            f"PCA features ({err}); use fewer components"
        ) from err
    return np.asarray(gmm.predict_proba(Z), dtype=np.float64)


def nleep(
    F,
    y,
    *,
    components_per_class: int = NLEEP_COMPONENTS_PER_CLASS,
    pca_variance: float = NLEEP_PCA_VARIANCE,
    seed: int = 0,
) -> float:
    """NLEEP (Li et al., "Ranking Neural Checkpoints", CVPR 2021): LEEP with a Gaussian mixture
    of the features standing in for the source head.

    The features are reduced by PCA to ``pca_variance`` of their variance, a Gaussian mixture of
    ``K = components_per_class x C`` components (at most n) is fitted on them, and its component
    posteriors ``P(z | x_i)`` take the place of the source-class probabilities ``θ_iz`` in LEEP
    (``leep``): ``NLEEP = 1/n Σ_i log Σ_z P(y_i | z) P(z | x_i)``. It needs no source head, so
    it scores any model, and ranks checkpoints better than LEEP and LogME (SFDA, ECCV 2022:
    mean weighted Kendall τ 0.61 against 0.41 and 0.51 over 11 models x 11 datasets). Higher is
    better; NLEEP <= 0, and 0 when every component holds one class. Features without variance
    (identical rows) get the mean log class frequency, the level of uninformative features.

    Args:
        F: ``(n, d)`` features (numpy or torch).
        y: ``(n,)`` class labels (any values, at least 2 distinct).
        components_per_class: mixture components per target class (the paper's 5).
        pca_variance: fraction of the variance the PCA keeps (the paper's 0.8).
        seed: seeds the PCA solver and the mixture's initialisation.

    Returns:
        NLEEP, a float <= 0.
    """
    F = _as_features(F)
    _, n_classes = _as_labels(y, F.shape[0])
    if (
        isinstance(components_per_class, bool)
        or not isinstance(components_per_class, (int, np.integer))
        or components_per_class < 1
    ):
        raise InvalidValueError(f"components_per_class must be an integer >= 1, but got {components_per_class!r}")
    if float(np.ptp(F, axis=0).max(initial=0.0)) == 0.0:
        # identical rows: every mixture gives every image the same posteriors, so LEEP reduces
        # to the mean log class frequency, its level for features without label information
        return leep(np.ones((F.shape[0], 1)), y)
    k = min(int(components_per_class) * n_classes, F.shape[0])
    return leep(gmm_posteriors(F, k, pca_variance=pca_variance, seed=seed), y)


def _ledoit_wolf(sq_norms: np.ndarray, scatter_fro2: float, n: int, d: int) -> tuple[float, float]:
    """Ledoit-Wolf shrinkage ``a`` and target scale ``mu`` of centred ``(n, d)`` features.

    The same estimate as ``sklearn.covariance.ledoit_wolf_shrinkage(F, assume_centered=True)``
    (whose shrunk covariance is ``(1 - a) FᵀF/n + a mu I``, ``mu = tr(FᵀF)/(n d)``), written with
    the only two data terms it needs, so it costs no ``d x d`` product when ``n < d``:
    ``sq_norms`` ``(n,)`` the squared row norms ``|f_k|²`` and ``scatter_fro2 = |FᵀF|_F² = |FFᵀ|_F²``.
    """
    if d == 1:  # one feature: any shrinkage gives the same estimate (sklearn returns 0)
        return 0.0, float(sq_norms.sum()) / n
    trace = float(sq_norms.sum()) / n  # tr(S), S = FᵀF / n
    mu = trace / d
    delta_ = scatter_fro2 / n**2  # |S|_F²
    beta = (float(np.sum(sq_norms**2)) / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d  # |S - mu I|_F² / d
    beta = min(beta, delta)
    return (0.0 if beta == 0 else beta / delta), mu


def h_score(F, y, *, shrinkage: bool = True) -> float:
    """H-score (Bao et al., ICIP 2019): ``tr(cov(F)⁻¹ cov(E[F | y]))``.

    ``cov(E[F | y])`` is the covariance of each sample's class-mean feature. With
    ``shrinkage`` the feature covariance is Ledoit-Wolf shrunk (the estimate of scikit-learn's
    ``LedoitWolf``) before the inverse, as in the regularised H-score of Ibrahim et al. (ICLR
    2023); the inverse is a Hermitian pseudo-inverse (cut-off ``d eps`` of the largest
    eigenvalue, numpy's default), so constant features (zero variance) give a finite score.
    Higher is better; at most ``min(d, C - 1)`` without shrinkage.

    Computed without any ``d x d`` matrix when ``n < d``: with centred ``F``, ``B = Y D^-1/2``
    (``(n, C)`` class indicators over the square roots of the class counts) and
    ``cov(F) = b FᵀF + c I`` (``b = (1 - a)/n``, ``c = a mu``; ``a = 0`` without shrinkage),
    ``cov(E[F | y]) = FᵀB BᵀF / n`` and the push-through identity give

        ``H = tr(Bᵀ K (b K + c I)⁻¹ B) / n``, ``K = F Fᵀ`` (``n x n``) when ``n < d``,
        ``H = tr(BᵀF (b FᵀF + c I)⁻¹ FᵀB) / n`` (``d x d``) otherwise:

    a Cholesky solve when ``c > 0``, an eigendecomposition (pseudo-inverse) when ``c = 0``.
    1,000 x 1,280 features: 0.2 s instead of 5.6 s for the ``d x d`` form (one thread;
    benchmarks/RESULTS.md, "Estimator follow-ups (session 2)").

    Args:
        F: ``(n, d)`` features (numpy or torch).
        y: ``(n,)`` class labels (any values, at least 2 distinct).
        shrinkage: Ledoit-Wolf shrinkage of ``cov(F)`` (recommended when n is not >> d).

    Returns:
        H-score, a float >= 0.
    """
    F = _as_features(F)
    codes, n_classes = _as_labels(y, F.shape[0])
    n, d = F.shape
    F = F - F.mean(0)
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    B = np.zeros((n, n_classes))
    B[np.arange(n), codes] = 1.0 / np.sqrt(counts[codes])
    dual = n < d
    gram = F @ F.T if dual else F.T @ F  # the smaller of FFᵀ (n x n) and FᵀF (d x d)
    R = B if dual else F.T @ B  # (n, C) or (d, C)
    if shrinkage:
        a, mu = _ledoit_wolf(np.einsum("ij,ij->i", F, F), float(np.sum(gram * gram)), n, d)
    else:
        a, mu = 0.0, 0.0
    b, c = (1.0 - a) / n, a * mu
    cutoff = d * np.finfo(np.float64).eps  # numpy pinv's default for the d x d cov(F)
    if c > 0.0:
        system = b * gram
        system.flat[:: system.shape[0] + 1] += c
        try:
            X = scipy.linalg.cho_solve(scipy.linalg.cho_factor(system, lower=True), R)
        except np.linalg.LinAlgError:
            X = None
        if X is not None and c > cutoff * (b * float(np.trace(gram)) + c):  # well conditioned: no cut-off
            value = float(np.sum((gram @ R if dual else R) * X)) / n
            return max(0.0, value)
    lam, U = np.linalg.eigh(gram)
    lam = np.clip(lam, 0.0, None)
    eig = b * lam + c  # eigenvalues of cov(F) on the span of the Gram's eigenvectors
    keep = eig > cutoff * eig.max(initial=0.0)
    if not keep.any():
        return 0.0
    proj = np.sum((U[:, keep].T @ R) ** 2, axis=1)  # |u_iᵀ R|²
    weight = (lam[keep] if dual else 1.0) / eig[keep]
    return float(max(0.0, np.sum(weight * proj) / n))
