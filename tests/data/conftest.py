"""Fixtures for the data tests: a private cache directory and tiny image trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """Point ``cache_dir()`` at an empty folder for this test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("AUTOTRANSFER_CACHE", str(root))
    return root


def write_mixed_tree(root: Path) -> Path:
    """An ImageFolder tree with grey, RGBA, palette, 16-bit PNGs, a JPEG, a corrupt PNG
    and a text file (the last two must be skipped)."""
    rng = np.random.default_rng(0)
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (12, 18), dtype=np.uint8), "L").save(root / "cat/grey.png")
    rgba = rng.integers(0, 256, (10, 10, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 0)  # fully transparent: black after compositing
    rgba[0, 1] = (200, 100, 50, 255)  # opaque: kept
    Image.fromarray(rgba, "RGBA").save(root / "cat/rgba.png")
    palette = Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8), "RGB").convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=16
    )
    palette.save(root / "cat/palette.png")
    deep = np.full((10, 10), 65535, dtype=np.uint16)
    deep[0, 0] = 0
    deep[0, 1] = 257 * 100
    Image.fromarray(deep).save(root / "dog/deep16.png")
    Image.fromarray(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8), "RGB").save(root / "dog/photo.jpg", quality=95)
    (root / "dog/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (root / "dog/notes.txt").write_text("not an image\n")
    return root


def write_tiny_tree(root: Path, classes: dict[str, int], size: int = 8) -> Path:
    """``classes`` maps class name -> image count; images are solid colours per class."""
    for label, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixel = np.array([label * 40 % 256, i * 7 % 256, 100], dtype=np.uint8)
            image = np.broadcast_to(pixel, (size, size, 3)).copy()
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    return root
