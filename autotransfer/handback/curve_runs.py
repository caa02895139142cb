"""The data-requirement curve's measurements (issue 30): the picked protocol trained on fractions of
the train split, each scored on the study's validation + test images (never on train).

Cheap by construction:

- the 100% point is the picked trial's own model when the search kept it (``search.trial_models``:
  trained on the whole train split at the study's budget), scored on the test split alone (its
  validation score chose it, so validation would flatter it): no training;
- each smaller fraction trains at the step budget ``tune`` would give a study of that size
  (``core.settings.default_steps``, scaled when the study's own budget was set by hand), without
  validation passes, with a frozen prefix served from the frozen-prefix cache as in a trial
  (``train.prefix_cache``), and a fresh seed; it is scored on validation + test.

``handback.data_curve`` fits the points.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from autotransfer.core.errors import InvalidValueError
from autotransfer.core.protocol import Protocol
from autotransfer.core.settings import StudySettings, default_steps
from autotransfer.handback.data_curve import CurvePoint
from autotransfer.search.prepared import PreparedData, device_batches

__all__ = ["FRACTIONS", "CURVE_SEED_OFFSET", "CurveRuns", "fraction_steps", "curve_cost", "measure_curve"]

#: The fractions of the train split the curve trains on.
FRACTIONS = (0.25, 0.5, 1.0)
#: The curve's runs use the study's seed plus this: fresh runs, not the trials the pick selected
#: (a selected trial's score carries the selection's luck).
CURVE_SEED_OFFSET = 7919


@dataclass(frozen=True)
class CurveRuns:
    """The measured points, the notes (a fraction that diverged or was too small), the seconds and
    the cost in full trainings (the sum of each run's steps over the study's)."""

    points: list[CurvePoint]
    notes: list[str]
    seconds: float
    trainings: float


def _study_steps(settings: StudySettings) -> int:
    return int(settings.steps) if settings.steps else default_steps(int(settings.n_train or 1), settings.batch_size)


def fraction_steps(settings: StudySettings, images: int) -> int:
    """The step budget of a run on ``images`` training images: ``default_steps`` at that size, or
    the study's own budget scaled by the same ratio when the study's was set by hand."""
    n_train = int(settings.n_train or images)
    steps = _study_steps(settings)
    natural = default_steps(n_train, settings.batch_size)
    wanted = default_steps(max(images, 1), settings.batch_size)
    return steps if images >= n_train else max(1, int(round(steps * wanted / natural)))


def curve_cost(settings: StudySettings, fractions: Sequence[float] = FRACTIONS, *, reuse_full: bool = False) -> float:
    """The curve's cost in full trainings of the study (``pipeline.plan``'s unit); ``reuse_full``:
    the 100% point is the trial's kept model (no training)."""
    n_train = int(settings.n_train or 1)
    steps = _study_steps(settings)
    return sum(
        fraction_steps(settings, max(1, int(round(f * n_train)))) / steps
        for f in fractions
        if not (reuse_full and f >= 1)
    )


def _scoring_set(prepared: PreparedData) -> Any:
    """Validation and test images together: what the trained fractions are scored on."""
    a, b = prepared.val, prepared.test
    if (
        isinstance(a.images, np.ndarray)
        and isinstance(b.images, np.ndarray)
        and a.images.shape[1:] == b.images.shape[1:]
    ):
        images: Any = np.concatenate([a.images, b.images])
    else:
        images = [*a.images, *b.images]
    return type(a)(
        spec=prepared.dataset.spec + "#val+test",
        images=images,
        labels=np.concatenate([a.labels, b.labels]),
        classes=list(a.classes),
        flip=a.flip,
    )


def measure_curve(
    protocol: Protocol,
    settings: StudySettings,
    prepared: PreparedData,
    *,
    fractions: Sequence[float] = FRACTIONS,
    progress: Callable[[int, int], None] | None = None,
    on_fraction: Callable[[float, int], None] | None = None,
    micro_batch: int | None = None,
    trained_full: Any | None = None,
) -> CurveRuns:
    """Train ``protocol`` on each fraction of the train split (a stratified subsample, seeded by
    ``settings.seed + CURVE_SEED_OFFSET``), score each on validation + test. ``settings`` are the
    study's resolved settings. ``on_fraction(fraction, images)`` is called before each run.
    ``trained_full``: a backbone of ``protocol`` already trained on the whole train split at the
    study's budget (the trial's own model): the 100% point, scored on the test split alone."""
    from autotransfer.backbones import create_backbone
    from autotransfer.data import stratified_subsample
    from autotransfer.search.objective import train_config_for
    from autotransfer.search.pruning import effective_images
    from autotransfer.train import DivergedError, evaluate, train_protocol, with_oom_retry

    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise InvalidValueError(f"curve fractions must lie in (0, 1], but got {list(fractions)!r}")
    train = prepared.train
    classes = len(train.classes)
    scoring = _scoring_set(prepared)
    counts = np.bincount(np.asarray(scoring.labels), minlength=classes).tolist()
    scored_on = effective_images(counts, settings.metric or "accuracy")
    steps_full = _study_steps(settings)
    seed = settings.seed + CURVE_SEED_OFFSET
    points: list[CurvePoint] = []
    notes: list[str] = []
    spent = 0.0
    t0 = time.monotonic()
    batches: dict[str, Any] = {}
    for fraction in sorted(set(fractions)):
        images = len(train) if fraction >= 1 else int(round(fraction * len(train)))
        if fraction >= 1 and trained_full is not None:
            test = device_batches(prepared.test, settings, trained_full.preprocessing, prepared.device)
            test_counts = np.bincount(np.asarray(prepared.test.labels), minlength=classes).tolist()
            value = evaluate(trained_full, test, settings.metric or "accuracy")
            points.append(
                CurvePoint(images, float(value), int(effective_images(test_counts, settings.metric or "accuracy")))
            )
            continue
        if images < classes:
            notes.append(
                f"data curve: {fraction:.0%} of the train split is {images} images, fewer than the {classes} classes: left out"
            )
            continue
        subset = train if images >= len(train) else stratified_subsample(train, images, seed=seed)
        steps = fraction_steps(settings, images)
        if on_fraction is not None:
            on_fraction(fraction, images)

        def run(micro: int | None, subset=subset, steps=steps):
            backbone = create_backbone(settings.model, num_classes=settings.num_classes or classes)
            config = train_config_for(protocol, settings, backbone.num_groups, micro_batch=micro)
            config = config.replace(steps=steps, eval_every=steps, seed=seed)
            data = device_batches(subset, settings, backbone.preprocessing, prepared.device)
            train_protocol(backbone, data, None, config, metric=settings.metric or "accuracy", progress=progress)
            if "scoring" not in batches:
                batches["scoring"] = device_batches(scoring, settings, backbone.preprocessing, prepared.device)
            return evaluate(backbone, batches["scoring"], settings.metric or "accuracy")

        try:
            value, micro_batch = with_oom_retry(run, micro_batch, settings.batch_size)
        except DivergedError as err:
            notes.append(f"data curve: the run on {images} images diverged ({err}): left out")
            continue
        spent += steps / steps_full
        if math.isfinite(value):
            points.append(CurvePoint(images, float(value), int(scored_on)))
    return CurveRuns(points, notes, time.monotonic() - t0, spent)
