"""The benchmark's unlabelled pool (issue 18 §2): images of the target's own pool outside both the
study's subsample and the judge set, labels removed, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from autotransfer.core.errors import UserError
from autotransfer.data import load_dataset, stratified_subsample, unlabelled_pool, unseen_subset
from autotransfer.data.sampling import subsample_indices
from autotransfer.data.types import ImageDataset


def _indexed(n: int, classes: int = 4) -> ImageDataset:
    """A real-shaped dataset whose every image carries its own index in its pixels."""
    images = np.zeros((n, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 0, 1] = np.arange(n) // 256
    return ImageDataset("test:indexed", images, np.arange(n) % classes, [f"c{i}" for i in range(classes)])


def _ids(ds: ImageDataset) -> set[int]:
    images = np.asarray(ds.images)
    return set((images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)).tolist())


@pytest.mark.parametrize("limit", [50, 300])
def test_the_pool_excludes_the_subsample_and_the_judge_set(limit):
    ds = _indexed(600)
    pool = unlabelled_pool(ds, 100, 3, 10_000, limit=limit, judge_seed=7)
    study = _ids(stratified_subsample(ds, 100, seed=3))
    judge = _ids(unseen_subset(ds, 100, 3, limit=limit, judge_seed=7))
    assert pool.labels is None and not pool.labelled
    assert not _ids(pool) & study and not _ids(pool) & judge
    assert _ids(pool) | study | judge == set(range(600))  # with a large count: everything else
    assert len(pool) == 600 - 100 - min(limit, 500)


def test_the_pool_is_capped_seeded_and_in_dataset_order():
    ds = _indexed(600)
    a = unlabelled_pool(ds, 100, 0, 120, limit=200)
    b = unlabelled_pool(ds, 100, 0, 120, limit=200)
    c = unlabelled_pool(ds, 100, 1, 120, limit=200)
    assert len(a) == 120 and _ids(a) == _ids(b) and _ids(a) != _ids(c)
    order = sorted(_ids(a))
    images = np.asarray(a.images)
    assert (images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)).tolist() == order
    assert "unlabelled" in a.spec and "count=120" in a.spec
    assert a.fingerprint == b.fingerprint


def test_the_pool_of_a_real_builtin_leaves_its_study_and_judge_images_out():
    full = load_dataset("builtin:digits")
    pool = unlabelled_pool(full, 160, 0, 300)
    assert len(pool) == 300 and pool.labels is None and pool.classes == full.classes
    taken = set(subsample_indices(full, 160, 0).tolist())
    # the pool's images are real digits images, none of them one of the study's
    flat = np.asarray(full.images).reshape(len(full), -1)
    index = {row.tobytes(): i for i, row in enumerate(flat)}
    pool_rows = [index[row.tobytes()] for row in np.asarray(pool.images).reshape(len(pool), -1)]
    assert not set(pool_rows) & taken


def test_no_room_for_a_pool_is_one_line():
    ds = _indexed(60)
    with pytest.raises(UserError, match="no image for an unlabelled pool"):
        unlabelled_pool(ds, 40, 0, 10, limit=1000)
    with pytest.raises(UserError, match="positive integer"):
        unlabelled_pool(ds, 10, 0, 0)
