"""Place a task on the survey's size x similarity map: continuous coordinates and the quadrant.

The map and its four quadrants come from Plested & Gedeon, "Deep transfer learning for image
classification: a survey", arXiv 2205.09904: the best transfer protocol depends on how much
target data there is and on how similar the target is to the source. The survey describes the
quadrants in words; the numbers below (size threshold, similarity scale) are this package's
choices, stated and justified here, and are module constants so the surface study (issue 5)
can check and revise them.

Coordinates:
    ``log10_n``: log10 of the number of labelled target images.
    ``similarity``: in [0, 1], from the excess divergence profile (``similarity_from_excess``).

Graded scores used by the continuous prior (``autotransfer.prior.quadrant``):
    ``size_score`` in (0, 1): a logistic in log10 N centred on the "large" threshold.
    ``dissimilarity = 1 - similarity``.
    ``transferability`` in [0, 1): LogME over chance, mapped by ``transferability_from_logme``
    (label-aware: how much the pretrained features explain; similarity is label-blind).
    ``effective_similarity``: the two combined, what the prior's scalar rules consume.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

from autotransfer.core.errors import InvalidValueError

__all__ = [
    "Placement",
    "place",
    "size_score",
    "large_threshold",
    "similarity_from_excess",
    "excess_threshold",
    "DECISION_TABLE",
    "SIMILAR_THRESHOLD",
    "LARGE_MIN_IMAGES",
    "LARGE_MIN_PER_CLASS",
    "SIZE_SCORE_WIDTH",
    "BN_W2_SIMILARITY_SCALE",
    "LOGME_TRANSFER_SCALE",
    "TRANSFER_WEIGHT",
    "transferability_from_logme",
    "effective_similarity",
]

#: ``similarity >= 0.5`` reads "similar": the midpoint of the [0, 1] scale. With the BN-W2
#: scale below this puts the split at a mean excess of 0.35 * ln 2 = 0.24, between real photos
#: (excess ~0) and every greyscale set measured (excess 0.23-0.50; docs/design.md).
SIMILAR_THRESHOLD = 0.5

#: A target is "large" when ``N >= max(LARGE_MIN_IMAGES, LARGE_MIN_PER_CLASS * C)``.
#: The survey (arXiv 2205.09904) treats size relative to the task and gives no cut-off, so this
#: is our choice: ~100 images per class is where adapting every layer of an ImageNet-scale model
#: stops being mostly over-fitting, and the 2,000-image floor keeps few-class sets (digits,
#: 1,797 images; a 2-class set of a few hundred) from counting as large just for having few
#: classes. Both conditions matter: 5,000 images over 100 classes (50 per class) are small.
LARGE_MIN_IMAGES = 2000
LARGE_MIN_PER_CLASS = 100

#: Width, in decades of N, of the logistic ``size_score``: half a decade either side of the
#: threshold moves the score from 0.12 to 0.88, so 300 vs 3,000 images read clearly apart
#: while the prior stays continuous.
SIZE_SCORE_WIDTH = 0.25

#: Scale of the source-free BN-W2 divergence for ``similarity = exp(-excess / scale)``.
#: Source: docs/design.md, "Facts about this environment": an independent probe (EfficientNet-Lite0,
#: 224 px, per-layer W2 of activation mean/std vs the stored running statistics, normalised by
#: the source variance) put 20 real ImageNet photos at 0.04 and every other set at 0.27-0.54
#: (CIFAR 0.27, solar cells 0.36, Fashion-MNIST 0.39, animal silhouettes 0.45, MNIST 0.54).
#: The same-domain reference is ~0.04, so the excesses are ~0 for photos and 0.23-0.50 for the
#: rest. Scale 0.35 maps them to: ImageNet photos ~0.95-1.0, CIFAR 0.52, solar cells 0.40,
#: Fashion-MNIST 0.37, animal silhouettes 0.31, MNIST 0.24 -- photos >~0.8 and greyscale sets
#: in 0.2-0.5, as the estimator issue asks. Other divergence methods (MMD, Sinkhorn) have their
#: own units and need their own calibrated scale, passed as ``scale=``.
BN_W2_SIMILARITY_SCALE = 0.35

#: Scale, in nats per image, of LogME over chance (``autotransfer.estimate.transferability.
#: logme_over_chance``, 300 images) for ``transferability = 1 - exp(-gain / scale)``.
#: Measurement (benchmarks/bench_estimate.py, RESULTS.md "Estimator follow-ups (session 2)"):
#: over the 10 (model, target) pairs of the estimator benchmark at 300 images (ImageNet
#: EfficientNet-Lite0 and the fashion-source laboratory, 5 greyscale targets each) LogME over
#: chance spans 0.08-0.78 with median 0.41; scale = median / ln 2 = 0.59 puts that median at
#: 0.5, as ``SIMILAR_THRESHOLD`` is the midpoint of the similarity scale.
LOGME_TRANSFER_SCALE = 0.59

#: Weight of transferability in ``effective_similarity = (1 - w) similarity + w transferability``.
#: Measurement (same benchmark, Spearman over the 5 targets per setting against the measured
#: transfer gain): similarity +0.10 for the ImageNet model (elpv reads 'similar' yet gains
#: least), +0.70 for the laboratory; transferability +0.70 and +0.70. Only with w >= 0.85-0.9
#: (across scales 0.3-0.6) does the combination keep +0.70 in every setting (w = 0.75 drops
#: the ImageNet model at 100 images to +0.40, w = 0.5 to +0.30), so w = 0.9: similarity keeps a
#: tenth of the scalar rules and, in full, the depth profile (freeze) and the BN mode.
TRANSFER_WEIGHT = 0.9

#: The survey's decision table (arXiv 2205.09904), one protocol family per quadrant.
DECISION_TABLE = {
    "small+similar": "feature extraction",
    "small+dissimilar": "features from earlier layers, higher ELR",
    "large+similar": "fine-tune everything",
    "large+dissimilar": "fine-tune with more re-initialised groups, or from scratch",
}


def large_threshold(num_classes: int) -> int:
    """The image count at which a ``num_classes``-way target turns "large" (size_score = 0.5)."""
    if num_classes < 1:
        raise InvalidValueError(f"num_classes must be >= 1, but got {num_classes!r}")
    return max(LARGE_MIN_IMAGES, LARGE_MIN_PER_CLASS * num_classes)


def size_score(log10_n: float, num_classes: int) -> float:
    """How "large" the target is, in (0, 1): ``logistic((log10 N - log10 N_large(C)) / width)``.

    ``N_large(C) = max(2000, 100 C)`` combines the total and the per-class count (see
    ``LARGE_MIN_IMAGES``); 0.5 exactly at the threshold, -> 1 for large, -> 0 for small targets.
    """
    if not math.isfinite(log10_n):
        raise InvalidValueError(f"log10_n must be finite, but got {log10_n!r}")
    z = (log10_n - math.log10(large_threshold(num_classes))) / SIZE_SCORE_WIDTH
    return 1.0 / (1.0 + math.exp(-z))


def excess_threshold(scale: float = BN_W2_SIMILARITY_SCALE) -> float:
    """The excess divergence at which one group's own similarity ``exp(-e/scale)`` hits 0.5.

    ``scale * ln(1 / SIMILAR_THRESHOLD)`` = 0.24 for BN-W2: the same split as the placement,
    applied depth by depth (the quadrant prior freezes up to the depth where it is crossed).
    """
    return scale * math.log(1.0 / SIMILAR_THRESHOLD)


def similarity_from_excess(excess: Sequence[float], scale: float = BN_W2_SIMILARITY_SCALE) -> float:
    """Map an excess divergence profile to a similarity in [0, 1] (1 = same domain).

    ``similarity = exp(-mean(excess of the last ceil(G/2) groups) / scale)``. The last half is
    used because late features carry the domain (early filters transfer broadly; Yosinski et
    al. 2014, discussed in the survey) and because the BN-W2 calibration (``BN_W2_SIMILARITY_SCALE``)
    was measured at the last layers. Negative excesses (sampling noise below the reference)
    count as 0. The map is monotone: more excess anywhere in the last half, lower similarity.

    Args:
        excess: ``(G,)`` excess divergence per depth group, stem first, >= 0 (larger = farther).
        scale: the divergence method's scale (default: the BN-W2 calibration).
    """
    values = [float(v) for v in excess]
    if not values:
        raise InvalidValueError("excess profile must have at least one group, but got an empty profile")
    if not all(math.isfinite(v) for v in values):
        raise InvalidValueError(f"excess profile must be finite, but got {values!r}")
    if not scale > 0:
        raise InvalidValueError(f"scale must be > 0, but got {scale!r}")
    tail = [max(v, 0.0) for v in values[len(values) // 2 :]]
    return float(math.exp(-(sum(tail) / len(tail)) / scale))


def transferability_from_logme(over_chance: float, scale: float = LOGME_TRANSFER_SCALE) -> float:
    """Map LogME over chance (nats per image, ``logme_over_chance``) to [0, 1): 0 at or below
    chance, ``1 - exp(-gain / scale)`` above; monotone, 0.5 at ``scale x ln 2`` = 0.41."""
    value = float(over_chance)
    if not math.isfinite(value):
        raise InvalidValueError(f"LogME over chance must be finite, but got {over_chance!r}")
    if not scale > 0:
        raise InvalidValueError(f"scale must be > 0, but got {scale!r}")
    return float(1.0 - math.exp(-max(value, 0.0) / scale))


def effective_similarity(similarity: float, transferability: float | None, weight: float = TRANSFER_WEIGHT) -> float:
    """What the prior's scalar rules read as "similar": ``(1 - w) s + w t`` in [0, 1].

    ``s`` = the BN/divergence similarity (label-blind domain distance), ``t`` =
    ``transferability_from_logme`` (label-aware). Increasing in both; ``s`` when ``t`` is
    ``None`` (no transferability measured), so older profiles keep their prior.
    """
    for name, value in (("similarity", similarity), ("transferability", transferability)):
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise InvalidValueError(f"{name} must lie in [0, 1], but got {value!r}")
    if not 0.0 <= weight <= 1.0:
        raise InvalidValueError(f"weight must lie in [0, 1], but got {weight!r}")
    if transferability is None:
        return float(similarity)
    return float((1.0 - weight) * float(similarity) + weight * float(transferability))


@dataclass(frozen=True)
class Placement:
    """A task's position on the size x similarity map (arXiv 2205.09904).

    Attributes:
        log10_n, similarity: the continuous coordinates.
        num_classes: ``C``; ``images_per_class = N / C``.
        size_score: ``size_score(log10_n, C)`` in (0, 1), 1 = large.
        dissimilarity: ``1 - similarity``.
        large_at: ``N`` at which this task would count as large (``max(2000, 100 C)``).
        size: ``small`` (size_score < 0.5) or ``large``.
        domain: ``similar`` (similarity >= 0.5) or ``dissimilar``.
        quadrant: ``size + "+" + domain``; ``protocol``: its entry of ``DECISION_TABLE``.
    """

    log10_n: float
    similarity: float
    num_classes: int
    images_per_class: float
    size_score: float
    dissimilarity: float
    large_at: int
    size: str
    domain: str
    quadrant: str
    protocol: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Placement":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def place(num_images: int, num_classes: int, similarity: float) -> Placement:
    """Place a target of ``num_images`` over ``num_classes`` at ``similarity`` on the map.

    Size and similarity are combined only in the quadrant label (each thresholded on its own
    axis); the continuous prior uses the graded ``size_score`` and ``dissimilarity``.
    """
    if num_images < 1:
        raise InvalidValueError(f"num_images must be >= 1, but got {num_images!r}")
    if not 0.0 <= similarity <= 1.0:
        raise InvalidValueError(f"similarity must lie in [0, 1], but got {similarity!r}")
    log10_n = math.log10(num_images)
    score = size_score(log10_n, num_classes)
    size = "large" if score >= 0.5 else "small"
    domain = "similar" if similarity >= SIMILAR_THRESHOLD else "dissimilar"
    quadrant = f"{size}+{domain}"
    return Placement(
        log10_n=log10_n,
        similarity=float(similarity),
        num_classes=int(num_classes),
        images_per_class=num_images / num_classes,
        size_score=score,
        dissimilarity=1.0 - float(similarity),
        large_at=large_threshold(num_classes),
        size=size,
        domain=domain,
        quadrant=quadrant,
        protocol=DECISION_TABLE[quadrant],
    )
