"""The in-memory dataset every part of autotransfer passes around."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from autotransfer.core.errors import InvalidValueError

__all__ = ["ImageDataset", "content_fingerprint"]

#: ``content_fingerprint`` hashes whole-array datasets this many bytes at a time.
_HASH_CHUNK_BYTES = 64 << 20


def content_fingerprint(images: np.ndarray | list[np.ndarray], labels: np.ndarray | None, classes: list[str]) -> str:
    """sha256 of pixels (with shapes), labels and class names, hashed in chunks so a large (or
    broadcast grey) ``(N, H, W, 3)`` array is never copied whole."""
    digest = hashlib.sha256()
    if isinstance(images, np.ndarray):
        digest.update(str(images.shape).encode())
        per_image = max(1, int(np.prod(images.shape[1:], dtype=np.int64)))
        step = max(1, _HASH_CHUNK_BYTES // per_image)
        for start in range(0, len(images), step):
            digest.update(np.ascontiguousarray(images[start : start + step]).tobytes())
    else:
        for image in images:
            digest.update(str(image.shape).encode())
            digest.update(np.ascontiguousarray(image).tobytes())
    if labels is not None:
        digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    digest.update("\x00".join(classes).encode())
    return digest.hexdigest()


@dataclass
class ImageDataset:
    """A small image dataset held in memory as RGB uint8.

    Attributes:
        spec: the spec string it was loaded from (``builtin:digits``, ``folder:/x``...).
        images: an ``(N, H, W, 3)`` uint8 array when all images share a size, else a list
            of ``(H_i, W_i, 3)`` uint8 arrays.
        labels: ``(N,)`` int64 class indices into ``classes``, or ``None`` when unlabelled.
        classes: class names, index ``i`` names label ``i``.
        flip: whether horizontal flips are a valid augmentation (False for digits, text).
        notes: human-readable notes gathered while loading (capping, skipped files...).
        skipped: how many files were skipped (corrupt or non-image files, missing manifest
            rows, symbolic links out of the folder, into a loop or to a file counted already).
        skipped_files: ``(path, reason)`` of each skipped file (``len == skipped`` for folder
            and CSV sources); see ``autotransfer.data.skipped_summary``.
    """

    spec: str
    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray | None
    classes: list[str]
    flip: bool = True
    notes: list[str] = field(default_factory=list)
    skipped: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def fingerprint(self) -> str:
        """sha256 of the content (pixels, labels, class names): equal data, equal key."""
        if self._fingerprint is None:
            self._fingerprint = content_fingerprint(self.images, self.labels, list(self.classes))
        return self._fingerprint

    def subset(self, indices: np.ndarray, spec_suffix: str = "") -> "ImageDataset":
        """A new dataset holding ``indices`` (in that order); notes are carried over."""
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, np.ndarray):
            images: np.ndarray | list[np.ndarray] = self.images[indices]
        else:
            images = [self.images[i] for i in indices]
        labels = None if self.labels is None else self.labels[indices]
        return ImageDataset(
            spec=self.spec + spec_suffix,
            images=images,
            labels=labels,
            classes=list(self.classes),
            flip=self.flip,
            notes=list(self.notes),
            skipped=self.skipped,
            skipped_files=list(self.skipped_files),
        )

    def class_counts(self) -> np.ndarray:
        """``(C,)`` number of images per class (requires labels)."""
        if self.labels is None:
            raise InvalidValueError(f"dataset {self.spec!r} has no labels")
        return np.bincount(self.labels, minlength=len(self.classes))
