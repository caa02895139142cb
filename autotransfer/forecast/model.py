"""The forecast's model: Bayesian ridge on the gain of fine-tuning over the linear probe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autotransfer.core.errors import InvalidValueError
from autotransfer.forecast.evidence import EvidenceRow

__all__ = ["DEFAULT_BASE", "DEFAULT_FEATURES", "GainModel", "Prediction", "fit_gain_model"]

#: The features the gain reads (``forecast.features.task_features``); chosen by the
#: leave-one-target-out numbers of ``benchmarks/bench_forecast.py`` (benchmarks/RESULTS.md,
#: "Forecast before spending").
DEFAULT_FEATURES: tuple[str, ...] = ("similarity",)
#: The feature the gain is over: the cross-validated probe on the final features.
DEFAULT_BASE = "probe"
#: Whether the gain is modelled as a fraction of the probe's error (see ``GainModel``).
DEFAULT_HEADROOM = False
#: The noise floor added to each row's binomial variance: how far two studies of one task can end
#: apart beyond their judge's sampling (seeds of the search, the pick).
RESIDUAL_SD = 0.01
#: Surface rows ran an older tune at 48 px and are scored on their own small test split: their
#: variance gets this much more on top of their binomial one.
SURFACE_EXTRA_SD = 0.03


@dataclass(frozen=True)
class Prediction:
    """The model's forecast of a score: ``mean`` and ``sd`` (a normal predictive distribution), and the
    standardised ``distance`` to the nearest evidence row with that row's ``nearest`` cell."""

    mean: float
    sd: float
    distance: float
    nearest: str


def row_noise(row: EvidenceRow) -> float:
    """A row's outcome variance: binomial, a residual floor, and more for a surface row."""
    extra = SURFACE_EXTRA_SD**2 if row.kind == "surface" else 0.0
    return row.outcome_variance + RESIDUAL_SD**2 + extra


class GainModel:
    """outcome = base + gain, gain = w . features (``sklearn.linear_model.BayesianRidge``, each row
    weighed by the inverse of its outcome variance). The predictive sd is the ridge's own (its
    parameter uncertainty grows with the distance to the evidence) plus the spread between targets
    of their mean residual (rows of one target are not independent evidence).

    ``base``: the feature the gain is over (``probe``), or ``None`` to model the score itself.
    ``headroom``: model the gain as a fraction of the base's error, ``(outcome - base) / (1 - base)``.
    """

    def __init__(
        self,
        rows: Sequence[EvidenceRow],
        features: Sequence[str] = DEFAULT_FEATURES,
        base: str | None = DEFAULT_BASE,
        headroom: bool = DEFAULT_HEADROOM,
    ) -> None:
        from sklearn.linear_model import BayesianRidge

        if len({r.target for r in rows}) < 2:
            raise InvalidValueError(f"the gain model needs rows of at least 2 targets, got {len(rows)} row(s)")
        self.features = tuple(features)
        self.base = base
        self.headroom = headroom
        self.cells = [r.cell for r in rows]
        x = self._matrix([r.features for r in rows])
        self.centre = x.mean(axis=0)
        self.scale = np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
        self.x = (x - self.centre) / self.scale
        room = np.array([self._room(r.features) for r in rows])
        y = np.array([r.outcome - self._base(r.features) for r in rows]) / room
        noise = np.array([row_noise(r) for r in rows]) / room**2
        weights = (1.0 / noise) / np.mean(1.0 / noise)
        self.ridge = BayesianRidge(fit_intercept=True).fit(self.x, y, sample_weight=weights)
        residual = y - self.ridge.predict(self.x)
        targets = sorted({r.target for r in rows})
        means = []
        for t in targets:
            mask = np.array([r.target == t for r in rows])
            means.append(float(np.average(residual[mask], weights=weights[mask])))
        dof = max(len(targets) - 1, 1)
        #: the between-target sd of the mean residual (one degree of freedom for the intercept)
        self.target_sd = float(np.sqrt(np.sum(np.square(means)) / dof))

    def _matrix(self, rows: Sequence[dict[str, float]]) -> np.ndarray:
        """``(len(rows), len(features))`` (one zero column without features: a constant gain)."""
        if not self.features:
            return np.zeros((len(rows), 1))
        return np.array([[r[f] for f in self.features] for r in rows], dtype=np.float64)

    def _base(self, features: dict[str, float]) -> float:
        return float(features[self.base]) if self.base else 0.0

    def _room(self, features: dict[str, float]) -> float:
        return max(1.0 - self._base(features), 0.02) if self.headroom else 1.0

    def predict(self, features: dict[str, float]) -> Prediction:
        """The forecast for one task's ``features`` (``task_features``): base + the ridge's gain."""
        z = (self._matrix([features]) - self.centre) / self.scale
        mean, sd = self.ridge.predict(z, return_std=True)
        distances = np.sqrt(((self.x - z) ** 2).sum(axis=1))
        i = int(np.argmin(distances))
        room = self._room(features)
        return Prediction(
            mean=self._base(features) + room * float(mean[0]),
            sd=room * float(np.sqrt(sd[0] ** 2 + self.target_sd**2)),
            distance=float(distances[i]),
            nearest=self.cells[i],
        )


def fit_gain_model(
    rows: Sequence[EvidenceRow],
    features: Sequence[str] = DEFAULT_FEATURES,
    base: str | None = DEFAULT_BASE,
    headroom: bool = DEFAULT_HEADROOM,
) -> GainModel:
    """The ``GainModel`` of ``rows`` on ``features`` (``base``: the feature the gain is over, ``None``
    for the score itself; ``headroom``: the gain as a fraction of the base's error)."""
    return GainModel(rows, features, base, headroom)
