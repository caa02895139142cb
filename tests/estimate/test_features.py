"""Pooled features at every depth group, and source-head probabilities, on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autotransfer.backbones import group_outputs
from autotransfer.data import DeviceBatches, load_dataset, stratified_subsample, to_array
from autotransfer.data.types import ImageDataset
from autotransfer.estimate.features import (
    GroupFeatureCollector,
    extract_group_features,
    image_batches,
    pool,
    source_probabilities,
)


@pytest.fixture(scope="module")
def fashion_test():
    """60 held-out Fashion-MNIST test images of the laboratory's own classes 0-4."""
    return stratified_subsample(load_dataset("builtin:fashion-mnist?split=test&classes=0-4"), 60, seed=0)


def test_features_match_pooled_group_outputs(lab, fashion_test):
    lab.model.train()  # the extractor must run in eval mode and give the flags back
    feats = extract_group_features(lab, fashion_test, batch_size=16)
    assert lab.model.training
    lab.model.eval()

    assert len(feats) == lab.num_groups == 5
    images = to_array(fashion_test, lab.preprocessing.input_size, cache=False)
    x = torch.cat(list(image_batches(lab, images, batch_size=64)))
    with torch.no_grad():
        expected = [pool(out).numpy() for out in group_outputs(lab, x)]
    for got, want in zip(feats, expected):
        assert got.dtype == np.float32
        assert got.shape == (60, want.shape[1])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the last group's pooled width is what the source classifier takes
    assert feats[-1].shape[1] == lab.source_head.in_features


def test_source_head_probabilities_recover_the_source_classes(lab, fashion_test):
    final = extract_group_features(lab, fashion_test, batch_size=32)[-1]
    probs = source_probabilities(lab, final)
    assert probs.shape == (60, 5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    # the laboratory scores 0.93 on these held-out test images; its head on our pooled
    # features must predict them about as well
    accuracy = float(np.mean(probs.argmax(1) == fashion_test.labels))
    assert accuracy > 0.8


def test_device_batches_and_array_inputs_agree(lab, fashion_test):
    size = lab.preprocessing.input_size
    images = to_array(fashion_test, size, cache=False)
    pre = lab.preprocessing
    batches = DeviceBatches(
        images, fashion_test.labels, device="cpu", out_size=size, mean=pre.mean, std=pre.std, flip=False
    )
    from_batches = extract_group_features(lab, batches, batch_size=32)
    from_array = extract_group_features(lab, images, batch_size=7, channels_last=False)
    for a, b in zip(from_batches, from_array):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_collector_keeps_one_block_per_forward(lab, fashion_test):
    images = to_array(fashion_test, lab.preprocessing.input_size, cache=False)
    with torch.no_grad(), GroupFeatureCollector(lab) as collector:
        for x in image_batches(lab, images, batch_size=25):
            lab.model(x)
    feats = collector.features()
    assert [f.shape[0] for f in feats] == [60] * lab.num_groups
    # hooks are gone after the block
    with torch.no_grad():
        lab.model(x)
    assert [f.shape[0] for f in collector.features()] == [60] * lab.num_groups


def test_constant_images_give_finite_features(lab):
    levels = np.array([0, 255, 128, 7], dtype=np.uint8)
    images = np.broadcast_to(levels[:, None, None, None], (4, 32, 32, 3)).copy()
    ds = ImageDataset(spec="constant", images=images, labels=np.array([0, 1, 0, 1]), classes=["a", "b"])
    feats = extract_group_features(lab, ds)
    assert all(np.isfinite(f).all() for f in feats)
    probs = source_probabilities(lab, feats[-1])
    assert np.isfinite(probs).all()


def test_pool_and_bad_inputs(lab):
    tokens = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    np.testing.assert_allclose(pool(tokens).numpy(), tokens.mean(1).numpy())
    with pytest.raises(ValueError, match="uint8"):
        extract_group_features(lab, np.zeros((2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        extract_group_features(lab, np.zeros((2, 32, 32, 3), dtype=np.uint8), batch_size=0)
