"""Size statistics on real data: sklearn digits, foolbox photos, imbalanced subsets, bad input."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from autotransfer.core.errors import UserError
from autotransfer.data.types import ImageDataset
from autotransfer.estimate.size import IMBALANCE_THRESHOLD, size_stats


def _digits() -> ImageDataset:
    d = load_digits()
    grey = (d.images * (255.0 / 16.0)).round().astype(np.uint8)  # (1797, 8, 8)
    return ImageDataset(
        spec="builtin:digits",
        images=np.repeat(grey[..., None], 3, axis=-1),
        labels=d.target.astype(np.int64),
        classes=[str(c) for c in range(10)],
        flip=False,
    )


def test_digits_balanced() -> None:
    ds = _digits()
    s = size_stats(ds)
    counts = np.bincount(ds.labels)
    assert s.images == 1797 and s.classes == 10
    assert s.class_counts == tuple(int(c) for c in counts)
    assert (s.per_class_min, s.per_class_max) == (counts.min(), counts.max()) == (174, 183)
    assert s.per_class_median == float(np.median(counts))
    assert s.imbalance == pytest.approx(183 / 174)
    assert s.largest_class == str(int(np.argmax(counts)))
    assert s.height == (8, 8.0, 8) and s.width == (8, 8.0, 8)
    assert s.channels == 1  # greyscale content stored as RGB
    assert s.metric == "accuracy"
    assert s.images_per_class == pytest.approx(179.7)


def test_imbalance_threshold_on_real_subsets() -> None:
    base = _digits()
    idx = np.concatenate([np.flatnonzero(base.labels == c)[:n] for c, n in {0: 90, 1: 30, 2: 60}.items()])
    ds = ImageDataset(
        spec="builtin:digits?classes=0-2",
        images=base.images[idx],
        labels=np.searchsorted([0, 1, 2], base.labels[idx]).astype(np.int64),
        classes=["0", "1", "2"],
    )
    s = size_stats(ds)
    assert (s.per_class_min, s.per_class_median, s.per_class_max) == (30, 60.0, 90)
    assert s.imbalance == pytest.approx(3.0)
    assert s.smallest_class == "1" and s.largest_class == "0"
    assert s.metric == "balanced_accuracy"
    # 45/30 = 1.5 is not above the threshold: plain accuracy
    idx = np.concatenate([np.flatnonzero(base.labels == 0)[:45], np.flatnonzero(base.labels == 1)[:30]])
    two = ImageDataset(spec="x", images=base.images[idx], labels=base.labels[idx], classes=["0", "1"])
    assert size_stats(two).imbalance == pytest.approx(IMBALANCE_THRESHOLD) == 1.5
    assert size_stats(two).metric == "accuracy"


def test_mixed_sizes_and_colour_from_real_photos() -> None:
    spec = importlib.util.find_spec("foolbox")  # its sample photos, without importing it
    assert spec is not None and spec.submodule_search_locations
    root = os.path.join(spec.submodule_search_locations[0], "data")
    images, labels = [], []
    for label, prefix in enumerate(("cifar10_", "imagenet_")):
        for name in sorted(f for f in os.listdir(root) if f.startswith(prefix))[:6]:
            images.append(np.asarray(Image.open(os.path.join(root, name)).convert("RGB")))
            labels.append(label)
    ds = ImageDataset(spec="folder:foolbox", images=images, labels=np.array(labels), classes=["cifar", "imagenet"])
    s = size_stats(ds)
    hs = [im.shape[0] for im in images]
    assert s.height == (min(hs), float(np.median(hs)), max(hs))
    assert s.height[0] == 32 and s.height[2] > 200
    assert s.channels == 3
    assert s.metric == "accuracy" and s.imbalance == 1.0


def test_one_class_is_a_user_error() -> None:
    ds = _digits()
    idx = np.flatnonzero(ds.labels == 3)
    one = ImageDataset(
        spec="builtin:digits?classes=3", images=ds.images[idx], labels=np.zeros(len(idx), np.int64), classes=["3"]
    )
    with pytest.raises(UserError, match=r"builtin:digits\?classes=3.*fewer than 2 classes"):
        size_stats(one)


def test_one_image_class_is_a_user_error() -> None:
    ds = _digits()
    idx = np.concatenate([np.flatnonzero(ds.labels == 0)[:20], np.flatnonzero(ds.labels == 1)[:1]])
    bad = ImageDataset(
        spec="builtin:digits?n=21", images=ds.images[idx], labels=ds.labels[idx], classes=["zero", "one"]
    )
    with pytest.raises(UserError) as err:
        size_stats(bad)
    message = str(err.value)
    assert "builtin:digits?n=21" in message and "'one'" in message and "\n" not in message


def test_empty_declared_class_is_a_user_error() -> None:
    ds = _digits()
    idx = np.flatnonzero(ds.labels < 3)
    bad = ImageDataset(spec="d", images=ds.images[idx], labels=ds.labels[idx], classes=["0", "1", "2", "ghost"])
    with pytest.raises(UserError, match="'ghost' \\(0 images\\)"):
        size_stats(bad)


def test_unlabelled_is_a_user_error() -> None:
    ds = _digits()
    with pytest.raises(UserError, match="no labels"):
        size_stats(ImageDataset(spec="d", images=ds.images, labels=None, classes=ds.classes))
