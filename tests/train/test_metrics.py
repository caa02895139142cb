"""Accuracy and balanced accuracy on hand-computed predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autotransfer.errors import UserError
from autotransfer.train import score


def test_balanced_accuracy_on_imbalanced_predictions():
    # 8 of class 0, 2 of class 1; always predicting 0 is 80% accurate but 50% balanced.
    y = np.array([0] * 8 + [1] * 2)
    always_zero = np.zeros(10, dtype=int)
    assert score(y, always_zero, "accuracy") == pytest.approx(0.8)
    assert score(y, always_zero, "balanced_accuracy") == pytest.approx(0.5)
    # recall 6/8 on class 0 and 1/2 on class 1 -> (0.75 + 0.5) / 2
    pred = np.array([0] * 6 + [1] * 2 + [1, 0])
    assert score(y, pred, "balanced_accuracy") == pytest.approx(0.625)
    assert score(torch.tensor(y), torch.tensor(pred), "accuracy") == pytest.approx(0.7)


def test_three_classes_mean_recall():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 0, 1, 1, 2, 2])
    assert score(y, pred, "balanced_accuracy") == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)


def test_unknown_metric_is_a_user_error():
    with pytest.raises(UserError, match="'f1'"):
        score(np.array([0]), np.array([0]), "f1")
