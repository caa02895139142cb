"""Size statistics of a labelled target: images, classes, per-class counts, image sizes, metric."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from autotransfer.core.errors import UserError
from autotransfer.data.types import ImageDataset

__all__ = ["SizeStats", "size_stats", "IMBALANCE_THRESHOLD", "choose_metric"]

#: Above this max/min class-count ratio the search optimises balanced accuracy (docs/design.md:
#: ELPV's 69/31 split is ~2.2 and must not be scored by plain accuracy).
IMBALANCE_THRESHOLD = 1.5

# How many images (spread evenly over the set) are inspected to decide whether the content
# is greyscale (R == G == B everywhere); enough to be sure, cheap on 60k-image sets.
_GREY_SAMPLE = 256


@dataclass(frozen=True)
class SizeStats:
    """How big the target is and how its classes and images are shaped.

    Attributes:
        images: ``N``, the number of labelled images.
        classes: ``C``, the number of classes.
        class_counts: ``(C,)`` images per class, in class-index order.
        per_class_min, per_class_median, per_class_max: statistics of ``class_counts``.
        imbalance: ``per_class_max / per_class_min`` (1 = balanced).
        smallest_class, largest_class: names of a class with the min / max count.
        height, width: ``(min, median, max)`` image height and width in pixels.
        channels: 1 when every inspected image has R == G == B (greyscale content stored as
            RGB by the loader), else 3. The loaders convert to RGB, so this is the content's
            channel count, not the file's.
        metric: ``accuracy``, or ``balanced_accuracy`` when ``imbalance > IMBALANCE_THRESHOLD``.
    """

    images: int
    classes: int
    class_counts: tuple[int, ...]
    per_class_min: int
    per_class_median: float
    per_class_max: int
    imbalance: float
    smallest_class: str
    largest_class: str
    height: tuple[int, float, int]
    width: tuple[int, float, int]
    channels: int
    metric: str

    @property
    def images_per_class(self) -> float:
        """``N / C``."""
        return self.images / self.classes

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples become lists, numbers are Python ints/floats)."""
        out = asdict(self)
        for key in ("class_counts", "height", "width"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SizeStats":
        """The inverse of ``to_dict``."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        kwargs["class_counts"] = tuple(int(c) for c in kwargs["class_counts"])
        h, w = kwargs["height"], kwargs["width"]
        kwargs["height"] = (int(h[0]), float(h[1]), int(h[2]))
        kwargs["width"] = (int(w[0]), float(w[1]), int(w[2]))
        return cls(**kwargs)


def choose_metric(imbalance: float) -> str:
    """``balanced_accuracy`` when ``imbalance > IMBALANCE_THRESHOLD``, else ``accuracy``."""
    return "balanced_accuracy" if imbalance > IMBALANCE_THRESHOLD else "accuracy"


def size_stats(ds: ImageDataset) -> SizeStats:
    """Count images and classes, per-class statistics, image sizes and the metric.

    Args:
        ds: a labelled dataset; ``ds.images`` is ``(N, H, W, 3)`` or a list of ``(H_i, W_i, 3)``.

    Raises:
        UserError: unlabelled data, fewer than 2 classes, a label outside ``classes``, or a
            class with fewer than 2 images (the message names the dataset and the class).
    """
    if ds.labels is None:
        raise UserError(f"dataset {ds.spec!r} has no labels; the estimator needs a labelled target")
    labels = np.asarray(ds.labels)
    if labels.ndim != 1 or len(labels) != len(ds):
        raise UserError(f"dataset {ds.spec!r} has {len(labels)} labels for {len(ds)} images; give one label per image")
    if len(ds.classes) < 2:
        raise UserError(
            f"dataset {ds.spec!r} has fewer than 2 classes (classes={ds.classes!r}); "
            "a classification target needs at least 2"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(ds.classes)):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise UserError(f"dataset {ds.spec!r} has a label outside [0, {len(ds.classes) - 1}], but got {bad!r}")
    counts = np.bincount(labels.astype(np.int64), minlength=len(ds.classes))
    thin = np.flatnonzero(counts < 2)
    if len(thin):
        shown = ", ".join(f"{ds.classes[i]!r} ({int(counts[i])} images)" for i in thin[:5])
        more = f" and {len(thin) - 5} more" if len(thin) > 5 else ""
        raise UserError(
            f"dataset {ds.spec!r}: class {shown}{more} has fewer than 2 images; add images or remove the class"
        )
    heights, widths = _image_sizes(ds)
    imbalance = float(counts.max() / counts.min())
    return SizeStats(
        images=int(len(labels)),
        classes=int(len(ds.classes)),
        class_counts=tuple(int(c) for c in counts),
        per_class_min=int(counts.min()),
        per_class_median=float(np.median(counts)),
        per_class_max=int(counts.max()),
        imbalance=imbalance,
        smallest_class=str(ds.classes[int(np.argmin(counts))]),
        largest_class=str(ds.classes[int(np.argmax(counts))]),
        height=(int(heights.min()), float(np.median(heights)), int(heights.max())),
        width=(int(widths.min()), float(np.median(widths)), int(widths.max())),
        channels=_content_channels(ds),
        metric=choose_metric(imbalance),
    )


def _image_sizes(ds: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` heights and ``(N,)`` widths."""
    if isinstance(ds.images, np.ndarray):
        n, h, w = ds.images.shape[:3]
        return np.full(n, h), np.full(n, w)
    shapes = np.array([image.shape[:2] for image in ds.images], dtype=np.int64).reshape(-1, 2)
    return shapes[:, 0], shapes[:, 1]


def _content_channels(ds: ImageDataset) -> int:
    """1 if the inspected images are greyscale stored as RGB, else 3."""
    n = len(ds)
    index = np.unique(np.linspace(0, n - 1, num=min(n, _GREY_SAMPLE)).astype(np.int64))
    for i in index:
        image = np.asarray(ds.images[i])
        if image.ndim == 2 or image.shape[-1] == 1:
            continue
        if not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])):
            return 3
    return 1
