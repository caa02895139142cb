"""The data-requirement curve's numbers (issue 30): a piecewise power law of error against labelled
images, corrected by past tasks, with a bootstrap interval, and the one line ``tune`` prints.

Pure numpy, no training and no plotly (``handback.curve_runs`` measures the points,
``report.plots.data_curve_figure`` draws them). docs/design.md, "The data-requirement curve".

The model. ``e(m)`` is the error (1 - score) of the picked protocol trained on ``m`` images:

- **measured piece** (``m <= m_max``, the largest measured size): ``log e = alpha - beta log m``,
  a weighted least-squares line through the measured points (weights: each point's binomial
  variance of ``log e`` on its scoring images);
- **extrapolated piece** (``m > m_max``): ``e(m) = e(m_max) (m / m_max)^-b``, continuous at
  ``m_max``, with the exponent ``b`` (never below 0: more data does not raise the error)
  *corrected by past tasks*: the curve's own ``beta`` shrunk
  towards the exponent that past studies showed between sizes (``DataCurvePrior``), each weighted by
  the inverse of its variance (Jain et al., CVPR 2023: a piecewise power law with meta-learned
  parameters; Mahmood et al., CVPR 2022: a power-law fit alone misleads, a correction learned on past
  tasks fixes much of it). A plain power law is the same with no prior.

Labelled images and training images: a study of ``N`` labelled images hands back a model trained on
train+val, ``m = N (1 - test_frac)`` images, so a forecast for ``N`` reads the curve at that ``m``.

The interval: a parametric bootstrap. Each draw re-samples every measured score from its binomial
on its scoring images, refits the line, and draws the past tasks' exponent from its spread; the
percentiles of the draws' forecasts make the 80% interval. Fewer or noisier points, or a prior
with a wide spread, widen it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from autotransfer.core.errors import InvalidValueError

__all__ = [
    "CurvePoint",
    "DataCurvePrior",
    "DataCurve",
    "fit_data_curve",
    "exponent_prior",
    "load_prior",
    "next_target",
    "curve_line",
    "curve_record",
    "curve_from_record",
    "CurveSeries",
    "curve_series",
    "PRIOR_ASSET",
    "HORIZON",
    "LEVEL",
]

#: The shipped correction, built by ``benchmarks/build_data_curve_prior.py``.
PRIOR_ASSET = "data-curve-prior.json"
#: Forecasts stop at this many times the study's labelled images: a target further out is "not
#: reachable" on this curve (past tasks spanned at most 10x in size).
HORIZON = 100.0
#: The interval's coverage: the 10th and 90th percentiles of the bootstrap draws.
LEVEL = 0.80
#: Score ladder for the line's target: the next rung above the current score.
_LADDER = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class CurvePoint:
    """One measured point: the protocol trained on ``images`` images scored ``score`` on
    ``scored_on`` images (the effective number for balanced accuracy)."""

    images: int
    score: float
    scored_on: int


@dataclass(frozen=True)
class DataCurvePrior:
    """What past tasks say about the exponent of error against labelled images.

    ``exponent``: the mean over past targets of ``b`` in ``e ~ N^-b``; ``sd``: the spread a new
    target's exponent has around it (between targets, inflated for how few there are); ``tasks``:
    the targets it stands on."""

    exponent: float
    sd: float
    tasks: tuple[str, ...] = ()


def _adjusted_error(score: float, n: int) -> float:
    """The error ``1 - score`` as an Agresti-Coull adjusted proportion (never 0 or 1)."""
    return (n * (1.0 - score) + 2.0) / (n + 4.0)


def _log_error_var(err: float, n: int) -> float:
    """The delta-method variance of ``log e`` for an error ``e`` measured on ``n`` images."""
    return (1.0 - err) / (err * (n + 4.0))


def _wls_line(log_m: np.ndarray, log_e: np.ndarray, var: np.ndarray) -> tuple[float, float, float]:
    """Weighted least squares ``log e = alpha - beta log m``: ``(alpha, beta, var(beta))``.
    One point (or one size): ``beta`` 0 with infinite variance."""
    w = 1.0 / var
    if len(log_m) < 2 or np.ptp(log_m) == 0:
        return float(np.sum(w * log_e) / np.sum(w)), 0.0, math.inf
    xm = np.sum(w * log_m) / np.sum(w)
    ym = np.sum(w * log_e) / np.sum(w)
    sxx = float(np.sum(w * (log_m - xm) ** 2))
    slope = float(np.sum(w * (log_m - xm) * (log_e - ym)) / sxx)
    return float(ym - slope * xm), -slope, 1.0 / sxx


@dataclass
class DataCurve:
    """A fitted curve: its measured points, the line through them, the corrected exponent, and
    bootstrap draws of ``(alpha, beta, b)`` for the intervals.

    ``share``: training images per labelled image of the hand-back (``1 - test_frac``);
    ``labelled``: the study's labelled images ``N``; ``metric``: what the scores are."""

    points: list[CurvePoint]
    share: float
    labelled: int
    metric: str
    alpha: float
    beta: float
    beta_var: float
    exponent: float
    prior: DataCurvePrior | None
    draws: np.ndarray = field(repr=False)  # (D, 3): alpha, beta, b per draw

    @property
    def m_max(self) -> int:
        return max(p.images for p in self.points)

    def _error(self, m: np.ndarray, alpha: np.ndarray, beta: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Errors at training sizes ``m`` ``(K,)`` for parameters ``(D,)`` each: ``(D, K)``."""
        log_m = np.log(np.asarray(m, dtype=float))[None, :]
        log_max = math.log(self.m_max)
        a, be, bb = alpha[:, None], beta[:, None], b[:, None]
        inside = a - be * np.minimum(log_m, log_max)
        beyond = -np.maximum(bb, 0.0) * np.maximum(log_m - log_max, 0.0)  # more data never hurts
        return np.clip(np.exp(inside + beyond), 0.0, 1.0)

    def score_at(self, labelled: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The forecast score for ``labelled`` image counts ``(K,)``: ``(centre, low, high)``
        each ``(K,)``, the 80% interval from the draws."""
        m = np.asarray(labelled, dtype=float) * self.share
        centre = 1.0 - self._error(m, np.array([self.alpha]), np.array([self.beta]), np.array([self.exponent]))[0]
        draws = 1.0 - self._error(m, self.draws[:, 0], self.draws[:, 1], self.draws[:, 2])
        q = (1 - LEVEL) / 2
        return centre, np.quantile(draws, q, axis=0), np.quantile(draws, 1 - q, axis=0)

    def _needed(self, score: float, alpha: np.ndarray, beta: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Labelled images each parameter draw needs to reach ``score`` (inf: beyond ``HORIZON``)."""
        target = math.log(max(1.0 - score, 1e-12))
        log_max = math.log(self.m_max)
        at_max = alpha - beta * log_max
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = np.where(beta > 0, (alpha - target) / beta, np.inf)
            beyond = np.where(b > 0, log_max + (at_max - target) / b, np.inf)
        log_m = np.where(at_max <= target, np.minimum(inside, log_max), beyond)
        n = np.exp(np.clip(log_m, -50, 50)) / self.share
        return np.where(n > HORIZON * self.labelled, np.inf, np.maximum(n, 1.0))

    def images_for(self, score: float) -> tuple[float, float, float]:
        """Labelled images needed for ``score``: ``(centre, low, high)`` (80%); ``inf`` where the
        curve does not reach it within ``HORIZON`` times the study's images."""
        if not 0.0 < score < 1.0:
            raise InvalidValueError(f"the target score must lie in (0, 1), but got {score!r}")
        centre = self._needed(score, np.array([self.alpha]), np.array([self.beta]), np.array([self.exponent]))[0]
        draws = self._needed(score, self.draws[:, 0], self.draws[:, 1], self.draws[:, 2])
        q = (1 - LEVEL) / 2
        # "nearest": draws that never reach the score are infinite, which interpolation cannot mix
        low, high = np.quantile(draws, [q, 1 - q], method="nearest")
        return float(centre), float(low), float(high)


def fit_data_curve(
    points: Sequence[CurvePoint],
    *,
    share: float,
    labelled: int,
    metric: str = "accuracy",
    prior: DataCurvePrior | None = None,
    draws: int = 1000,
    seed: int = 0,
) -> DataCurve:
    """Fit the piecewise power law to ``points`` (at least 2 distinct sizes), corrected by
    ``prior`` (``None``: a plain power law, the curve's own exponent throughout).

    ``share``: training images per labelled image of the hand-back (``1 - test_frac``);
    ``labelled``: the study's labelled images ``N`` (the horizon is ``HORIZON * N``)."""
    pts = sorted(points, key=lambda p: p.images)
    if len({p.images for p in pts}) < 2:
        raise InvalidValueError(f"a data curve needs points at 2 or more sizes, but got {[p.images for p in pts]}")
    for p in pts:
        if p.images < 1 or p.scored_on < 1 or not 0.0 <= p.score <= 1.0:
            raise InvalidValueError(f"a curve point needs images >= 1, scored_on >= 1 and a score in [0, 1]: {p!r}")
    if not 0.0 < share <= 1.0 or labelled < 1:
        raise InvalidValueError(f"need 0 < share <= 1 and labelled >= 1, but got {share!r}, {labelled!r}")
    if prior is not None and (not math.isfinite(prior.exponent) or not prior.sd > 0):
        raise InvalidValueError(f"a curve prior needs a finite exponent and a positive sd, but got {prior!r}")
    log_m = np.log([p.images for p in pts])
    n = np.array([p.scored_on for p in pts])
    err = np.array([_adjusted_error(p.score, p.scored_on) for p in pts])
    var = np.array([_log_error_var(e, k) for e, k in zip(err, n)])
    alpha, beta, beta_var = _wls_line(log_m, np.log(err), var)
    exponent = _corrected(beta, beta_var, prior)

    rng = np.random.default_rng(seed)
    p_err = np.array([1.0 - p.score for p in pts])
    wrong = rng.binomial(n[None, :], np.clip(p_err, 0.0, 1.0)[None, :], size=(draws, len(pts)))
    out = np.empty((draws, 3))
    prior_b = (
        rng.normal(prior.exponent, prior.sd, size=draws) if prior is not None else np.zeros(draws)
    )  # a new task's exponent: past tasks' mean and spread
    for d in range(draws):
        e = (wrong[d] + 2.0) / (n + 4.0)
        v = (1.0 - e) / (e * (n + 4.0))
        a, be, bv = _wls_line(log_m, np.log(e), v)
        if prior is None:
            b = be
        else:
            w = 0.0 if not math.isfinite(bv) else prior.sd**2 / (prior.sd**2 + bv)
            b = w * be + (1 - w) * prior_b[d]
        out[d] = (a, be, b)
    return DataCurve(list(pts), share, labelled, metric, alpha, beta, beta_var, exponent, prior, out)


def _corrected(beta: float, beta_var: float, prior: DataCurvePrior | None) -> float:
    """The extrapolated piece's exponent: the curve's own, shrunk towards the prior's by the
    inverse-variance weights (the prior alone when the curve cannot tell)."""
    if prior is None:
        return beta
    if not math.isfinite(beta_var):
        return prior.exponent
    w = prior.sd**2 / (prior.sd**2 + beta_var)
    return w * beta + (1 - w) * prior.exponent


def exponent_prior(evidence: Sequence[dict[str, Any]], *, exclude: Sequence[str] = ()) -> DataCurvePrior:
    """The past tasks' exponent from ``evidence`` rows ``{"target", "n", "score", "scored_on"}``
    (hand-back scores of studies of one target at several sizes ``n``), leaving out the targets in
    ``exclude`` (leave-one-target-out). Per target: the weighted least-squares exponent of
    ``log e`` on ``log n``; then their mean and a spread ``sd * sqrt(1 + 1/k)`` over the ``k``
    targets (the predictive spread of a new target), at least 0.1."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for row in evidence:
        if row["target"] not in exclude:
            by_target.setdefault(str(row["target"]), []).append(row)
    slopes, names = [], []
    for target, rows in sorted(by_target.items()):
        if len({int(r["n"]) for r in rows}) < 2:
            continue
        k = np.array([int(r["scored_on"]) for r in rows])
        e = np.array([_adjusted_error(float(r["score"]), int(kk)) for r, kk in zip(rows, k)])
        _, beta, _ = _wls_line(np.log([float(r["n"]) for r in rows]), np.log(e), (1 - e) / (e * (k + 4.0)))
        slopes.append(beta)
        names.append(target)
    if len(slopes) < 2:
        raise InvalidValueError(f"the curve prior needs 2 or more targets at 2 sizes, but got {names}")
    arr = np.array(slopes)
    sd = max(0.1, float(np.std(arr, ddof=1)) * math.sqrt(1 + 1 / len(arr)))
    return DataCurvePrior(float(arr.mean()), sd, tuple(names))


def load_prior(path: str | None = None, *, exclude: Sequence[str] = ()) -> DataCurvePrior:
    """The shipped correction (``autotransfer/assets/data-curve-prior.json``), or the one at
    ``path``; ``exclude`` recomputes it from its evidence without those targets."""
    import json
    from pathlib import Path

    file = Path(path) if path else Path(__file__).resolve().parent.parent / "assets" / PRIOR_ASSET
    data = json.loads(file.read_text())
    if exclude:
        return exponent_prior(data["evidence"], exclude=exclude)
    p = data["prior"]
    return DataCurvePrior(float(p["exponent"]), float(p["sd"]), tuple(p["tasks"]))


def next_target(score: float) -> float:
    """The next round score above ``score`` (0.87 -> 0.9, 0.91 -> 0.95, 0.96 -> 0.97), or 0.999
    at the top."""
    for rung in _LADDER:
        if rung > score + 0.005:
            return rung
    return _LADDER[-1]


def _count(n: float) -> str:
    """``2437`` -> ``2,400``: two significant figures, thousands separated."""
    if n < 100:
        return f"{int(round(n)):,}"
    digits = int(math.floor(math.log10(n))) - 1
    return f"{int(round(n, -digits)):,}"


def curve_line(curve: DataCurve, *, target: float | None = None, more: int = 500) -> str:
    """The one line ``tune`` prints: what ``target`` (default: the next round score above the
    curve's score at the study's size) needs, with the 80% interval, and what ``more`` labelled
    images buy; or that the curve does not reach it."""
    now = float(curve.score_at([curve.labelled])[0][0])
    goal = next_target(now) if target is None else target
    after = float(curve.score_at([curve.labelled + more])[0][0])
    gain = f"+{more:,} images ~ {100 * (after - now):+.1f} points"
    centre, low, high = curve.images_for(goal)
    name = curve.metric.replace("_", " ")
    goal_text = f"{goal:.2f}" if round(goal, 2) == goal else f"{goal:g}"
    if not math.isfinite(centre):
        why = (
            "its error stops falling"
            if curve.exponent <= 0
            else f"it needs over {HORIZON:g}x the {curve.labelled:,} images"
        )
        return f"data curve: {goal_text} {name} is not reachable by labelling more on this curve ({why}); {gain}"
    upper = _count(high) if math.isfinite(high) else f"over {_count(HORIZON * curve.labelled)}"
    return (
        f"data curve: about {goal_text} {name} needs ~{_count(centre)} labelled images"
        f" ({100 * LEVEL:.0f}%: {_count(low)}-{upper}); {gain}"
    )


def curve_record(curve: DataCurve, *, line: str | None = None, sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """The curve as the study records it (JSON): points, fit, prior, the forecast at a few sizes
    (default 1x, 2x, 5x, 10x the study's images) and the line."""
    sizes = list(sizes) if sizes else [curve.labelled * k for k in (1, 2, 5, 10)]
    centre, low, high = curve.score_at(sizes)
    goal = next_target(float(curve.score_at([curve.labelled])[0][0]))
    need = curve.images_for(goal)
    return {
        "points": [asdict(p) for p in curve.points],
        "share": curve.share,
        "labelled": curve.labelled,
        "metric": curve.metric,
        "fit": {"alpha": curve.alpha, "beta": curve.beta, "exponent": curve.exponent},
        "prior": {**asdict(curve.prior), "tasks": list(curve.prior.tasks)} if curve.prior is not None else None,
        "forecast": [
            {"labelled": int(n), "score": float(c), "low": float(lo), "high": float(hi)}
            for n, c, lo, hi in zip(sizes, centre, low, high)
        ],
        "target": {"score": goal, "labelled": [None if not math.isfinite(v) else round(v) for v in need]},
        "line": line if line is not None else curve_line(curve),
    }


def curve_from_record(record: dict[str, Any], *, draws: int = 1000) -> DataCurve:
    """Refit the curve a study recorded (``curve_record``) from its points and prior."""
    prior = record.get("prior")
    return fit_data_curve(
        [CurvePoint(int(p["images"]), float(p["score"]), int(p["scored_on"])) for p in record["points"]],
        share=float(record["share"]),
        labelled=int(record["labelled"]),
        metric=str(record.get("metric", "accuracy")),
        prior=DataCurvePrior(float(prior["exponent"]), float(prior["sd"]), tuple(prior.get("tasks") or ()))
        if prior
        else None,
        draws=draws,
    )


@dataclass(frozen=True)
class CurveSeries:
    """What the figure draws (``report.plots.data_curve_figure``): the measured points at their
    labelled-image equivalents (``images / share``) with their 80% binomial intervals, and the
    forecast ``(centre, low, high)`` over ``labelled`` sizes up to ``upto`` times the study's."""

    metric: str
    measured_labelled: list[float]
    measured: list[float]
    measured_low: list[float]
    measured_high: list[float]
    labelled: list[float]
    centre: list[float]
    low: list[float]
    high: list[float]
    study_labelled: int
    line: str


def curve_series(curve: DataCurve, *, upto: float = 10.0, num: int = 40, line: str | None = None) -> CurveSeries:
    """The figure's numbers for ``curve`` (see ``CurveSeries``): a log-spaced grid of ``num`` sizes
    from the smallest measured one to ``upto`` times the study's labelled images."""
    from autotransfer.train.metrics import score_interval

    lo_n = min(p.images for p in curve.points) / curve.share
    grid = np.geomspace(lo_n, max(upto, 1.0) * curve.labelled, num)
    centre, low, high = curve.score_at(grid)
    z = 1.2816  # the 80% normal quantile
    bands = [score_interval(p.score, p.scored_on, z=z) for p in curve.points]
    return CurveSeries(
        curve.metric,
        [p.images / curve.share for p in curve.points],
        [p.score for p in curve.points],
        [b[0] for b in bands],
        [b[1] for b in bands],
        grid.tolist(),
        centre.tolist(),
        low.tolist(),
        high.tolist(),
        curve.labelled,
        line if line is not None else curve_line(curve),
    )
