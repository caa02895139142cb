"""The forecast's features of one task: the estimator's coordinates and a cross-validated linear probe."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PROBE_FOLDS", "probe_accuracy", "task_features"]

#: Folds of the cross-validated linear probe (fewer when the smallest class has fewer images).
PROBE_FOLDS = 5


def probe_accuracy(features: np.ndarray, labels: np.ndarray, metric: str = "accuracy", seed: int = 0) -> float:
    """Cross-validated accuracy (or balanced accuracy, ``metric``) of a logistic-regression probe on
    ``features`` ``(n, d)`` with ``labels`` ``(n,)``: standardised features, stratified folds, the
    out-of-fold predictions scored once."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    folds = max(2, min(PROBE_FOLDS, smallest))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
    predicted = cross_val_predict(probe, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    score = balanced_accuracy_score if metric == "balanced_accuracy" else accuracy_score
    return float(score(y, predicted))


def task_features(profile: Any, probe: float, n: int) -> dict[str, float]:
    """The forecast's features of a task: ``profile`` (a ``TaskProfile`` or its dict), the probe's
    cross-validated score on the final features (``probe_accuracy``) and ``n``, the labelled
    images the study gets."""
    data = profile if isinstance(profile, dict) else profile.to_dict()
    classes = int(data["size"]["classes"])
    excess = np.asarray(data["divergence"]["excess"], dtype=np.float64)
    return {
        "log10_n": float(np.log10(max(int(n), 1))),
        "classes": float(classes),
        "chance": 1.0 / classes,
        "similarity": float(data["similarity"]),
        "transferability": float(data["transferability_score"]),
        "logme_over_chance": float(data["transferability"]["logme_over_chance"]),
        "excess_mean": float(excess.mean()),
        "excess_tail": float(excess[-1]),
        "probe": float(probe),
    }
