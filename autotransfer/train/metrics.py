"""Validation metrics (accuracy, balanced accuracy) and ``evaluate`` over device-resident batches."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from autotransfer.core.errors import InvalidValueError, UserError
from autotransfer.train.config import default_amp

__all__ = [
    "METRICS",
    "score",
    "score_interval",
    "check_metric",
    "evaluate",
    "predict_logits",
    "predict_labels",
    "predict_proba",
]

METRICS = ("accuracy", "balanced_accuracy")


def check_metric(metric: str) -> str:
    """Return ``metric`` if known, else raise ``UserError`` naming it."""
    if metric not in METRICS:
        raise UserError(f"metric must be one of {list(METRICS)!r}, but got {metric!r}")
    return metric


def score(y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor, metric: str) -> float:
    """``metric`` of predictions ``y_pred`` ``(N,)`` against labels ``y_true`` ``(N,)``.

    Balanced accuracy is the mean per-class recall over the classes present in ``y_true``
    (scikit-learn's definition, without chance adjustment).
    """
    check_metric(metric)
    y_true = _numpy(y_true)
    y_pred = _numpy(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise InvalidValueError(f"y_true and y_pred must both be (N,), but got {y_true.shape} and {y_pred.shape}")
    if len(y_true) == 0:
        raise InvalidValueError("cannot score an empty set of predictions")
    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    with warnings.catch_warnings():  # predicting a class absent from y_true is legitimate here
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))


def score_interval(value: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a score ``value`` measured on ``n`` images.

    Exact Wilson for accuracy (``value * n`` correct); for balanced accuracy it treats the score
    as a proportion of ``n`` (an approximation that is exact for balanced classes). Written out
    rather than taken from ``scipy.stats.binomtest``, which needs an integer count.
    """
    if not 0.0 <= value <= 1.0:
        raise InvalidValueError(f"score must lie in [0, 1], but got {value!r}")
    if n < 1:
        raise InvalidValueError(f"the number of images must be >= 1, but got {n!r}")
    denom = 1 + z * z / n
    centre = (value + z * z / (2 * n)) / denom
    half = z * np.sqrt(value * (1 - value) / n + z * z / (4 * n * n)) / denom
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def predict_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``forward`` over ``(x, y)`` batches without gradients: ``(logits (N, K) float32, labels (N,))``."""
    logits, labels = [], []
    with torch.no_grad():
        for x, y in batches:
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else nullcontext()
            with ctx:
                out = forward(x)
            logits.append(out.float())
            labels.append(y)
    if not logits:
        raise InvalidValueError("no batches to evaluate")
    return torch.cat(logits), torch.cat(labels)


def evaluate(
    backbone,
    batches,
    metric: str = "accuracy",
    *,
    batch_size: int = 256,
    amp: bool | None = None,
    channels_last: bool | None = None,
) -> float:
    """Score ``backbone.model`` (eval mode, no grad) on every image of ``batches`` (a ``DeviceBatches``).

    Args:
        backbone: a ``Backbone``, or a list of them (an ensemble: mean softmax); models are put
            in eval mode.
        batches: ``DeviceBatches`` whose ``eval_batches(batch_size)`` yields plain normalised
            ``(B, 3, S, S)`` float images with ``(B,)`` labels.
        metric: ``accuracy`` or ``balanced_accuracy``.
        amp: bf16 autocast; ``None`` = on for CUDA inputs only.
        channels_last: ``None`` = on.
    """
    check_metric(metric)
    labels, predicted = predict_labels(backbone, batches, batch_size=batch_size, amp=amp, channels_last=channels_last)
    return score(labels, predicted, metric)


def predict_labels(
    backbone,
    batches,
    *,
    batch_size: int = 256,
    amp: bool | None = None,
    channels_last: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (N,), predicted classes (N,))`` of ``backbone.model`` (eval mode) on ``batches``.

    ``backbone`` may be a list of backbones (an ensemble): the prediction is then the argmax of
    their mean softmax probabilities (``predict_proba``).
    """
    members = [b.model for b in backbone] if isinstance(backbone, (list, tuple)) else backbone.model
    labels, proba = predict_proba(members, batches, batch_size=batch_size, amp=amp, channels_last=channels_last)
    return _numpy(labels), _numpy(proba.argmax(1))


def predict_proba(
    models: torch.nn.Module | Sequence[torch.nn.Module],
    batches,
    *,
    batch_size: int = 256,
    amp: bool | None = None,
    channels_last: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels (N,), probabilities (N, K) float32)``: the mean softmax of ``models`` (one module
    or an ensemble's; each put in eval mode) on every image of ``batches``, one fresh pass each.
    ``amp`` ``None``: bf16 autocast where the device has native bf16 (``default_amp``)."""
    members = [models] if isinstance(models, torch.nn.Module) else list(models)
    if not members:
        raise InvalidValueError("predict_proba needs at least one model")
    total, labels = None, None
    for model in members:
        model.eval()
        device = next(model.parameters()).device
        use_amp = default_amp(device) if amp is None else amp
        logits, labels = predict_logits(
            model,
            batches.eval_batches(batch_size),
            amp=use_amp,
            channels_last=True if channels_last is None else channels_last,
        )
        proba = torch.softmax(logits, dim=1)
        total = proba if total is None else total + proba
    assert total is not None and labels is not None
    return labels, total / len(members)


def _numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
