"""Stratified subsampling and train/val/test splits."""

from __future__ import annotations

import numpy as np
import pytest

from autotransfer.core.errors import UserError
from autotransfer.data import ImageDataset, load_dataset, stratified_split, stratified_subsample
from autotransfer.data.sampling import allocate, subsample_indices


def _toy(counts, unlabelled=False):
    labels = np.concatenate([np.full(c, i, dtype=np.int64) for i, c in enumerate(counts)])
    images = np.zeros((len(labels), 2, 2, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256
    images[:, 0, 0, 1] = np.arange(len(labels)) // 256
    return ImageDataset(
        spec="toy",
        images=images,
        labels=None if unlabelled else labels,
        classes=[] if unlabelled else [f"c{i}" for i in range(len(counts))],
    )


def _ids(ds):
    ids = ds.images[:, 0, 0, 0].astype(int) + 256 * ds.images[:, 0, 0, 1].astype(int)
    return set(ids.tolist())


def test_subsample_is_stratified_and_seeded():
    ds = load_dataset("builtin:digits")
    sub = stratified_subsample(ds, 100, seed=0)
    assert len(sub) == 100
    counts = sub.class_counts()
    expected = 100 * ds.class_counts() / len(ds)
    assert np.all(np.abs(counts - expected) < 1)
    again = stratified_subsample(ds, 100, seed=0)
    np.testing.assert_array_equal(sub.images, again.images)
    other = stratified_subsample(ds, 100, seed=1)
    assert not np.array_equal(sub.images, other.images)
    assert sub.spec == "builtin:digits?n=100&seed=0"


def test_subsample_indices_name_the_kept_images():
    for unlabelled in (False, True):
        ds = _toy([60, 30, 10], unlabelled=unlabelled)
        idx = subsample_indices(ds, 25, seed=3)
        assert len(idx) == 25 and np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(stratified_subsample(ds, 25, seed=3).images, ds.images[idx])
    assert subsample_indices(ds, 500).tolist() == list(range(100))  # capped: every image


def test_subsample_keeps_every_class_when_possible():
    ds = _toy([90, 9, 1])
    sub = stratified_subsample(ds, 10, seed=0)
    assert sub.class_counts().tolist() == [8, 1, 1]
    tiny = stratified_subsample(ds, 2, seed=0)
    assert len(tiny) == 2 and tiny.class_counts()[0] >= 1
    assert allocate(np.array([5, 0, 5]), 4).tolist() == [2, 0, 2]
    assert allocate(np.array([3, 3, 3]), 100).tolist() == [3, 3, 3]


def test_subsample_caps_with_a_note():
    ds = _toy([3, 4])
    sub = stratified_subsample(ds, 50)
    assert len(sub) == 7
    assert "requested 50, capped at 7 (all the dataset has)" in sub.notes
    with pytest.raises(UserError, match="positive integer"):
        stratified_subsample(ds, 0)


def test_unlabelled_subsample_is_random_and_seeded():
    ds = _toy([40], unlabelled=True)
    a, b = stratified_subsample(ds, 10, seed=5), stratified_subsample(ds, 10, seed=5)
    assert len(a) == 10 and a.labels is None and _ids(a) == _ids(b)
    assert _ids(a) != _ids(stratified_subsample(ds, 10, seed=6))


def test_split_is_stratified_disjoint_and_covers():
    ds = load_dataset("builtin:digits")
    splits = stratified_split(ds, val=0.15, test=0.15, seed=0)
    sizes = [len(part) for part in splits]
    assert sum(sizes) == len(ds)
    assert abs(sizes[1] - 0.15 * len(ds)) < 12 and abs(sizes[2] - 0.15 * len(ds)) < 12
    toy = _toy([50, 20, 3, 2])
    parts = stratified_split(toy, val=0.2, test=0.2, seed=1)
    ids = [_ids(p) for p in parts]
    assert ids[0] | ids[1] | ids[2] == _ids(toy)
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for part in parts:
        assert part.class_counts()[:3].min() >= 1  # classes with >= 3 images everywhere
    assert parts.train.class_counts()[3] == 1 and parts.val.class_counts()[3] == 1
    assert parts.train.class_counts()[0] == 30
    for part in splits:
        assert part.class_counts().min() >= 1
    again = stratified_split(toy, val=0.2, test=0.2, seed=1)
    assert [_ids(p) for p in again] == ids


def test_split_errors_and_unlabelled():
    with pytest.raises(UserError, match="'c1' of toy has 1 image"):
        stratified_split(_toy([5, 1]))
    with pytest.raises(UserError, match="val \\+ test"):
        stratified_split(_toy([5, 5]), val=0.5, test=0.5)
    with pytest.raises(UserError, match="val fraction"):
        stratified_split(_toy([5, 5]), val=-0.1)
    parts = stratified_split(_toy([20], unlabelled=True), val=0.25, test=0.25)
    assert [len(p) for p in parts] == [10, 5, 5]
    no_test = stratified_split(_toy([10, 10]), val=0.2, test=0.0)
    assert len(no_test.test) == 0 and len(no_test.val) == 4


def test_capped_subsample_shares_images_and_key():
    ds = load_dataset("builtin:elpv4?classes=1-2")
    capped = stratified_subsample(ds, 10_000)
    assert capped.images is ds.images and capped.fingerprint == ds.fingerprint
    assert capped.labels is not ds.labels and len(capped) == 401


def test_the_judge_set_never_meets_the_studys_subsample():
    from autotransfer.core.errors import UserError
    from autotransfer.data import load_dataset, unseen_subset

    full = load_dataset("builtin:digits", require_labels=True)
    judge = unseen_subset(full, 200, seed=1, limit=300)
    seen = {bytes(x) for x in full.images[subsample_indices(full, 200, seed=1)]}
    assert len(judge) == 300 and not any(bytes(x) in seen for x in judge.images)
    counts = judge.class_counts()
    assert counts.max() - counts.min() <= 3  # stratified like the data (digits are balanced)
    np.testing.assert_array_equal(unseen_subset(full, 200, seed=1, limit=300).images, judge.images)  # one fixed draw
    with pytest.raises(UserError, match="no image outside the subsample"):
        unseen_subset(full, len(full), seed=0)
