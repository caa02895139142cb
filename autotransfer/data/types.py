"""The in-memory dataset every part of autotransfer passes around."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ImageDataset"]


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
            from autotransfer.data.cache import fingerprint  # hashes in chunks, never copies whole

            self._fingerprint = fingerprint(self)
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
            raise ValueError(f"dataset {self.spec!r} has no labels")
        return np.bincount(self.labels, minlength=len(self.classes))
