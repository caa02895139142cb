"""``forecast_task``: the forecast of a task's handed-back score from its profile, probe and job."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from autotransfer.forecast.evidence import Evidence, load_evidence
from autotransfer.forecast.features import probe_accuracy, task_features
from autotransfer.forecast.model import DEFAULT_BASE, DEFAULT_FEATURES, GainModel, fit_gain_model
from autotransfer.forecast.result import Forecast

__all__ = ["LEVEL", "forecast_task", "forecast_from_estimator", "forecast_line", "shipped_model"]

#: The interval's nominal coverage.
LEVEL = 0.8
#: Extra predictive sd (added in quadrature) when the job is unlike every evidence row: another
#: model (its gain over the probe is not lite0's), another resolution. Judgement, not
#: measurement: the evidence has one model at 48 and 64 px.
OTHER_MODEL_SD = 0.05
OTHER_RESOLUTION_SD = 0.04
#: Extra sd for fewer trials than the evidence's 20 (10-19; below 10 twice this), or a time
#: budget. Measured: judged scores at 1/3, 2/3 and 1x of the grid's compute were within 1.5
#: points of one another on 2 cells (benchmarks/RESULTS.md, "Accuracy per compute").
JOB_SD = 0.015
EVIDENCE_TRIALS = 20


@lru_cache(maxsize=4)
def _fitted(path: str | None) -> tuple[Evidence, GainModel]:
    evidence = load_evidence(path)
    return evidence, fit_gain_model(evidence.rows, DEFAULT_FEATURES, DEFAULT_BASE)


def shipped_model(path: str | None = None) -> tuple[Evidence, GainModel]:
    """The evidence at ``path`` (default: the shipped asset) and the gain model fitted on it (cached)."""
    return _fitted(None if path is None else str(path))


def _near(distance: float) -> str:
    return "near" if distance <= 1.0 else "fairly near" if distance <= 2.0 else "far from all of them"


def forecast_task(
    profile: Any,
    probe: float,
    n: int,
    *,
    model: str | None = None,
    resolution: int = 64,
    trials: int | None = EVIDENCE_TRIALS,
    time_budget_s: float | None = None,
    evidence: str | None = None,
) -> Forecast:
    """The forecast for a task: ``profile`` (a ``TaskProfile`` or its dict), ``probe`` (the
    cross-validated linear-probe score on the final features, ``probe_accuracy``), ``n`` (labelled images the study
    gets), and the job: ``model`` (default: the profile's), ``resolution``, ``trials``,
    ``time_budget_s``. ``evidence``: another evidence JSON than the shipped one."""
    from scipy.stats import norm

    data = profile if isinstance(profile, dict) else profile.to_dict()
    model = model or str(data["model"])
    loaded, gain = shipped_model(evidence)
    features = task_features(data, probe, n)
    prediction = gain.predict(features)
    extra, notes = 0.0, []
    models = {r.model for r in loaded.rows}
    same_model = [r for r in loaded.rows if r.model == model]
    like = [r for r in same_model if r.resolution == resolution]
    if not same_model:
        extra += OTHER_MODEL_SD**2
        notes.append(
            f"no past study of {model}: the gain over its probe is {', '.join(sorted(models))}'s;"
            f" interval widened (sd +{OTHER_MODEL_SD:.2f})"
        )
    if not like and same_model:
        have = sorted({r.resolution for r in same_model})
        extra += OTHER_RESOLUTION_SD**2
        notes.append(
            f"no past study at {resolution} px (the evidence ran {', '.join(map(str, have))} px);"
            f" interval widened (sd +{OTHER_RESOLUTION_SD:.2f})"
        )
    if trials is not None and trials < EVIDENCE_TRIALS:
        job = JOB_SD if trials >= EVIDENCE_TRIALS // 2 else 2 * JOB_SD
        extra += job**2
        notes.append(f"{trials} trials where the evidence ran {EVIDENCE_TRIALS}; interval widened (sd +{job:.3f})")
    if time_budget_s is not None:
        extra += JOB_SD**2
        notes.append(
            f"a {time_budget_s:.0f} s budget: the evidence ran 20 trials or the default budget; interval widened"
            f" (sd +{JOB_SD:.3f})"
        )
    sd = math.sqrt(prediction.sd**2 + extra)
    half = float(norm.ppf(0.5 + LEVEL / 2)) * sd
    clip = lambda v: float(np.clip(v, 0.0, 1.0))  # noqa: E731
    return Forecast(
        score=clip(prediction.mean),
        low=clip(prediction.mean - half),
        high=clip(prediction.mean + half),
        sd=sd,
        level=LEVEL,
        metric=str(data.get("metric") or data["size"].get("metric") or "accuracy"),
        studies=len(loaded.rows),
        like=len(like),
        targets=len({r.target for r in like}),
        nearest=prediction.nearest,
        distance=prediction.distance,
        near=_near(prediction.distance),
        features=features,
        notes=tuple(notes),
    )


def forecast_from_estimator(estimator: Any, n: int, **job: Any) -> Forecast:
    """``forecast_task`` after a ``TaskEstimator.fit``: its profile, and the probes on its kept
    final features (``group_features_[-1]``, ``labels_``); ``job``: ``forecast_task``'s keywords."""
    profile = estimator.profile_
    final = estimator.group_features_[-1]
    probe = probe_accuracy(final, estimator.labels_, profile.size.metric, seed=estimator.seed)
    return forecast_task(profile, probe, n, **job)


def forecast_line(estimator: Any, n: int, **job: Any) -> str:
    """``forecast_from_estimator(...).describe()`` for a progress note, or one line saying why no
    forecast was made (unreadable evidence: the job goes on without it)."""
    from autotransfer.forecast.evidence import EvidenceError

    try:
        return forecast_from_estimator(estimator, n, **job).describe()
    except EvidenceError as err:
        return f"no forecast: {err}"
