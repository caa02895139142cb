"""Resize datasets to square arrays, with a decoded-and-resized image cache on disk."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from autotransfer.core.errors import InvalidValueError
from autotransfer.core.paths import cache_dir
from autotransfer.data.types import ImageDataset

__all__ = ["to_array", "resize_square", "atomic_save", "worker_count"]

# Bump when the resize algorithm changes: old cache entries then stop matching.
_RESIZE_VERSION = "pil-bicubic-v1"


def worker_count() -> int:
    """Threads for Pillow work (it releases the GIL): the usable CPU count, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _is_grey(image: np.ndarray) -> bool:
    if image.strides[-1] == 0:  # a broadcast grey view
        return True
    return bool(np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2]))


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(size, size, 3)`` uint8.

    Pillow bicubic (antialiased when shrinking) so that the shorter side is ``size``, then a
    centre crop of the longer side. Grey images are resized as one channel (same result,
    a third of the work).
    """
    height, width = image.shape[:2]
    if height == size and width == size:
        return np.array(image, dtype=np.uint8, copy=True)
    grey = _is_grey(image)
    pil = Image.fromarray(np.ascontiguousarray(image[:, :, 0] if grey else image))
    scale = size / min(height, width)
    new_w = max(size, round(width * scale))
    new_h = max(size, round(height * scale))
    pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if (new_w, new_h) != (size, size):
        pil = pil.crop((left, top, left + size, top + size))
    out = np.asarray(pil, dtype=np.uint8)
    if grey:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return out


def _resize_all(ds: ImageDataset, size: int) -> np.ndarray:
    count = len(ds)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    images = ds.images

    def work(bounds: tuple[int, int]) -> None:
        for i in range(*bounds):
            out[i] = resize_square(images[i], size)

    workers = worker_count()
    chunk = max(1, -(-count // (workers * 4)))
    ranges = [(start, min(count, start + chunk)) for start in range(0, count, chunk)]
    if workers == 1 or len(ranges) <= 1:
        for bounds in ranges:
            work(bounds)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, ranges))
    return out


def atomic_save(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(write):x}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _cache_path(ds: ImageDataset, size: int) -> Path:
    return cache_dir() / "images" / f"{ds.fingerprint}_{size}_{_RESIZE_VERSION}.npy"


def to_array(ds: ImageDataset, size: int, *, cache: bool = True) -> np.ndarray:
    """All images of ``ds`` as an ``(N, size, size, 3)`` uint8 array.

    Each image is resized with Pillow bicubic (antialiased) so its shorter side is ``size``,
    then centre-cropped. With ``cache`` the result is kept under ``cache_dir()/images/``,
    keyed by ``ds.fingerprint`` and ``size``, so later trials and runs load it instead of
    decoding and resizing again.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InvalidValueError(f"size must be a positive integer but got {size!r}")
    size = int(size)
    expected = (len(ds), size, size, 3)
    path = _cache_path(ds, size) if cache else None
    if path is not None and path.exists():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == expected and cached.dtype == np.uint8:
                return cached
        except (OSError, ValueError, EOFError):
            pass  # a damaged entry: rebuild it below
    if len(ds) == 0:
        return np.zeros(expected, dtype=np.uint8)
    array = _resize_all(ds, size)
    if path is not None:
        atomic_save(path, lambda handle: np.save(handle, array, allow_pickle=False))
    return array
