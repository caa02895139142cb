"""Pseudo-labels for self-training (docs/design.md, "Self-training"): which unlabelled images a
teacher is confident enough about, and with which label. Pure functions of the teacher's
probabilities; no optuna, no model."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from autotransfer.core.errors import InvalidValueError

__all__ = ["PseudoLabels", "select_pseudo_labels", "check_threshold"]


class PseudoLabels(NamedTuple):
    """The images kept as pseudo-labelled: ``indices`` ``(K,)`` into the unlabelled set (in its
    order), their ``labels`` ``(K,)`` (the teacher's argmax) and ``confidences`` ``(K,)`` (the
    teacher's probability of that label, each ``>= threshold``)."""

    indices: np.ndarray
    labels: np.ndarray
    confidences: np.ndarray

    def per_class(self, num_classes: int) -> list[int]:
        """How many kept images each class got, ``(num_classes,)``."""
        return [int(v) for v in np.bincount(self.labels, minlength=num_classes)[:num_classes]]


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float if it lies in the open interval (0, 1), else ``ValueError``."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise InvalidValueError(f"the pseudo-label threshold must be a number in (0, 1), but got {threshold!r}")
    if not 0.0 < float(threshold) < 1.0:
        raise InvalidValueError(f"the pseudo-label threshold must lie in (0, 1), but got {threshold!r}")
    return float(threshold)


def select_pseudo_labels(probs: np.ndarray | torch.Tensor, threshold: float) -> PseudoLabels:
    """The images whose top class probability is at least ``threshold``.

    Args:
        probs: ``(N, C)`` class probabilities (a teacher's softmax, or an ensemble's mean
            softmax); each row should sum to 1.
        threshold: in (0, 1); an image is kept when ``max(probs[i]) >= threshold``.

    Returns:
        ``PseudoLabels`` in the unlabelled set's order: ``indices`` (int64), ``labels``
        (int64, the argmax; ties go to the lower class, as ``argmax``) and ``confidences``
        (float32).
    """
    threshold = check_threshold(threshold)
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().float().cpu().numpy()
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise InvalidValueError(f"probs must be (N, C) with C >= 1, but got shape {probs.shape}")
    if len(probs) and (not np.all(np.isfinite(probs)) or probs.min() < 0):
        raise InvalidValueError("probs must be finite and non-negative (softmax probabilities)")
    labels = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    confidences = probs[np.arange(len(probs)), labels] if len(probs) else np.zeros(0, dtype=np.float32)
    keep = np.flatnonzero(confidences >= threshold)
    return PseudoLabels(keep.astype(np.int64), labels[keep].astype(np.int64), confidences[keep].astype(np.float32))
