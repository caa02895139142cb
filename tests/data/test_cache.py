"""to_array: resizing, the decoded-image cache and the chunked fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from autotransfer.data import ImageDataset, load_dataset, to_array
from autotransfer.data import cache as cache_module
from autotransfer.data.cache import resize_square


def _list_ds():
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (20, 40, 3), dtype=np.uint8),
        rng.integers(0, 256, (30, 10, 3), dtype=np.uint8),
        rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
    ]
    return ImageDataset(spec="mem", images=images, labels=np.array([0, 1, 1]), classes=["a", "b"])


def test_resize_shorter_side_then_centre_crop():
    ds = _list_ds()
    out = to_array(ds, 10, cache=False)
    assert out.shape == (3, 10, 10, 3) and out.dtype == np.uint8
    wide = Image.fromarray(ds.images[0]).resize((20, 10), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(out[0], np.asarray(wide)[:, 5:15])
    tall = Image.fromarray(ds.images[1]).resize((10, 30), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(out[1], np.asarray(tall)[10:20])
    np.testing.assert_array_equal(to_array(ds, 16, cache=False)[2], ds.images[2])


def test_grey_fast_path_matches_rgb_resize():
    grey = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    view = np.broadcast_to(grey[..., None], (28, 28, 3))
    rgb = Image.fromarray(np.ascontiguousarray(view)).resize((64, 64), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(resize_square(view, 64), np.asarray(rgb))
    np.testing.assert_array_equal(resize_square(np.ascontiguousarray(view), 64), np.asarray(rgb))


def test_cache_hit_is_identical_and_does_not_resize(private_cache, monkeypatch):
    ds = load_dataset("builtin:digits?classes=0-2&n=60")
    calls = []
    real = cache_module.resize_square

    def counting(image, size):
        calls.append(size)
        return real(image, size)

    monkeypatch.setattr(cache_module, "resize_square", counting)
    first = to_array(ds, 24)
    assert len(calls) == 60
    files = list((private_cache / "images").iterdir())
    assert len(files) == 1 and files[0].name.startswith(ds.fingerprint)
    assert not [f for f in files if f.name.endswith(".tmp")]
    calls.clear()
    second = to_array(load_dataset("builtin:digits?classes=0-2&n=60"), 24)
    assert calls == []
    np.testing.assert_array_equal(first, second)
    to_array(ds, 12)
    assert len(calls) == 60  # another size is another entry
    calls.clear()
    to_array(ds, 24, cache=False)
    assert len(calls) == 60


def test_damaged_cache_entry_is_rebuilt(private_cache):
    ds = _list_ds()
    good = to_array(ds, 8)
    path = next((private_cache / "images").iterdir())
    path.write_bytes(b"garbage")
    np.testing.assert_array_equal(to_array(ds, 8), good)


def test_chunked_fingerprint_equals_property(monkeypatch):
    from autotransfer.data import types as types_module

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    a = ImageDataset(spec="x", images=images, labels=np.zeros(50, np.int64), classes=["a", "b"])
    b = ImageDataset(spec="x", images=images.copy(), labels=np.zeros(50, np.int64), classes=["a", "b"])
    whole, listed = b.fingerprint, _list_ds().fingerprint  # hashed in one chunk
    monkeypatch.setattr(types_module, "_HASH_CHUNK_BYTES", 500)  # force many chunks
    fingerprint = types_module.content_fingerprint
    assert fingerprint(a.images, a.labels, a.classes) == whole
    ds = _list_ds()
    assert fingerprint(ds.images, ds.labels, ds.classes) == listed


def test_bad_size():
    with pytest.raises(ValueError, match="positive integer"):
        to_array(_list_ds(), 0)
