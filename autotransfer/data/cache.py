"""Resize datasets to square arrays, with a decoded-and-resized image cache on disk, capped in size.

The cache (``core.paths.cache_dir()``: ``$AUTOTRANSFER_CACHE`` or ``~/.cache/autotransfer``) holds
``decoded/`` (folder and manifest images, decoded and reduced, keyed by their bytes: ``data.folder``),
``images/`` (whole datasets resized to a study's resolution: ``to_array``) and ``builtin/`` (the
built-in datasets' arrays). After each write, the least recently used entries are removed until the
three hold at most ``cache_limit()`` bytes (``$AUTOTRANSFER_CACHE_MAX``, default 2 GiB); a cache hit
counts as a use. ``cache_info`` and ``clear_cache`` back ``autotransfer cache info`` and ``cache clear``.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from autotransfer.core.errors import InvalidValueError, UserError
from autotransfer.core.paths import cache_dir
from autotransfer.data.types import ImageDataset

__all__ = [
    "to_array",
    "resize_square",
    "atomic_save",
    "worker_count",
    "CACHE_MAX_ENV",
    "DEFAULT_CACHE_MAX",
    "CacheInfo",
    "cache_limit",
    "cache_info",
    "prune_cache",
    "clear_cache",
    "mark_used",
]

#: The environment variable that caps the cache: bytes, or a size with K, M, G or T (``500M``,
#: ``2G``, ``1.5GiB``); ``none`` lifts the cap; ``0`` keeps nothing.
CACHE_MAX_ENV = "AUTOTRANSFER_CACHE_MAX"
#: The cap when ``$AUTOTRANSFER_CACHE_MAX`` is not set: 2 GiB.
DEFAULT_CACHE_MAX = 2 * 1024**3
#: The cache's sub-folders and the file endings autotransfer writes there: only those are counted,
#: pruned and cleared, so a cache root shared with other files never loses them.
_OWNED = {"decoded": (".npy", ".bad", ".tmp"), "images": (".npy", ".tmp"), "builtin": (".npz", ".tmp")}
#: A temporary file younger than this may still be being written by another process: never pruned.
_TMP_GRACE_S = 3600.0

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
    decoding and resizing again (the cache is capped: ``prune_cache``).
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
                mark_used(path)
                return cached
        except (OSError, ValueError, EOFError):
            pass  # a damaged entry: rebuild it below
    if len(ds) == 0:
        return np.zeros(expected, dtype=np.uint8)
    array = _resize_all(ds, size)
    if path is not None:
        try:
            atomic_save(path, lambda handle: np.save(handle, array, allow_pickle=False))
        except OSError:
            pass  # a read-only or full cache costs speed only
        prune_cache()
    return array


def cache_limit() -> int | None:
    """The cache's cap in bytes from ``$AUTOTRANSFER_CACHE_MAX`` (``DEFAULT_CACHE_MAX`` when unset;
    ``None`` for ``none``: no cap); a value that is not a size is a one-line ``UserError``."""
    raw = os.environ.get(CACHE_MAX_ENV, "").strip().lower()
    if not raw:
        return DEFAULT_CACHE_MAX
    if raw in ("none", "unlimited", "off"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", raw)
    if match is None:
        raise UserError(
            f"${CACHE_MAX_ENV} must be a size such as 2G, 500M or 0 (or none for no cap), but got"
            f" {os.environ.get(CACHE_MAX_ENV)!r}"
        )
    return int(float(match[1]) * 1024 ** " kmgt".index(match[2] or " "))


@dataclass(frozen=True)
class CacheInfo:
    """What the cache holds: its ``root``, the ``files`` and ``bytes`` autotransfer wrote there,
    and the cap (``limit`` bytes; ``None``: no cap)."""

    root: Path
    files: int
    bytes: int
    limit: int | None


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    """``(last use, size, path)`` of every file autotransfer wrote under ``root`` (``_OWNED``)."""
    out = []
    for sub, endings in _OWNED.items():
        for folder, _, names in os.walk(root / sub):
            for name in names:
                if not name.endswith(endings):
                    continue
                path = Path(folder) / name
                try:
                    info = path.stat()
                except OSError:  # removed meanwhile by another process
                    continue
                out.append((info.st_mtime, info.st_size, path))
    return out


def cache_info() -> CacheInfo:
    """The cache's root, what it holds and its cap."""
    root = cache_dir()
    entries = _entries(root)
    return CacheInfo(root, len(entries), sum(size for _, size, _ in entries), cache_limit())


def mark_used(path: Path) -> None:
    """Record a cache hit on ``path`` (its mtime is the last use the pruning orders by)."""
    try:
        os.utime(path)
    except OSError:  # read-only cache, or pruned meanwhile: only the order suffers
        pass


def _remove(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except OSError:
        return 0
    return size


def prune_cache(limit: int | None = -1) -> tuple[int, int]:
    """Remove the least recently used entries until the cache holds at most ``limit`` bytes
    (default ``cache_limit()``; ``None``: no cap, nothing removed); returns ``(files, bytes)``
    removed. Temporary files younger than an hour (another process may be writing them) stay."""
    limit = cache_limit() if limit == -1 else limit
    if limit is None:
        return 0, 0
    entries = sorted(_entries(cache_dir()))
    total = sum(size for _, size, _ in entries)
    removed = freed = 0
    now = time.time()
    for mtime, size, path in entries:
        if total <= limit:
            break
        if path.name.endswith(".tmp") and now - mtime < _TMP_GRACE_S:
            continue
        gone = _remove(path)
        removed, freed, total = removed + 1, freed + gone, total - size
    return removed, freed


def clear_cache() -> tuple[int, int]:
    """Remove everything autotransfer cached (``decoded/``, ``images/``, ``builtin/``; other files
    under the cache root are left alone); returns ``(files, bytes)`` removed."""
    root = cache_dir()
    removed = freed = 0
    for _, _, path in _entries(root):
        freed += _remove(path)
        removed += 1
    for sub in _OWNED:
        for folder, _, _ in sorted(os.walk(root / sub), key=lambda item: -len(item[0])):
            try:
                os.rmdir(folder)  # only empty folders go
            except OSError:
                pass
    return removed, freed
