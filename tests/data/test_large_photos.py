"""Folders of large photos are decoded at a reduced size (docs/design.md, "Memory")."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import autotransfer.data.folder as folder_module
from autotransfer.data import load_dataset
from autotransfer.data.cache import resize_square, to_array
from autotransfer.data.decode import decode_bytes
from autotransfer.data.folder import DECODE_SIDE


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth, photo-like RGB image (low-frequency waves and a few soft blobs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 6, 2).tolist() + [rng.uniform(0, 6)]
        wave = np.sin(2 * np.pi * (fx * x / width + fy * y / height) + phase)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.1 * width) ** 2))
        channels.append(127 + 80 * wave + 48 * blob)
    array = np.clip(np.stack(channels, axis=2), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def large_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for c, name in enumerate(["cats", "dogs"]):
        (root / name).mkdir()
        for i in range(2):
            photo(3000, 2000, seed=10 * c + i).save(root / name / f"{i}.jpg", quality=90)
    return root


def test_large_jpegs_load_reduced_with_labels_unchanged(large_tree, private_cache):
    reduced = load_dataset(str(large_tree))
    full = load_dataset(f"{large_tree}?decode=0", cache=False)
    assert reduced.classes == full.classes == ["cats", "dogs"]
    np.testing.assert_array_equal(reduced.labels, full.labels)
    assert full.images[0].shape == (2000, 3000, 3)
    for image in reduced.images:
        assert image.shape == (DECODE_SIDE, 768, 3)  # shorter side 512, aspect kept
    # the study's arrays match a plain full-size decode + resize within tolerance
    for size in (64, 224):
        ours = to_array(reduced, size, cache=False).astype(np.int16)
        plain = np.stack([resize_square(im, size) for im in full.images]).astype(np.int16)
        diff = np.abs(ours - plain)
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, (size, diff.mean())


def test_reduced_arrays_are_cached_by_content_and_side(large_tree, private_cache, monkeypatch):
    calls = []
    real = folder_module.decode_bytes

    def counting(data, **options):
        calls.append(options.get("max_side"))
        return real(data, **options)

    monkeypatch.setattr(folder_module, "decode_bytes", counting)
    first = load_dataset(str(large_tree))
    assert calls == [DECODE_SIDE] * 4
    assert len(list((private_cache / "decoded").glob(f"{DECODE_SIDE}-*/*.npy"))) == 4
    calls.clear()
    again = load_dataset(str(large_tree))
    assert calls == []
    assert first.fingerprint == again.fingerprint
    smaller = load_dataset(f"{large_tree}?decode=128")
    assert calls == [128] * 4
    assert all(min(im.shape[:2]) == 128 for im in smaller.images)


def test_any_format_is_reduced_and_small_images_are_untouched():
    big = io.BytesIO()
    photo(1200, 900, seed=3).save(big, format="PNG")
    assert decode_bytes(big.getvalue(), max_side=300).shape == (300, 400, 3)
    small = io.BytesIO()
    photo(40, 30, seed=4).save(small, format="JPEG")
    np.testing.assert_array_equal(decode_bytes(small.getvalue(), max_side=300), decode_bytes(small.getvalue()))
    # a portrait JPEG (shorter side is the width) keeps its orientation
    tall = io.BytesIO()
    photo(1000, 3000, seed=5).save(tall, format="JPEG")
    assert decode_bytes(tall.getvalue(), max_side=200).shape == (600, 200, 3)
