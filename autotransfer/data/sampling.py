"""Seeded stratified subsampling and train/val/test splits of an ImageDataset."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from autotransfer.core.errors import UserError
from autotransfer.data.types import ImageDataset

__all__ = [
    "DataSplits",
    "stratified_subsample",
    "unseen_subset",
    "unlabelled_pool",
    "subsample_indices",
    "stratified_split",
    "allocate",
]


class DataSplits(NamedTuple):
    """Disjoint train / validation / test parts of one dataset."""

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))


def allocate(counts: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Split ``n`` draws over classes with ``counts`` ``(C,)`` proportionally.

    Largest-remainder rounding; every non-empty class gets at least 1 when ``n`` allows it;
    no class gets more than it has. Ties are broken by a seeded random order.
    Returns ``(C,)`` int64 summing to ``min(n, counts.sum())``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    n = min(int(n), total)
    if total == 0 or n <= 0:
        return np.zeros_like(counts)
    tiebreak = np.random.default_rng(seed).random(len(counts))
    ideal = n * counts / total
    alloc = np.minimum(np.floor(ideal).astype(np.int64), counts)
    nonempty = counts > 0
    floor_one = n >= int(nonempty.sum())
    if floor_one:
        alloc[nonempty] = np.maximum(alloc[nonempty], 1)
    while alloc.sum() > n:  # only after the >=1 bumps: take from the most over-served
        allowed = alloc > (1 if floor_one else 0)
        order = np.lexsort((tiebreak, -(alloc - ideal)))
        i = next(j for j in order if allowed[j])
        alloc[i] -= 1
    while alloc.sum() < n:  # give to the largest remainder that still has images
        allowed = alloc < counts
        order = np.lexsort((tiebreak, -(ideal - alloc)))
        i = next(j for j in order if allowed[j])
        alloc[i] += 1
    return alloc


def _suffix(spec: str, n: int, seed: int) -> str:
    if "?" in spec and "n=" not in spec.rpartition("?")[2]:
        return f"&n={n}&seed={seed}"
    if "?" not in spec:
        return f"?n={n}&seed={seed}"
    return f"|n={n}&seed={seed}"


def subsample_indices(ds: ImageDataset, n: int, seed: int = 0) -> np.ndarray:
    """``(min(n, len(ds)),)`` sorted indices of the images ``stratified_subsample`` keeps."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"subsample size must be a positive integer but got {n!r}")
    n = int(n)
    total = len(ds)
    if n >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    if ds.labels is None:
        return np.sort(rng.choice(total, size=n, replace=False))
    labels = np.asarray(ds.labels)
    alloc = allocate(np.bincount(labels, minlength=len(ds.classes)), n, seed)
    parts = []
    for label, take in enumerate(alloc):
        if take:
            members = np.flatnonzero(labels == label)
            parts.append(rng.choice(members, size=int(take), replace=False))
    return np.sort(np.concatenate(parts))


def unseen_subset(ds: ImageDataset, n: int, seed: int, *, limit: int = 1000, judge_seed: int = 12345) -> ImageDataset:
    """Up to ``limit`` images of ``ds`` outside the study's subsample ``stratified_subsample(ds, n, seed)``
    (stratified, drawn with ``judge_seed``): a judge set that no trial trained or validated on."""
    unseen = np.setdiff1d(np.arange(len(ds)), subsample_indices(ds, n, seed))
    if len(unseen) == 0:
        raise UserError(f"{ds.spec}: N = {n} leaves no image outside the subsample to judge on")
    return stratified_subsample(ds.subset(unseen), min(limit, len(unseen)), seed=judge_seed)


def _judge_indices(ds: ImageDataset, unseen: np.ndarray, limit: int, judge_seed: int) -> np.ndarray:
    """The indices into ``ds`` of ``unseen_subset``'s judge set, drawn from ``unseen`` as it draws them."""
    if len(unseen) == 0:
        return unseen
    # subsample_indices reads only the labels and the length: no pixels are copied
    stub = ImageDataset(
        spec=ds.spec,
        images=np.zeros((len(unseen), 0, 0, 3), dtype=np.uint8),
        labels=None if ds.labels is None else np.asarray(ds.labels)[unseen],
        classes=list(ds.classes),
    )
    return unseen[subsample_indices(stub, min(limit, len(unseen)), judge_seed)]


def unlabelled_pool(
    ds: ImageDataset, n: int, seed: int, count: int, *, limit: int = 1000, judge_seed: int = 12345
) -> ImageDataset:
    """Up to ``count`` images of ``ds`` that are neither in the study's subsample
    (``stratified_subsample(ds, n, seed)``) nor in the judge set (``unseen_subset(ds, n, seed,
    limit=limit, judge_seed=judge_seed)``), with their labels removed: the unlabelled images of
    the target's own pool that a benchmark hands to self-training (``tune(..., unlabelled=pool)``).

    Drawn with a seeded random order (``seed``), so equal arguments give an equal pool; the pool
    keeps the dataset's order. An empty pool is a ``UserError``.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise UserError(f"the unlabelled pool's size must be a positive integer but got {count!r}")
    unseen = np.setdiff1d(np.arange(len(ds)), subsample_indices(ds, n, seed))
    rest = np.setdiff1d(unseen, _judge_indices(ds, unseen, limit, judge_seed))
    if len(rest) == 0:
        raise UserError(f"{ds.spec}: N = {n} and the judge set leave no image for an unlabelled pool")
    chosen = np.sort(np.random.default_rng(seed).permutation(rest)[: int(count)])
    pool = ds.subset(chosen, f"#unlabelled?n={n}&seed={seed}&count={int(count)}&judge_seed={judge_seed}")
    pool.labels = None
    return pool


def stratified_subsample(ds: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """A seeded subset of ``n`` images with class proportions kept.

    Every class keeps at least one image when ``n`` >= the number of classes. When
    ``n >= len(ds)`` all images are returned and a note says the request was capped.
    Unlabelled datasets get a plain seeded random subset. Indices keep dataset order
    (``subsample_indices``).
    """
    chosen = subsample_indices(ds, n, seed)  # checks n
    if len(chosen) == len(ds):  # everything: share the images (and the fingerprint), copy the rest
        notes = list(ds.notes)
        if n > len(ds):
            notes.append(f"requested {n}, capped at {len(ds)} (all the dataset has)")
        labels = None if ds.labels is None else np.array(ds.labels)
        images = list(ds.images) if isinstance(ds.images, list) else ds.images
        return dataclasses.replace(ds, images=images, labels=labels, notes=notes)
    return ds.subset(chosen, _suffix(ds.spec, int(n), seed))


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float, np.floating)) or not 0.0 <= float(value) < 1.0:
        raise UserError(f"{name} fraction must be in [0, 1) but got {value!r}")
    return float(value)


def _class_parts(count: int, val: float, test: float) -> tuple[int, int]:
    """How many of a class's ``count`` images go to (val, test); the rest train."""
    if count >= 3:
        n_val = max(1, _round(count * val)) if val > 0 else 0
        n_test = max(1, _round(count * test)) if test > 0 else 0
        while count - n_val - n_test < 1:
            if n_val >= n_test and n_val > (1 if val > 0 else 0):
                n_val -= 1
            elif n_test > (1 if test > 0 else 0):
                n_test -= 1
            else:  # pragma: no cover - impossible for count >= 3
                break
        return n_val, n_test
    if count == 2:
        return (1, 0) if val > 0 else (0, 1)
    return 0, 0


def stratified_split(ds: ImageDataset, val: float = 0.15, test: float = 0.15, seed: int = 0) -> DataSplits:
    """Seeded, stratified, disjoint train/val/test splits that together cover ``ds``.

    Every class with >= 3 images appears in each non-empty split; a class with 2 images
    goes to train and val (or test when ``val`` is 0). Raises UserError when a class has
    fewer than 2 images (and a val or test split is asked for).
    """
    val = _check_fraction("val", val)
    test = _check_fraction("test", test)
    if val + test >= 1.0:
        raise UserError(f"val + test must be below 1 but got {val} + {test} = {val + test}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    if ds.labels is None:
        perm = rng.permutation(len(ds))
        n_val, n_test = _round(len(ds) * val), _round(len(ds) * test)
        parts["val"].append(perm[:n_val])
        parts["test"].append(perm[n_val : n_val + n_test])
        parts["train"].append(perm[n_val + n_test :])
    else:
        labels = np.asarray(ds.labels)
        counts = np.bincount(labels, minlength=len(ds.classes))
        if val + test > 0:
            for label, count in enumerate(counts):
                if count < 2:
                    raise UserError(
                        f"class {ds.classes[label]!r} of {ds.spec} has {count} image(s); a "
                        "train/val/test split needs at least 2 per class: add images or leave "
                        "the class out with ?classes="
                    )
        for label, count in enumerate(counts):
            members = rng.permutation(np.flatnonzero(labels == label))
            n_val, n_test = _class_parts(int(count), val, test)
            parts["val"].append(members[:n_val])
            parts["test"].append(members[n_val : n_val + n_test])
            parts["train"].append(members[n_val + n_test :])
    subsets = {
        name: ds.subset(
            np.sort(np.concatenate(chunks)).astype(np.int64) if chunks else np.zeros(0, np.int64),
            f"#{name}",
        )
        for name, chunks in parts.items()
    }
    return DataSplits(subsets["train"], subsets["val"], subsets["test"])
