"""A study's data, prepared once: the seeded subsample, its splits, device-resident batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from autotransfer.core.settings import StudySettings

__all__ = ["PreparedData", "prepare_data", "split_batches", "device_batches"]


@dataclass
class PreparedData:
    """A study's data: the seeded subsample, its splits, and device-resident batch sources."""

    dataset: Any
    train: Any
    val: Any
    test: Any
    fingerprint: str
    device: torch.device
    batches: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def trainval(self) -> Any:
        """Train and validation images together: all the labels a study may look at (never test)."""
        a, b = self.train, self.val
        same_shape = (
            isinstance(a.images, np.ndarray)
            and isinstance(b.images, np.ndarray)
            and a.images.shape[1:] == b.images.shape[1:]
        )
        return type(a)(
            spec=self.dataset.spec + "#trainval",
            images=np.concatenate([a.images, b.images]) if same_shape else [*a.images, *b.images],
            labels=np.concatenate([a.labels, b.labels]),
            classes=list(a.classes),
            flip=a.flip,
            notes=list(self.dataset.notes),
            skipped=self.dataset.skipped,
            skipped_files=list(self.dataset.skipped_files),
        )


def prepare_data(settings: StudySettings, *, device: torch.device | None = None) -> PreparedData:
    """Load the target, subsample (seeded, stratified), split, and put each split on the device."""
    from autotransfer.data import load_dataset, stratified_split, stratified_subsample
    from autotransfer.train import resolve_device

    dataset = load_dataset(settings.target, require_labels=True)
    if settings.n is not None:
        dataset = stratified_subsample(dataset, settings.n, seed=settings.seed)
    splits = stratified_split(dataset, val=settings.val_frac, test=settings.test_frac, seed=settings.seed)
    return PreparedData(
        dataset=dataset,
        train=splits.train,
        val=splits.val,
        test=splits.test,
        fingerprint=dataset.fingerprint,
        device=device or resolve_device(settings.device),
    )


def split_batches(prepared: PreparedData, which: str, settings: StudySettings, preprocessing) -> Any:
    """``DeviceBatches`` for a split (``train``, ``val``, ``test`` or ``trainval``), built once."""
    if which not in prepared.batches:
        split = getattr(prepared, which)  # train, val, test or trainval
        prepared.batches[which] = device_batches(split, settings, preprocessing, prepared.device)
    return prepared.batches[which]


def device_batches(split: Any, settings: StudySettings, preprocessing, device: torch.device) -> Any:
    """``DeviceBatches`` of any labelled ``split`` at the study's resolution and normalisation,
    stored and batched channels_last (what the trial step consumes). Their ``fingerprint`` is the
    split's content fingerprint (already computed by ``to_array`` for its disk cache), which with
    the resolution and preprocessing keys the frozen-prefix cache without reading the images back."""
    from autotransfer.data import to_array

    return array_batches(
        to_array(split, settings.resolution),
        split.labels,
        settings,
        preprocessing,
        device,
        flip=split.flip,
        fingerprint=split.fingerprint,
    )


def array_batches(
    images: Any,
    labels: Any,
    settings: StudySettings,
    preprocessing,
    device: torch.device,
    *,
    flip: bool,
    fingerprint: str | None = None,
) -> Any:
    """``DeviceBatches`` of resized ``images`` ``(N, H, W, 3)`` uint8 and ``labels`` ``(N,)`` at the
    study's resolution and normalisation, stored channels_last (the one place they are built)."""
    from autotransfer.data.device import DeviceBatches

    return DeviceBatches(
        images,
        labels,
        device=device,
        out_size=settings.resolution,
        mean=preprocessing.mean,
        std=preprocessing.std,
        flip=flip,
        channels_last=True,
        fingerprint=fingerprint,
    )
