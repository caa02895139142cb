"""Pseudo-labels respect the threshold (issue 18 §2): ``select_pseudo_labels`` keeps exactly the
images whose top probability is at or above it, with the argmax label, in the pool's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autotransfer.train.pseudo import select_pseudo_labels


def test_pseudo_labels_keep_exactly_the_images_at_or_above_the_threshold():
    probs = np.array(
        [
            [0.95, 0.03, 0.02],  # kept: class 0
            [0.10, 0.89, 0.01],  # just below
            [0.05, 0.05, 0.90],  # exactly at the threshold: kept
            [0.34, 0.33, 0.33],  # unsure
            [0.00, 1.00, 0.00],  # kept: class 1
        ],
        dtype=np.float32,
    )
    pseudo = select_pseudo_labels(probs, 0.9)
    assert pseudo.indices.tolist() == [0, 2, 4]
    assert pseudo.labels.tolist() == [0, 2, 1]
    np.testing.assert_allclose(pseudo.confidences, [0.95, 0.90, 1.00])
    assert pseudo.per_class(3) == [1, 1, 1]


def test_every_kept_confidence_is_at_least_the_threshold_and_nothing_confident_is_left_out():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(scale=3.0, size=(500, 7)).astype(np.float32))
    probs = torch.softmax(logits, dim=1)  # a tensor is accepted as well
    for threshold in (0.3, 0.6, 0.9, 0.99):
        pseudo = select_pseudo_labels(probs, threshold)
        top = probs.max(1).values.numpy()
        assert np.all(pseudo.confidences >= threshold)
        assert set(pseudo.indices.tolist()) == set(np.flatnonzero(top >= threshold).tolist())
        assert np.array_equal(pseudo.labels, probs.argmax(1).numpy()[pseudo.indices])
        assert np.all(np.diff(pseudo.indices) > 0)  # the pool's order
    assert len(select_pseudo_labels(probs, 0.99).indices) < len(select_pseudo_labels(probs, 0.3).indices)


def test_an_empty_pool_or_no_confident_image_keeps_nothing():
    assert len(select_pseudo_labels(np.zeros((0, 4), np.float32), 0.5).indices) == 0
    flat = np.full((6, 4), 0.25, np.float32)
    pseudo = select_pseudo_labels(flat, 0.5)
    assert len(pseudo.indices) == 0 and pseudo.per_class(4) == [0, 0, 0, 0]


@pytest.mark.parametrize("threshold", [0, 1, 1.5, -0.1, float("nan"), True, "0.9"])
def test_a_threshold_outside_the_open_unit_interval_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        select_pseudo_labels(np.full((2, 2), 0.5, np.float32), threshold)


def test_probabilities_must_be_a_matrix_of_finite_non_negative_values():
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        select_pseudo_labels(np.ones(3, np.float32), 0.5)
    with pytest.raises(ValueError, match="finite"):
        select_pseudo_labels(np.array([[np.nan, 1.0]]), 0.5)
