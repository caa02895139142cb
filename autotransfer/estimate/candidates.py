"""Score several pretrained models on one target (transferability, divergence, cost) and drop the dominated."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from autotransfer.core.errors import InvalidValueError, UserError
from autotransfer.data.types import ImageDataset

__all__ = [
    "Candidate",
    "CandidateSet",
    "RANKER",
    "THROUGHPUT_STEPS",
    "dominators",
    "rank_order",
    "score_candidates",
]

#: The transferability score candidates are ranked and compared by: NLEEP, the strongest of the
#: estimator's rankers in the literature (SFDA, ECCV 2022: mean weighted Kendall τ 0.61, against
#: LogME 0.51 and LEEP 0.41), and the one every model has (it needs no source head).
RANKER = "nleep"
#: Optimizer steps of the training-speed probe (``train.timing.step_seconds``): the first is a
#: warm-up, the other three are timed, so ``3 x batch_size`` real target images are measured.
THROUGHPUT_STEPS = 4


@dataclass
class Candidate:
    """One model's evidence on the target; ``None`` where a score was not computed.

    Attributes:
        model: the model spec.
        num_groups: its depth groups ``G``.
        params: parameters of the model fine-tuned on the target (its new head included).
        logme, logme_over_chance, leep, nleep, hscore: the profile's transferability scores
            (``estimate.profile.Transferability``; LEEP is ``None`` without a source head).
        transferability_score: LogME over chance mapped to [0, 1) (the profile's).
        similarity: the label-blind divergence similarity in [0, 1] (the profile's).
        divergence: the divergence method (``bn-w2`` or ``mmd``).
        divergence_excess: mean excess over the same-domain reference of the last half of the
            depth groups (the tail the similarity reads most).
        images_per_s: training images per second (forward + backward + update, every group
            trainable) at the study's resolution and batch on this device.
        throughput_images: images the speed was timed on (warm-up step excluded).
        estimate_s: seconds this candidate's estimate took (model, features, scores, speed probe).
        timings: the estimator's seconds per stage (``TaskProfile.timings``) and ``speed probe``.
        dominated_by: the model that beats this one on ``RANKER`` and trains faster, or ``None``.
        reason: why it was dropped, in words (``None`` when kept).
    """

    model: str
    num_groups: int
    params: int
    logme: float | None
    logme_over_chance: float | None
    leep: float | None
    nleep: float | None
    hscore: float | None
    transferability_score: float | None
    similarity: float
    divergence: str | None
    divergence_excess: float | None
    images_per_s: float
    throughput_images: int
    estimate_s: float
    dominated_by: str | None = None
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.dominated_by is None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kept"] = self.kept
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


@dataclass
class CandidateSet:
    """The candidates of one target, best first by ``ranker`` (dominated ones kept, flagged).

    Attributes:
        target: the dataset spec; ``images`` and ``classes`` of the target measured.
        resolution, batch_size, device: the study's training settings the speed was measured at.
        feature_size: the px the estimator's features were taken at (``None``: each model's native size).
        ranker: the score the order and dominance use (``RANKER``).
        candidates: ``Candidate`` per model, best first.
        seconds: the whole scoring's wall time.
    """

    target: str
    images: int
    classes: int
    resolution: int
    batch_size: int
    device: str
    ranker: str
    feature_size: int | None = None
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0
    #: each candidate's ``TaskProfile`` by model spec (not in ``to_dict``): a study of that model
    #: on the same images can start from it instead of estimating again
    profiles: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: each candidate's fitted ``TaskEstimator`` by model spec (not in ``to_dict``): its kept
    #: features serve the forecast (``forecast.forecast_from_estimator``) without another pass
    estimators: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def kept(self) -> list[Candidate]:
        """The candidates no other one dominates, best first."""
        return [c for c in self.candidates if c.kept]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "images": self.images,
            "classes": self.classes,
            "resolution": self.resolution,
            "batch_size": self.batch_size,
            "device": self.device,
            "ranker": self.ranker,
            "feature_size": self.feature_size,
            "seconds": self.seconds,
            "kept": [c.model for c in self.kept],
            "candidates": [c.to_dict() for c in self.candidates],
        }


# -- pure ranking and dominance ---------------------------------------------------------------


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def rank_order(scores: Sequence[float | None], costs: Sequence[float] | None = None) -> list[int]:
    """Indices of ``scores`` ``(K,)`` best (highest) first; ties go to the lower cost (``costs``
    ``(K,)``, e.g. seconds per training image), then to the earlier index; missing scores last."""
    if costs is not None and len(costs) != len(scores):
        raise InvalidValueError(f"costs must have one value per score ({len(scores)}), but got {len(costs)}")

    def key(i: int) -> tuple[int, float, float, int]:
        s = scores[i]
        cost = float(costs[i]) if costs is not None else 0.0
        return (0, -float(s), cost, i) if _finite(s) else (1, 0.0, cost, i)  # type: ignore[arg-type]

    return sorted(range(len(scores)), key=key)


def dominators(scores: Sequence[float | None], costs: Sequence[float]) -> list[int | None]:
    """For each candidate ``i`` (``scores`` and ``costs`` ``(K,)``): the index of a candidate that
    dominates it, i.e. scores strictly higher AND costs strictly less, or ``None``.

    Of several dominators the best-scoring one is named (then the cheapest). A candidate without a
    finite score or cost is never dominated and dominates nothing (no evidence either way)."""
    if len(costs) != len(scores):
        raise InvalidValueError(f"costs must have one value per score ({len(scores)}), but got {len(costs)}")
    out: list[int | None] = []
    order = rank_order(scores, costs)
    for i in range(len(scores)):
        found = None
        if _finite(scores[i]) and _finite(costs[i]):
            for j in order:
                if (
                    j != i
                    and _finite(scores[j])
                    and _finite(costs[j])
                    and float(scores[j]) > float(scores[i])  # type: ignore[arg-type]
                    and float(costs[j]) < float(costs[i])
                ):
                    found = j
                    break
        out.append(found)
    return out


# -- scoring -----------------------------------------------------------------------------------


def score_candidates(
    target: ImageDataset,
    models: Sequence[str],
    *,
    resolution: int = 64,
    batch_size: int = 32,
    max_images: int = 1000,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    feature_size: int | None = None,
) -> CandidateSet:
    """Estimate ``target`` against each of ``models`` and rank them.

    For each model: ``TaskEstimator.fit`` (features at the model's native size, or at
    ``feature_size``, on at most ``max_images`` images: divergence, LogME, LEEP, NLEEP, H-score), its parameter count, and its
    training speed at the study's ``resolution`` and ``batch_size`` on ``device``
    (``THROUGHPUT_STEPS`` optimizer steps of the model on real target images, the first one a
    warm-up). The candidates come back best first by ``RANKER``; one that another beats on the
    ranker while training faster is marked dominated (``dominators``), with the reason.

    Args:
        target: the labelled target (already subsampled by the caller if wanted).
        models: model specs (``backbones.parse_models`` checks and expands ``auto``).
        resolution, batch_size: the study's training input size and batch.
        max_images, seed: the estimator's cap and seed.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: the estimator's progress bars (stderr).
        log: called with one line per finished candidate (progress, e.g. on stderr).
        feature_size: the estimator's ``input_size``: ``None`` each model's native size (where its
            references were measured), or e.g. the study's ``resolution`` (cheaper).

    Returns:
        The ``CandidateSet``.

    Raises:
        UserError: no models, bad settings, or what ``TaskEstimator.fit`` refuses.
    """
    from autotransfer.data.cache import to_array
    from autotransfer.data.device import DeviceBatches
    from autotransfer.data.sampling import stratified_subsample
    from autotransfer.estimate.estimator import TaskEstimator
    from autotransfer.train.config import TrainConfig, resolve_device
    from autotransfer.train.timing import step_seconds

    specs = list(dict.fromkeys(models))
    if not specs:
        raise UserError("give at least one model to score (e.g. --models efficientnet_lite0,fashion-source)")
    for name, value, low in (("resolution", resolution, 8), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"{name} must be an integer >= {low}, but got {value!r}")
    run_device = resolve_device(device, what="candidate scoring device")
    start = time.perf_counter()
    # the speed probe's images: enough real target images for every timed batch, resized once
    probe_set = stratified_subsample(target, min(len(target), int(batch_size) * THROUGHPUT_STEPS), seed=seed)
    probe_images = to_array(probe_set, int(resolution))
    codes = np.asarray(probe_set.labels, dtype=np.int64)  # class indices of the target's head
    train_device = resolve_device(run_device.type)  # TrainConfig takes auto, cpu or cuda
    config = TrainConfig(
        resolution=int(resolution),
        batch_size=int(batch_size),
        steps=THROUGHPUT_STEPS,
        eval_every=THROUGHPUT_STEPS,
        device=train_device.type,
        seed=int(seed),
        cache_prefix=False,
    )
    rows: list[Candidate] = []
    profiles: dict[str, Any] = {}
    estimators: dict[str, Any] = {}
    images = classes = 0
    for spec in specs:
        tick = time.perf_counter()
        estimator = TaskEstimator(
            max_images=max_images, seed=seed, progress=progress, device=str(run_device), input_size=feature_size
        )
        profile = estimator.fit(target, spec)
        backbone = estimator.backbone_
        params = int(sum(p.numel() for p in backbone.model.parameters()))
        batches = DeviceBatches(
            probe_images,
            codes,
            device=train_device,
            out_size=int(resolution),
            mean=backbone.preprocessing.mean,
            std=backbone.preprocessing.std,
            flip=True,
            channels_last=True,
        )
        probe_tick = time.perf_counter()
        step_s = step_seconds(backbone, batches, config, steps=THROUGHPUT_STEPS)
        timings = {**profile.timings, "speed probe": time.perf_counter() - probe_tick}
        images, classes = profile.size.images, profile.size.classes
        tr = profile.transferability
        div = profile.divergence
        tail = None if div is None else float(np.mean(div.excess[len(div.excess) // 2 :]))
        row = Candidate(
            model=profile.model,
            num_groups=backbone.num_groups,
            params=params,
            logme=None if tr is None else tr.logme,
            logme_over_chance=None if tr is None else tr.logme_over_chance,
            leep=None if tr is None else tr.leep,
            nleep=None if tr is None else tr.nleep,
            hscore=None if tr is None else tr.hscore,
            transferability_score=profile.transferability_score,
            similarity=profile.similarity,
            divergence=None if div is None else div.method,
            divergence_excess=tail,
            images_per_s=int(batch_size) / step_s,
            throughput_images=int(batch_size) * (THROUGHPUT_STEPS - 1),
            estimate_s=time.perf_counter() - tick,
            timings=timings,
        )
        rows.append(row)
        profiles[spec] = profile
        estimators[spec] = estimator
        if log is not None:
            log(
                f"{row.model}: NLEEP {_fmt(row.nleep)}, LogME over chance {_fmt(row.logme_over_chance)}, "
                f"{row.images_per_s:.0f} img/s at {resolution} px ({row.estimate_s:.1f} s)"
            )
    scores = [getattr(r, RANKER) for r in rows]
    costs = [1.0 / r.images_per_s for r in rows]
    for i, j in enumerate(dominators(scores, costs)):
        if j is not None:
            a, b = rows[i], rows[j]
            a.dominated_by = b.model
            a.reason = (
                f"dominated by {b.model}: {RANKER.upper()} {_fmt(scores[j])} > {_fmt(scores[i])} and "
                f"{b.images_per_s:.1f} > {a.images_per_s:.1f} training img/s"
            )
    ordered = [rows[i] for i in rank_order(scores, costs)]
    return CandidateSet(
        target=target.spec,
        images=images,
        classes=classes,
        resolution=int(resolution),
        batch_size=int(batch_size),
        device=str(run_device),
        ranker=RANKER,
        feature_size=feature_size,
        candidates=ordered,
        seconds=time.perf_counter() - start,
        profiles=profiles,
        estimators=estimators,
    )


def _fmt(value: float | None) -> str:
    return "-" if not _finite(value) else f"{value:.3f}"
