"""Shared fixtures for the trial-loop tests: tiny real data (scikit-learn digits) at 32 px."""

from __future__ import annotations

import numpy as np
import pytest

from autotransfer.backbones import create_backbone
from autotransfer.data import DeviceBatches, load_dataset, stratified_split, stratified_subsample, to_array

SIZE = 32


@pytest.fixture
def torch_thread_count() -> int:
    """The trial-loop tests run on 2 threads (overrides the test-wide 1)."""
    return 2


@pytest.fixture(scope="session")
def digits_splits():
    """200 stratified digits images (10 classes): ~150 train / ~50 val."""
    ds = stratified_subsample(load_dataset("builtin:digits"), 200, seed=0)
    return stratified_split(ds, val=0.25, test=0.0, seed=0)


def batches(split, backbone, *, flip: bool = False, limit: int | None = None) -> DeviceBatches:
    pre = backbone.preprocessing
    images, labels = to_array(split, SIZE), np.asarray(split.labels)
    return DeviceBatches(
        images[:limit],
        labels[:limit],
        device="cpu",
        out_size=SIZE,
        mean=pre.mean,
        std=pre.std,
        flip=flip,
    )


def lite0():
    """A fresh efficientnet_lite0 (shipped ImageNet weights, zero head, 10 classes)."""
    return create_backbone("efficientnet_lite0", 10)


@pytest.fixture(scope="session")
def digits_batches(digits_splits):
    template = lite0()
    return batches(digits_splits.train, template), batches(digits_splits.val, template)


@pytest.fixture(scope="session")
def small_batches(digits_splits):
    """48 train / 24 val digits: enough for exactness checks of the cache."""
    template = lite0()
    return (batches(digits_splits.train, template, flip=True, limit=48), batches(digits_splits.val, template, limit=24))


def out_of_memory_above(backbone, limit: int):
    """Make ``backbone``'s model raise CUDA's out-of-memory error above ``limit`` images per
    forward pass (an injected OOM, on CPU)."""
    import torch

    original = backbone.model.forward

    def forward(x):
        if x.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return original(x)

    backbone.model.forward = forward
    return backbone
