"""A Gaussian-process fit of each protocol parameter over (log10 N, similarity), and the prior it gives.

Over 400 lines: the GP fit per parameter and the priors it gives (at coordinates, for a task, from
a prediction) share the fitted model's normalisation.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from autotransfer.core.errors import AutotransferRuntimeError, InvalidValueError, UserError
from autotransfer.core.protocol import SCHEDULES, Protocol, ProtocolSpace, schedule_words
from autotransfer.core.settings import PriorSpec
from autotransfer.prior.quadrant import WIDTHS, Prior, exploring_space, quadrant_prior
from autotransfer.surface.store import SurfacePoint, SurfaceStore, default_surface

if TYPE_CHECKING:
    from autotransfer.estimate.profile import TaskProfile

__all__ = [
    "PARAMS",
    "FEW_POINTS",
    "FEW_POINT_STD",
    "SurfaceModel",
    "SurfacePrediction",
    "prior_from_prediction",
    "prior_at_coordinates",
    "quadrant_values",
    "RESIDUAL_MIN_LENGTH_SCALE",
    "SCHEDULE_VOTERS",
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
#: Shortest RBF length scale of the residual GPs, in normalised units (the measured span is 1).
#: A much shorter RBF fitted to a few dozen scattered points is indistinguishable from white
#: noise, and maximum likelihood then sometimes puts the noise into a rough function (zero white
#: noise, wiggles between the points). Measured on synthetic pure-noise residuals (sd 0.3 in
#: log10 ELR, 30 points on a 6 x 5 grid, 16 seeds; tests/surface/test_store_fit.py builds
#: them): worst-seed mean |prediction - quadrant| 0.19 at a bound of 0.15, 0.11 at 0.25; a smooth
#: correction was recovered as well at either (max error 0.004). A correction to the quadrant
#: rules that changes within a quarter of the measured span is not one a sweep's points can support.
RESIDUAL_MIN_LENGTH_SCALE = 0.25
#: How many measured optima of the nearest recorded studies (one per target) a surface prior
#: enqueues right after its centre. Each study's optimum is one noisy argmax over a flat optimum,
#: and its unfitted fields (BatchNorm mode, layer decay, L2-SP...) are whole protocols that the
#: per-parameter GPs cannot average: a few of them beside the centre give the first trials a
#: portfolio of protocols that won on similar tasks (warm-starting from similar tasks' best
#: configurations, Feurer et al., AAAI 2015).
NEIGHBOURS = 2
#: How many recorded points nearest the task vote on the surface prediction's ``schedule``
#: (``SurfaceModel.schedule_at``). The schedule is categorical, so no GP fits it: each of these
#: points votes for its optimum's schedule with weight ``1 / (d + SCHEDULE_DISTANCE_FLOOR)`` (``d``
#: in normalised coordinates, the measured span being 1; the floor keeps a point at the task's
#: own coordinates from outvoting every other).
SCHEDULE_VOTERS = 5
SCHEDULE_DISTANCE_FLOOR = 0.1
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


def quadrant_values(
    log10_n: float,
    similarity: float,
    excess: Sequence[float] | None,
    num_groups: int,
    *,
    num_classes: int,
    transferability: float | None = None,
) -> dict[str, float]:
    """The quadrant prior centre's value of each fitted parameter (``PARAMS`` units: the head
    multiplier in log10) for one task: the baseline the residual surface is fitted around.

    ``excess``: ``(G,)`` excess divergence per depth group, or ``None``/empty (not measured);
    non-finite values count as 0, as in the surface store. The BN-W2 similarity scale (the
    ``quadrant_prior`` default) is used for every task alike, so the baseline is one consistent
    function of the task's inputs across the points and the query.
    """
    if num_classes < 1:
        raise InvalidValueError(f"num_classes must be >= 1, but got {num_classes!r}")
    profile = [float(v) if math.isfinite(float(v)) else 0.0 for v in excess] if excess else None
    centre = quadrant_prior(
        float(log10_n),
        float(similarity),
        profile,
        int(num_groups),
        num_classes=int(num_classes),
        transferability=transferability,
    ).centre
    return {param: _shown(centre, param) for param in PARAMS}


def _point_baseline(point: SurfacePoint) -> dict[str, float] | None:
    """``quadrant_values`` at a point's own task, or ``None`` when the point lacks the inputs
    (``num_classes`` or ``num_groups`` unknown, or an excess profile of the wrong length)."""
    if point.num_classes < 1 or point.num_groups < 1:
        return None
    if point.excess and len(point.excess) != point.num_groups:
        return None
    return quadrant_values(
        point.log10_n,
        point.similarity,
        point.excess or None,
        point.num_groups,
        num_classes=point.num_classes,
        transferability=point.transferability,
    )


def _latent(gp: GaussianProcessRegressor) -> GaussianProcessRegressor:
    """A view of a fitted GP whose kernel drops the ``WhiteKernel`` term: the same posterior mean
    (the white term adds nothing between distinct inputs) and the std of the fitted function."""
    kernel = gp.kernel_
    if not (hasattr(kernel, "k2") and isinstance(kernel.k2, WhiteKernel)):
        return gp
    latent = copy.copy(gp)
    latent.kernel_ = kernel.k1
    return latent


@dataclass
class SurfacePrediction:
    """The surface's protocol at one point and its uncertainty.

    Attributes:
        protocol: the predicted protocol (fitted parameters from the GPs; the others from the
            nearest measured point).
        std: per fitted parameter (``PARAMS``), the latent std: the uncertainty of the fitted
            function, without the GP's white-noise term (see ``SurfaceModel``); floored at
            ``FEW_POINT_STD`` with few points.
        n_points: how many measured points the fit used.
        few_points: ``n_points < FEW_POINTS``: the ranges are widened.
        log10_n, similarity: where it was predicted.
        notes: human-readable remarks.
        residual: the fitted parameters are the quadrant prior's values (``baseline``) plus a
            GP fitted to the residuals of the quadrant rules; ``False``: the plain GP.
        baseline: the quadrant values at the target (``PARAMS`` units), when ``residual``.
        schedule_votes: each schedule's share of the nearest points' vote that chose
            ``protocol.schedule`` (``SurfaceModel.schedule_at``; sums to 1).
    """

    protocol: Protocol
    std: dict[str, float]
    n_points: int
    few_points: bool
    log10_n: float
    similarity: float
    notes: list[str] = field(default_factory=list)
    residual: bool = False
    baseline: dict[str, float] | None = None
    schedule_votes: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol.to_dict(),
            "std": dict(self.std),
            "n_points": self.n_points,
            "few_points": self.few_points,
            "log10_n": self.log10_n,
            "similarity": self.similarity,
            "notes": list(self.notes),
            "residual": self.residual,
            "baseline": None if self.baseline is None else dict(self.baseline),
            "schedule_votes": dict(self.schedule_votes),
        }


class SurfaceModel:
    """One Gaussian process per protocol parameter over normalised (log10 N, similarity).

    Two fits per parameter:

    - the plain GP: ``ConstantKernel * RBF(anisotropic) + WhiteKernel`` on the measured values
      with ``normalize_y`` (a constant prior mean: the points' average);
    - the residual GP (when every point records ``num_classes`` and ``num_groups``, see
      ``SurfacePoint``): the same kernel form on ``y - q(point)``, where ``q`` is the quadrant
      prior's value at the point's own task (``quadrant_values``), with ``normalize_y=False``,
      so its prior mean is zero: far from the data, or where the residuals are pure noise, the
      prediction returns to the quadrant rules. Its kernel is in target units, scaled per
      parameter by ``s = FEW_POINT_STD`` (the quadrant half-width): amplitude variance
      ``s²`` in ``[1e-4 s², 9 s²]`` (a residual can vanish, or reach 3 half-widths), noise
      ``noise * s²`` in ``[1e-5 s², 4 s²]``; RBF length scales from ``RESIDUAL_MIN_LENGTH_SCALE``.

    ``predict`` uses the residual GP when it was fitted and the caller gives the target's
    quadrant values (``baseline``), else the plain GP (with a note saying why).

    The std it reports is the latent one: the posterior std of the fitted function, with the
    fitted ``WhiteKernel`` noise left out. Each point is the argmax of a few noisy trials over an
    often flat optimum, so the white noise measures how far such argmaxes scatter around the
    optimum, not uncertainty about where to search: counting it would widen every range by the
    scatter even at a measured point. With fewer than ``min_points`` points the kernel
    hyperparameters are not optimised (too few points to estimate them) and ``predict`` floors
    the std at ``FEW_POINT_STD``.

    Args:
        params: which parameters to fit (subset of ``PARAMS``).
        min_points: below this, ``few_points`` is true.
        length_scale: initial RBF length scale in normalised units (the unit square).
        noise: initial WhiteKernel noise level, as a share of the signal variance (normalised
            targets for the plain GP, ``s²`` for the residual GP).
        n_restarts: optimizer restarts per GP.
        random_state: seed for the restarts.
        residual: fit the residual GPs when the points allow it (``False``: plain GPs only).

    Learned attributes: ``points_`` (the records), ``X_`` ``(n, 2)`` raw coordinates,
    ``x_low_``/``x_span_`` ``(2,)`` the normalisation, ``gps_`` (param -> fitted plain GP),
    ``y_`` (param -> ``(n,)`` measured targets), ``residual_`` (whether residual GPs were
    fitted), ``residual_gps_`` (param -> fitted residual GP; empty when not ``residual_``),
    ``baseline_`` (param -> ``(n,)`` quadrant values at the points; empty likewise),
    ``residual_note_`` (why not, when not), ``n_points_``, ``few_points_``, ``model_`` (the
    source model name(s)).
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
        residual: bool = True,
    ) -> None:
        self.params = tuple(params)
        self.min_points = min_points
        self.length_scale = length_scale
        self.noise = noise
        self.n_restarts = n_restarts
        self.random_state = random_state
        self.residual = residual

    # -- fitting ----------------------------------------------------------------------------
    def _kernel(self):
        return ConstantKernel(1.0, (1e-2, 1e2)) * RBF(
            length_scale=[self.length_scale, self.length_scale], length_scale_bounds=(0.05, 10.0)
        ) + WhiteKernel(self.noise, (1e-5, 1.0))

    def _residual_kernel(self, param: str):
        var = FEW_POINT_STD[param] ** 2
        return ConstantKernel(var, (1e-4 * var, 9.0 * var)) * RBF(
            length_scale=[self.length_scale, self.length_scale],
            length_scale_bounds=(RESIDUAL_MIN_LENGTH_SCALE, 10.0),
        ) + WhiteKernel(self.noise * var, (1e-5 * var, 4.0 * var))

    def _gp(self, kernel, Z: np.ndarray, y: np.ndarray, *, normalize_y: bool) -> GaussianProcessRegressor:
        gp = GaussianProcessRegressor(
            kernel=kernel,
            normalize_y=normalize_y,
            optimizer=None if self.few_points_ else "fmin_l_bfgs_b",
            n_restarts_optimizer=0 if self.few_points_ else self.n_restarts,
            random_state=self.random_state,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(Z, y)
        return gp

    def fit(self, records: Sequence[SurfacePoint | dict[str, Any]]) -> "SurfaceModel":
        """Fit the GPs of each parameter to the records' best protocols; returns ``self``."""
        unknown = [p for p in self.params if p not in PARAMS]
        if unknown or not self.params:
            raise InvalidValueError(f"params must be a non-empty subset of {PARAMS!r}, but got {self.params!r}")
        if self.min_points < 1:
            raise InvalidValueError(f"min_points must be >= 1, but got {self.min_points!r}")
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
            self.gps_[param] = self._gp(self._kernel(), Z, y, normalize_y=True)
            self.y_[param] = y
        self.residual_gps_: dict[str, GaussianProcessRegressor] = {}
        self.baseline_: dict[str, np.ndarray] = {}
        self.residual_note_ = ""
        baselines = [_point_baseline(p) for p in points] if self.residual else []
        lacking = [p.study for p, b in zip(points, baselines) if b is None]
        if not self.residual:
            self.residual_note_ = "residual fit switched off (SurfaceModel(residual=False))"
        elif lacking:
            self.residual_note_ = (
                f"{len(lacking)} of {len(points)} surface point(s) lack num_classes/num_groups (e.g. study"
                f" {lacking[0]!r}): fitted a plain GP instead of the residuals of the quadrant rules"
                " (record the studies again, or run benchmarks/backfill_surface_fields.py)"
            )
        else:
            for param in self.params:
                q = np.array([b[param] for b in baselines if b is not None], dtype=float)  # none lacks one
                self.residual_gps_[param] = self._gp(
                    self._residual_kernel(param), Z, self.y_[param] - q, normalize_y=False
                )
                self.baseline_[param] = q
        self.residual_ = bool(self.residual_gps_)
        return self

    def _normalise(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=float) - self.x_low_) / self.x_span_

    def _check_fitted(self) -> None:
        if not hasattr(self, "gps_"):
            raise AutotransferRuntimeError("this SurfaceModel is not fitted yet: call fit(records) first")

    # -- predicting -------------------------------------------------------------------------
    def predict_param(
        self,
        param: str,
        log10_n: np.ndarray,
        similarity: np.ndarray,
        *,
        baseline: np.ndarray | None = None,
        noise: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of ``param`` at ``(m,)`` coordinates; returns two ``(m,)`` arrays.

        With ``baseline`` (``(m,)`` quadrant values of ``param`` at the queries, ``quadrant_values``)
        and a residual fit, the mean is ``baseline`` plus the residual GP; otherwise the plain GP
        (the surface as a function of (log10 N, similarity) alone, which the plots draw). The
        std is the latent one (the fitted function's, without white noise); ``noise=True`` adds
        the fitted noise back (the spread of a new noisy optimum). No floor; fractions are not
        clipped here.
        """
        self._check_fitted()
        if param not in self.gps_:
            raise InvalidValueError(f"param must be one of {tuple(self.gps_)!r}, but got {param!r}")
        X = np.column_stack([np.ravel(log10_n), np.ravel(similarity)]).astype(float)
        use_residual = baseline is not None and self.residual_
        gp = self.residual_gps_[param] if use_residual else self.gps_[param]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Predicted variances smaller than 0": set to 0
            mean, std = (gp if noise else _latent(gp)).predict(self._normalise(X), return_std=True)
        mean = np.asarray(mean, dtype=float)
        if use_residual:
            base = np.broadcast_to(np.asarray(baseline, dtype=float).ravel(), mean.shape)
            mean = mean + base
        return mean, np.asarray(std, dtype=float)

    def nearest(self, log10_n: float, similarity: float) -> SurfacePoint:
        """The measured point closest in normalised coordinates."""
        return self.neighbours(log10_n, similarity, 1)[0]

    def neighbours(self, log10_n: float, similarity: float, k: int) -> list[SurfacePoint]:
        """The ``k`` measured points nearest in normalised coordinates, nearest first, at most one per
        target (its nearest point): the recorded tasks most like this one, each with its own optimum."""
        self._check_fitted()
        if k < 0:
            raise InvalidValueError(f"k must be >= 0, but got {k!r}")
        d = np.linalg.norm(self._normalise(self.X_) - self._normalise(np.array([[log10_n, similarity]])), axis=1)
        chosen: list[SurfacePoint] = []
        seen: set[str] = set()
        for i in np.argsort(d, kind="stable"):
            if len(chosen) == k:
                break
            point = self.points_[int(i)]
            if point.target not in seen:
                seen.add(point.target)
                chosen.append(point)
        return chosen

    def schedule_at(
        self, log10_n: float, similarity: float, k: int = SCHEDULE_VOTERS
    ) -> tuple[str, float, dict[str, float]]:
        """``(schedule, stage_frac, votes)`` the surface predicts at ``(log10_n, similarity)``.

        The ``k`` recorded points nearest in normalised coordinates (every point, not one per
        target) vote for their optimum's schedule, each with weight ``1 / (d +
        SCHEDULE_DISTANCE_FLOOR)``; ``votes`` are the schedules' shares of the weight. The
        schedule with the most weight wins; a tie goes to the first in ``SCHEDULES`` order, so
        to ``one-stage`` whenever it ties. ``stage_frac`` is the weighted mean over the voters
        that chose the winner; for ``one-stage`` (which ignores it) the ``Protocol`` default.
        Points recorded before schedules existed read as ``one-stage``.
        """
        self._check_fitted()
        if k < 1:
            raise InvalidValueError(f"k must be >= 1, but got {k!r}")
        d = np.linalg.norm(self._normalise(self.X_) - self._normalise(np.array([[log10_n, similarity]])), axis=1)
        nearest = [int(i) for i in np.argsort(d, kind="stable")[:k]]
        chosen = [(self.points_[i].best, 1.0 / (float(d[i]) + SCHEDULE_DISTANCE_FLOOR)) for i in nearest]
        total = sum(w for _, w in chosen)
        votes = {s: sum(w for p, w in chosen if p.schedule == s) / total for s in SCHEDULES}
        top = max(votes.values())
        schedule = next(s for s in SCHEDULES if math.isclose(votes[s], top, rel_tol=1e-9, abs_tol=1e-12))
        if schedule == "one-stage":
            return schedule, Protocol().stage_frac, votes
        fracs = [(p.stage_frac, w) for p, w in chosen if p.schedule == schedule]
        return schedule, sum(f * w for f, w in fracs) / sum(w for _, w in fracs), votes

    def predict(
        self, log10_n: float, similarity: float, *, baseline: dict[str, float] | None = None
    ) -> SurfacePrediction:
        """The protocol the surface predicts at ``(log10_n, similarity)``, with its uncertainty.

        ``baseline``: the quadrant values of the target task (``quadrant_values``: param ->
        value in ``PARAMS`` units); with it and a residual fit, each parameter is the quadrant
        value plus the residual GP; without either, the plain GP (noted). Fractions are clipped
        to [0, 1]; the schedule and its ``stage_frac`` come from a vote of the nearest points
        (``schedule_at``); the other parameters the surface does not model (momentum, weight
        decay, ...) from the nearest measured point's best protocol.
        """
        self._check_fitted()
        if not 0.0 <= similarity <= 1.0:
            raise InvalidValueError(f"similarity must lie in [0, 1], but got {similarity!r}")
        if baseline is not None:
            missing = [p for p in self.params if p not in baseline]
            if missing:
                raise InvalidValueError(f"baseline must give every fitted parameter, but lacks {missing!r}")
        used = baseline if self.residual_ else None  # the baseline the residual fit adds to
        residual = used is not None
        near = self.nearest(log10_n, similarity)
        values = dict(near.protocol)
        values["schedule"], values["stage_frac"], votes = self.schedule_at(log10_n, similarity)
        std: dict[str, float] = {}
        notes: list[str] = []
        for param in self.params:
            base = np.array([used[param]]) if used is not None else None
            mean, sd = self.predict_param(param, np.array([log10_n]), np.array([similarity]), baseline=base)
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
        if residual:
            notes.append(
                "each parameter = the quadrant rules' value for this task + a zero-mean GP fitted to the"
                " points' residuals from the quadrant rules (far from the points it returns to the rules)"
            )
        elif not self.residual_:
            notes.append(self.residual_note_)
        else:
            notes.append(
                "no quadrant baseline given for the target (its num_classes / excess profile):"
                " fitted a plain GP instead of the residuals of the quadrant rules"
            )
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
        voters = min(SCHEDULE_VOTERS, self.n_points_)
        shares = ", ".join(f"{s} {v:.2f}" for s, v in sorted(votes.items(), key=lambda kv: -kv[1]) if v > 0)
        notes.append(
            f"schedule {schedule_words(values)}: a distance-weighted vote"
            f" of the {voters} nearest point(s) ({shares})"
            + ("; stage_frac their weighted mean for it" if values["schedule"] != "one-stage" else "")
        )
        notes.append(
            f"the other parameters the surface does not model come from the nearest point, study {near.study!r}"
        )
        return SurfacePrediction(
            protocol=Protocol.from_dict(values),
            std=std,
            n_points=self.n_points_,
            few_points=self.few_points_,
            log10_n=float(log10_n),
            similarity=float(similarity),
            notes=notes,
            residual=residual,
            baseline={p: float(used[p]) for p in self.params} if used is not None else None,
            schedule_votes=votes,
        )


def prior_from_prediction(
    prediction: SurfacePrediction,
    num_groups: int,
    *,
    bounds: ProtocolSpace | None = None,
    quadrant: str = "",
    neighbours: Sequence[SurfacePoint] = (),
) -> Prior:
    """The prior from a surface prediction: centre = predicted protocol, spread widened by the std.

    ``neighbours`` (``SurfaceModel.neighbours``) become the prior's ``candidates``: their measured
    best protocols, tried right after the centre.

    The searched space is ``exploring_space`` (wide). Each fitted parameter's start-up spread is
    ``max(WIDTHS[name], 2 * std)`` (the head multiplier in
    decades), with ``std`` the latent std (the fitted function's uncertainty, not the scatter of
    noisy per-study optima: see ``SurfaceModel``); the others keep the quadrant prior's
    ``WIDTHS``. The centre is clipped into ``bounds`` (default ``ProtocolSpace()``).
    """
    if num_groups < 1:
        raise InvalidValueError(f"num_groups must be >= 1, but got {num_groups!r}")
    bounds = bounds or ProtocolSpace()
    widths = dict(WIDTHS)
    for param, s in prediction.std.items():
        name = _FIELD[param]
        widths[name] = max(WIDTHS[name], 2.0 * float(s))
    centre = bounds.clip(prediction.protocol)
    space = exploring_space(centre, bounds)
    f, r = centre.integers(num_groups)
    base = prediction.baseline if prediction.residual else None
    mode = (
        "quadrant rules + a Gaussian process per parameter on their residuals"
        if base is not None
        else "Gaussian process per parameter, constant mean"
    )
    rationale = [
        f"surface prior from {prediction.n_points} recorded studies at log10 N {prediction.log10_n:.2f},"
        f" similarity {prediction.similarity:.2f} ({mode})",
        *(
            f"{param} = {_shown(centre, param):.3g}"
            + (
                f" (quadrant {base[param]:.3g}, residual {_shown(centre, param) - base[param]:+.3g})"
                if base is not None
                else ""
            )
            + f" ± {prediction.std[param]:.3g} (1 latent std); start-up spread {widths[_FIELD[param]]:.3g}"
            for param in prediction.std
        ),
        f"f = {f}, r = {r} of {num_groups} groups",
        *prediction.notes,
    ]
    if centre.schedule != prediction.protocol.schedule:
        rationale.append(
            f"the study does not search the schedule {prediction.protocol.schedule!r}: the centre runs"
            f" {schedule_words(centre)}"
        )
    if neighbours:
        rationale.append(
            f"then the measured optima of the {len(neighbours)} nearest recorded studies (one per target): "
            + "; ".join(f"{p.study} (N {p.n}, similarity {p.similarity:.2f}, score {p.score:.3f})" for p in neighbours)
        )
    return Prior(
        centre=centre,
        space=space,
        quadrant=quadrant or "surface",
        rationale=rationale,
        num_groups=num_groups,
        kind="surface",
        candidates=[(f"surface:{p.study}", Protocol.from_dict(p.protocol)) for p in neighbours],
        spread=widths,
    )


def _shown(protocol: Protocol, param: str) -> float:
    if param == "log10_head_lr_mult":
        return math.log10(protocol.head_lr_mult)
    return float(getattr(protocol, _FIELD[param]))


def surface_points(path: str | Path, model: str, *, exclude_targets: Sequence[str] = ()) -> list[SurfacePoint]:
    """The store's points for ``model`` (minus ``exclude_targets``); ``UserError`` when there are none."""
    points = [p for p in SurfaceStore(path).load(model=model) if p.target not in set(exclude_targets)]
    if not points:
        raise UserError(
            f"surface {str(path)!r} has no points for model {model!r}: run `autotransfer surface --model"
            f" {model}` first, or use --prior quadrant"
        )
    return points


def store_named_by(prior: str | None, model: str) -> Path | None:
    """The surface store a ``--prior`` value names for ``model``: none given, the default surface
    (``default_surface``: the active store when it has points for the model); ``surface:PATH``,
    that store, checked to hold points for the model (``UserError`` now, not after an estimate);
    anything else (``quadrant``, ``none``), ``None``."""
    if prior is None:
        return default_surface(model)
    spec = PriorSpec.parse(prior)
    if spec.kind == "surface":
        path = Path(str(spec.path))
        surface_points(path, model)
        return path
    return None


def prior_at_coordinates(
    path: str | Path,
    *,
    model: str,
    log10_n: float,
    similarity: float,
    num_groups: int,
    excess: Sequence[float] | None = None,
    num_classes: int = 0,
    transferability: float | None = None,
    exclude_targets: Sequence[str] = (),
    quadrant: str = "",
    bounds: ProtocolSpace | None = None,
    neighbours: int = NEIGHBOURS,
) -> Prior:
    """Load the store at ``path``, fit the points of ``model`` (minus ``exclude_targets``), and
    return the surface prior at ``(log10_n, similarity)``. Raises ``UserError`` if no point fits.

    The prior's candidates are the measured optima of the ``neighbours`` nearest recorded studies
    (one per target; ``SurfaceModel.neighbours``).

    ``excess`` (``(G,)`` or ``None``), ``num_classes`` (0 = unknown) and ``transferability``
    (``TaskProfile.transferability_score``) describe the target task: with ``num_classes`` the
    prior is the quadrant rules' value plus the surface's residual GP (``SurfaceModel``); without
    it, or when a point lacks them, the plain GP (said in the rationale). When no point records a
    transferability, the target's baseline is computed without one too, so that the baseline is
    the same function of the task for the points and the target.
    """
    points = surface_points(path, model, exclude_targets=exclude_targets)
    if excess is not None and len(excess) and len(excess) != num_groups:
        raise UserError(
            f"the target's excess profile has {len(excess)} values but the model has {num_groups} depth"
            " groups: estimate the target again with this model"
        )
    notes = []
    if transferability is not None and all(p.transferability is None for p in points):
        # the points' residuals are from the rules read without a transferability: so is the target's baseline
        transferability = None
        notes.append(
            "no surface point records a transferability (profiles made before LogME over chance was"
            " measured): the target's quadrant baseline reads its similarity alone, like the points'"
        )
    baseline = None
    if num_classes > 0:
        baseline = quadrant_values(
            log10_n, similarity, excess, num_groups, num_classes=num_classes, transferability=transferability
        )
    fitted = SurfaceModel().fit(points)
    prediction = fitted.predict(log10_n, similarity, baseline=baseline)
    if prediction.residual:
        prediction.notes.extend(notes)
    near = fitted.neighbours(log10_n, similarity, neighbours)
    return prior_from_prediction(prediction, num_groups, bounds=bounds, quadrant=quadrant, neighbours=near)


def prior_for_task(
    path: str | Path,
    profile: "TaskProfile",
    *,
    exclude_targets: Sequence[str] = (),
    neighbours: int = NEIGHBOURS,
) -> Prior:
    """The surface prior for a measured task (``TaskEstimator.fit``'s profile): ``prior_at_coordinates``
    at its coordinates, with its excess profile, class count and transferability, and the quadrant
    its placement names."""
    return prior_at_coordinates(
        path,
        model=profile.model,
        log10_n=profile.log10_n,
        similarity=profile.similarity,
        num_groups=profile.num_groups,
        excess=list(profile.divergence.excess) if profile.divergence else None,
        num_classes=profile.size.classes,
        transferability=profile.transferability_score,
        exclude_targets=exclude_targets,
        quadrant=profile.prior.quadrant if profile.prior else "",
        neighbours=neighbours,
    )
