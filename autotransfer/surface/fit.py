"""A Gaussian-process fit of each protocol parameter over (log10 N, similarity), and the prior it gives."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from autotransfer.errors import UserError
from autotransfer.prior.quadrant import WIDTHS, Prior
from autotransfer.search.protocol import Protocol, ProtocolSpace
from autotransfer.surface.store import SurfacePoint, SurfaceStore

__all__ = [
    "PARAMS",
    "FEW_POINTS",
    "FEW_POINT_STD",
    "SurfaceModel",
    "SurfacePrediction",
    "surface_prior",
    "prior_from_surface",
]

#: The fitted parameters, in the units the GP sees (the head multiplier in log10).
PARAMS = ("log10_elr", "reinit_frac", "freeze_frac", "log10_head_lr_mult")
#: Below this many points the fit is called unreliable: kernel hyperparameters are fixed and
#: the uncertainty is floored at ``FEW_POINT_STD``.
FEW_POINTS = 4
#: Per-parameter floor on the predicted std with few points: each is the quadrant prior's
#: half-width (``WIDTHS``), so that ``2 * std`` doubles the quadrant search range.
FEW_POINT_STD = {
    "log10_elr": WIDTHS["log10_elr"],
    "reinit_frac": WIDTHS["reinit_frac"],
    "freeze_frac": WIDTHS["freeze_frac"],
    "log10_head_lr_mult": WIDTHS["head_lr_mult"],
}
#: Smallest input spans used to normalise the coordinates (log10 N in decades, similarity):
#: points spread less than this are not stretched over the whole unit square.
MIN_SPAN = {"log10_n": 1.0, "similarity": 0.2}
#: Protocol field and ProtocolSpace width key of each fitted parameter.
_FIELD = {
    "log10_elr": "log10_elr",
    "reinit_frac": "reinit_frac",
    "freeze_frac": "freeze_frac",
    "log10_head_lr_mult": "head_lr_mult",
}


def _target_value(point: SurfacePoint, param: str) -> float:
    p = point.protocol
    if param == "log10_head_lr_mult":
        return math.log10(float(p["head_lr_mult"]))
    return float(p[param])


@dataclass
class SurfacePrediction:
    """The surface's protocol at one point and its uncertainty.

    Attributes:
        protocol: the predicted protocol (fitted parameters from the GPs; the others from the
            nearest measured point).
        std: predictive std per fitted parameter (``PARAMS``), floored with few points.
        n_points: how many measured points the fit used.
        few_points: ``n_points < FEW_POINTS``: the ranges are widened.
        log10_n, similarity: where it was predicted.
        notes: human-readable remarks.
    """

    protocol: Protocol
    std: dict[str, float]
    n_points: int
    few_points: bool
    log10_n: float
    similarity: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol.to_dict(),
            "std": dict(self.std),
            "n_points": self.n_points,
            "few_points": self.few_points,
            "log10_n": self.log10_n,
            "similarity": self.similarity,
            "notes": list(self.notes),
        }


class SurfaceModel:
    """One Gaussian process per protocol parameter over normalised (log10 N, similarity).

    Kernel: ``ConstantKernel * RBF(anisotropic) + WhiteKernel`` with ``normalize_y`` (scikit-learn
    ``GaussianProcessRegressor``). With fewer than ``min_points`` points the kernel
    hyperparameters are not optimised (too few points to estimate them) and the predicted std
    is floored at ``FEW_POINT_STD``.

    Args:
        params: which parameters to fit (subset of ``PARAMS``).
        min_points: below this, ``few_points`` is true.
        length_scale: initial RBF length scale in normalised units (the unit square).
        noise: initial WhiteKernel noise level (in units of the normalised targets).
        n_restarts: optimizer restarts per GP.
        random_state: seed for the restarts.

    Learned attributes: ``points_`` (the records), ``X_`` ``(n, 2)`` raw coordinates,
    ``x_low_``/``x_span_`` ``(2,)`` the normalisation, ``gps_`` (param -> fitted GP),
    ``y_`` (param -> ``(n,)`` targets), ``n_points_``, ``few_points_``, ``model_`` (the source
    model name(s)).
    """

    def __init__(
        self,
        params: Sequence[str] = PARAMS,
        *,
        min_points: int = FEW_POINTS,
        length_scale: float = 0.5,
        noise: float = 0.1,
        n_restarts: int = 2,
        random_state: int = 0,
    ) -> None:
        self.params = tuple(params)
        self.min_points = min_points
        self.length_scale = length_scale
        self.noise = noise
        self.n_restarts = n_restarts
        self.random_state = random_state

    # -- fitting ----------------------------------------------------------------------------
    def _kernel(self):
        return ConstantKernel(1.0, (1e-2, 1e2)) * RBF(
            length_scale=[self.length_scale, self.length_scale], length_scale_bounds=(0.05, 10.0)
        ) + WhiteKernel(self.noise, (1e-5, 1.0))

    def fit(self, records: Sequence[SurfacePoint | dict[str, Any]]) -> "SurfaceModel":
        """Fit one GP per parameter to the records' best protocols; returns ``self``."""
        unknown = [p for p in self.params if p not in PARAMS]
        if unknown or not self.params:
            raise ValueError(f"params must be a non-empty subset of {PARAMS!r}, but got {self.params!r}")
        if self.min_points < 1:
            raise ValueError(f"min_points must be >= 1, but got {self.min_points!r}")
        points = [r if isinstance(r, SurfacePoint) else SurfacePoint.from_dict(r) for r in records]
        if not points:
            raise UserError("the surface has no points yet: run `autotransfer surface` (a sweep) first")
        X = np.array([[p.log10_n, p.similarity] for p in points], dtype=float)
        low = X.min(axis=0)
        span = np.maximum(X.max(axis=0) - low, [MIN_SPAN["log10_n"], MIN_SPAN["similarity"]])
        centre = (X.max(axis=0) + low) / 2
        self.x_low_ = centre - span / 2
        self.x_span_ = span
        self.points_ = points
        self.X_ = X
        self.n_points_ = len(points)
        self.few_points_ = len(points) < self.min_points
        self.model_ = sorted({p.model for p in points})
        Z = self._normalise(X)
        self.gps_: dict[str, GaussianProcessRegressor] = {}
        self.y_: dict[str, np.ndarray] = {}
        for param in self.params:
            y = np.array([_target_value(p, param) for p in points], dtype=float)
            gp = GaussianProcessRegressor(
                kernel=self._kernel(),
                normalize_y=True,
                optimizer=None if self.few_points_ else "fmin_l_bfgs_b",
                n_restarts_optimizer=0 if self.few_points_ else self.n_restarts,
                random_state=self.random_state,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gp.fit(Z, y)
            self.gps_[param] = gp
            self.y_[param] = y
        return self

    def _normalise(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=float) - self.x_low_) / self.x_span_

    def _check_fitted(self) -> None:
        if not hasattr(self, "gps_"):
            raise RuntimeError("this SurfaceModel is not fitted yet: call fit(records) first")

    # -- predicting -------------------------------------------------------------------------
    def predict_param(self, param: str, log10_n: np.ndarray, similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of ``param`` at ``(m,)`` coordinates; returns two ``(m,)`` arrays.

        The std is the GP's (no floor); fractions are not clipped here.
        """
        self._check_fitted()
        if param not in self.gps_:
            raise ValueError(f"param must be one of {tuple(self.gps_)!r}, but got {param!r}")
        X = np.column_stack([np.ravel(log10_n), np.ravel(similarity)]).astype(float)
        mean, std = self.gps_[param].predict(self._normalise(X), return_std=True)
        return np.asarray(mean, dtype=float), np.asarray(std, dtype=float)

    def nearest(self, log10_n: float, similarity: float) -> SurfacePoint:
        """The measured point closest in normalised coordinates."""
        self._check_fitted()
        d = np.linalg.norm(self._normalise(self.X_) - self._normalise(np.array([[log10_n, similarity]])), axis=1)
        return self.points_[int(np.argmin(d))]

    def predict(self, log10_n: float, similarity: float) -> SurfacePrediction:
        """The protocol the surface predicts at ``(log10_n, similarity)``, with its uncertainty.

        Fractions are clipped to [0, 1]; parameters the surface does not model (momentum,
        weight decay, ...) come from the nearest measured point's best protocol.
        """
        self._check_fitted()
        if not 0.0 <= similarity <= 1.0:
            raise ValueError(f"similarity must lie in [0, 1], but got {similarity!r}")
        near = self.nearest(log10_n, similarity)
        values = dict(near.protocol)
        std: dict[str, float] = {}
        notes: list[str] = []
        for param in self.params:
            mean, sd = self.predict_param(param, np.array([log10_n]), np.array([similarity]))
            m, s = float(mean[0]), float(sd[0])
            if self.few_points_:
                s = max(s, FEW_POINT_STD[param])
            std[param] = s
            if param == "log10_head_lr_mult":
                values["head_lr_mult"] = 10.0**m
            elif param in ("reinit_frac", "freeze_frac"):
                values[param] = min(max(m, 0.0), 1.0)
            else:
                values[param] = m
        if self.few_points_:
            notes.append(
                f"only {self.n_points_} surface point(s) (< {self.min_points}): kernel not fitted and the"
                " uncertainty floored, so the search ranges are widened"
            )
        inside = self._normalise(np.array([[log10_n, similarity]]))[0]
        if np.any(inside < -0.25) or np.any(inside > 1.25):
            notes.append(
                f"(log10 N {log10_n:.2f}, similarity {similarity:.2f}) lies outside the measured points:"
                " the prediction is an extrapolation"
            )
        notes.append(f"parameters the surface does not model come from the nearest point, study {near.study!r}")
        return SurfacePrediction(
            protocol=Protocol.from_dict(values),
            std=std,
            n_points=self.n_points_,
            few_points=self.few_points_,
            log10_n=float(log10_n),
            similarity=float(similarity),
            notes=notes,
        )


def surface_prior(
    prediction: SurfacePrediction,
    num_groups: int,
    *,
    bounds: ProtocolSpace | None = None,
    quadrant: str = "",
) -> Prior:
    """The prior from a surface prediction: centre = predicted protocol, ranges widened by the std.

    Each fitted parameter's half-width is ``max(WIDTHS[name], 2 * std)`` (the head multiplier in
    decades); the others keep the quadrant prior's ``WIDTHS``. The centre is clipped into
    ``bounds`` (default ``ProtocolSpace()``).
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, but got {num_groups!r}")
    bounds = bounds or ProtocolSpace()
    widths = dict(WIDTHS)
    for param, s in prediction.std.items():
        name = _FIELD[param]
        widths[name] = max(WIDTHS[name], 2.0 * float(s))
    centre = bounds.clip(prediction.protocol)
    space = ProtocolSpace.centred(centre, widths, bounds)
    f, r = centre.integers(num_groups)
    rationale = [
        f"surface prior from {prediction.n_points} recorded studies at log10 N {prediction.log10_n:.2f},"
        f" similarity {prediction.similarity:.2f} (Gaussian process per parameter)",
        *(
            f"{param} = {_shown(centre, param):.3g} ± {prediction.std[param]:.3g} (1 std);"
            f" range half-width {widths[_FIELD[param]]:.3g}"
            for param in prediction.std
        ),
        f"f = {f}, r = {r} of {num_groups} groups",
        *prediction.notes,
    ]
    return Prior(
        centre=centre,
        space=space,
        quadrant=quadrant or "surface",
        rationale=rationale,
        num_groups=num_groups,
        kind="surface",
    )


def _shown(protocol: Protocol, param: str) -> float:
    if param == "log10_head_lr_mult":
        return math.log10(protocol.head_lr_mult)
    return float(getattr(protocol, _FIELD[param]))


def prior_from_surface(
    path: str | Path,
    *,
    model: str,
    log10_n: float,
    similarity: float,
    num_groups: int,
    exclude_targets: Sequence[str] = (),
    quadrant: str = "",
    bounds: ProtocolSpace | None = None,
) -> Prior:
    """Load the store at ``path``, fit the points of ``model`` (minus ``exclude_targets``), and
    return the surface prior at ``(log10_n, similarity)``. Raises ``UserError`` if no point fits."""
    points = [p for p in SurfaceStore(path).load(model=model) if p.target not in set(exclude_targets)]
    if not points:
        raise UserError(
            f"surface {str(path)!r} has no points for model {model!r}: run `autotransfer surface --model"
            f" {model}` first, or use --prior quadrant"
        )
    prediction = SurfaceModel().fit(points).predict(log10_n, similarity)
    return surface_prior(prediction, num_groups, bounds=bounds, quadrant=quadrant)
