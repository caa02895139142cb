"""Accuracy and balanced accuracy on hand-computed predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autotransfer.core.errors import UserError
from autotransfer.train import score
from autotransfer.train.metrics import score_interval


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


@pytest.mark.parametrize("correct,n", [(0, 15), (11, 15), (15, 15), (36, 45), (812, 1000)])
def test_score_interval_is_wilson(correct, n):
    from scipy.stats import binomtest

    expected = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = score_interval(correct / n, n)
    assert low == pytest.approx(expected.low, abs=2e-4) and high == pytest.approx(expected.high, abs=2e-4)


def test_score_interval_narrows_with_more_images_and_rejects_bad_input():
    widths = [np.subtract(*score_interval(0.8, n)[::-1]) for n in (15, 45, 150, 1000)]
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[0] > 0.35 and widths[-1] < 0.05  # 15 images: +-18 points; 1,000: +-2.5
    with pytest.raises(ValueError, match="score must lie"):
        score_interval(1.2, 10)
    with pytest.raises(ValueError, match="number of images"):
        score_interval(0.5, 0)
