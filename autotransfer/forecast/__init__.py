"""autotransfer.forecast: the score ``tune`` will hand back, forecast before any trial, with an interval."""

from __future__ import annotations

from autotransfer.forecast.evidence import EVIDENCE_VERSION, Evidence, EvidenceError, EvidenceRow, load_evidence
from autotransfer.forecast.features import probe_accuracy, task_features
from autotransfer.forecast.model import DEFAULT_FEATURES, GainModel, Prediction, fit_gain_model
from autotransfer.forecast.predict import LEVEL, forecast_from_estimator, forecast_line, forecast_task, shipped_model
from autotransfer.forecast.result import Forecast

__all__ = [
    "DEFAULT_FEATURES",
    "EVIDENCE_VERSION",
    "Evidence",
    "EvidenceError",
    "EvidenceRow",
    "Forecast",
    "GainModel",
    "LEVEL",
    "Prediction",
    "fit_gain_model",
    "forecast_from_estimator",
    "forecast_line",
    "forecast_task",
    "load_evidence",
    "probe_accuracy",
    "shipped_model",
    "task_features",
]
