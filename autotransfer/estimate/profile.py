"""``TaskProfile``: everything the estimator learns about a task, as plain, JSON-able values."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from autotransfer.core.errors import InvalidValueError
from autotransfer.estimate.size import SizeStats
from autotransfer.prior.placement import Placement
from autotransfer.prior.quadrant import Prior

__all__ = ["TaskProfile", "DivergenceProfile", "SourceMeasures", "Transferability", "PROFILE_VERSION"]

#: Bumped when the ``to_dict`` layout changes incompatibly.
PROFILE_VERSION = 1


@dataclass
class SourceMeasures:
    """Measures against a source sample (``--source``); ``None`` where not computed.

    Attributes:
        mmd, mmd_p: unbiased RBF MMD^2 and its permutation p-value, at the last depth group.
        sinkhorn: split-half debiased entropic OT (POT ``ot.sinkhorn``), in units of the pooled median distance squared.
        emd: exact W2^2 (``ot.emd2``) minus a split-half same-domain baseline.
        sliced: sliced Wasserstein distance (for large sets).
        coral: CORAL distance between feature covariances.
        n_target, n_source: points per side used.
    """

    mmd: float | None = None
    mmd_p: float | None = None
    sinkhorn: float | None = None
    emd: float | None = None
    sliced: float | None = None
    coral: float | None = None
    n_target: int | None = None
    n_source: int | None = None


@dataclass
class DivergenceProfile:
    """Divergence by depth: raw, the same-domain reference, and the excess over it.

    Attributes:
        method: ``bn-w2`` (source-free BN statistics), ``mmd``, ``sinkhorn``...
        groups: ``(G,)`` depth-group names, stem first.
        raw: ``(G,)`` divergence of the target at each group.
        reference: ``(G,)`` same-domain reference profile, or ``None`` when none exists.
        excess: ``(G,)`` ``max(raw - reference, 0)`` (``raw`` when there is no reference).
        source: measures against a source sample, if one was given.
    """

    method: str
    groups: list[str]
    raw: list[float]
    excess: list[float]
    reference: list[float] | None = None
    source: SourceMeasures | None = None

    def __post_init__(self) -> None:
        g = len(self.groups)
        for name in ("raw", "excess", "reference"):
            values = getattr(self, name)
            if values is not None and len(values) != g:
                raise InvalidValueError(
                    f"divergence {name} must have one value per depth group ({g}), but got {len(values)}"
                )


@dataclass
class Transferability:
    """Label-aware transferability of the final features; ``None`` where not computed.

    Attributes:
        logme: LogME evidence per sample (You et al., 2021), on every capped target image.
        leep: LEEP with the source head (Nguyen et al., 2020).
        nleep: NLEEP (Li et al., 2021): LEEP with a Gaussian mixture of the PCA-reduced
            features in place of the source head, on the same ``n_ref`` images as
            ``logme_over_chance``; any model has it.
        hscore: H-score (Bao et al., 2019).
        logme_over_chance: LogME minus its closed-form chance level (``logme_chance``) on
            ``n_ref`` images (``logme_over_chance``): nats per image the features explain
            beyond the class frequencies, comparable across class counts and target sizes.
        n_ref: images ``logme_over_chance`` was measured on (at most ``TRANSFER_REF_IMAGES``).
    """

    logme: float | None = None
    leep: float | None = None
    hscore: float | None = None
    logme_over_chance: float | None = None
    n_ref: int | None = None
    nleep: float | None = None


@dataclass
class TaskProfile:
    """The estimator's result for one (target, model) pair.

    Attributes:
        spec, fingerprint: the target's dataset spec and content sha256.
        model: the model spec.
        num_groups: ``G``, depth groups of the model.
        size: images, classes, per-class counts, image sizes and the metric.
        similarity: in [0, 1] (``autotransfer.prior.placement.similarity_from_excess``): the
            label-blind BN/divergence similarity, the surface coordinate.
        transferability_score: in [0, 1) (``autotransfer.prior.placement.
            transferability_from_logme`` of ``transferability.logme_over_chance``), or ``None``;
            the prior combines it with ``similarity`` (``effective_similarity``).
        divergence: divergence by depth (``None`` if not measured).
        transferability: LogME / LEEP / H-score (``None`` if not measured).
        placement: coordinates and quadrant on the survey's map.
        prior: the protocol centre and ranges derived from the placement.
        timings: seconds per stage (``features``, ``divergence``, ``total``...).
        notes: human-readable remarks: the dataset's own notes first (skipped files, capped
            N...), then the estimator's (capping, missing BN layers...).
        skipped: files the dataset source left out (``autotransfer.data.skipped_summary``:
            ``count``, ``first`` names, ``reasons``), or ``None`` when none was.
    """

    spec: str
    fingerprint: str
    model: str
    num_groups: int
    size: SizeStats
    similarity: float
    divergence: DivergenceProfile | None = None
    transferability: Transferability | None = None
    placement: Placement | None = None
    prior: Prior | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    transferability_score: float | None = None
    skipped: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.similarity <= 1.0:
            raise InvalidValueError(f"similarity must lie in [0, 1], but got {self.similarity!r}")
        score = self.transferability_score
        if score is not None and not 0.0 <= score <= 1.0:
            raise InvalidValueError(f"transferability_score must lie in [0, 1], but got {score!r}")

    @property
    def metric(self) -> str:
        """The metric the search optimises (``accuracy`` / ``balanced_accuracy``)."""
        return self.size.metric

    @property
    def log10_n(self) -> float:
        return math.log10(self.size.images)

    def to_dict(self) -> dict[str, Any]:
        """Every number as a plain JSON value (``json.dumps`` works; NaN/inf become ``null``)."""
        div = self.divergence
        out: dict[str, Any] = {
            "version": PROFILE_VERSION,
            "spec": self.spec,
            "fingerprint": self.fingerprint,
            "model": self.model,
            "num_groups": self.num_groups,
            "metric": self.metric,
            "size": self.size.to_dict(),
            "similarity": self.similarity,
            "transferability_score": self.transferability_score,
            "divergence": None
            if div is None
            else {
                "method": div.method,
                "groups": list(div.groups),
                "raw": list(div.raw),
                "reference": None if div.reference is None else list(div.reference),
                "excess": list(div.excess),
                "source": None if div.source is None else _fields(div.source),
            },
            "transferability": None if self.transferability is None else _fields(self.transferability),
            "placement": None if self.placement is None else self.placement.to_dict(),
            "prior": None if self.prior is None else self.prior.to_dict(),
            "timings": dict(self.timings),
            "notes": list(self.notes),
            "skipped": None if self.skipped is None else dict(self.skipped),
        }
        return _plain(out)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TaskProfile":
        """The inverse of ``to_dict`` (``null`` numbers in profiles come back as NaN)."""
        version = values.get("version", PROFILE_VERSION)
        if version != PROFILE_VERSION:
            raise InvalidValueError(f"TaskProfile version must be {PROFILE_VERSION}, but got {version!r}")
        div = values.get("divergence")
        divergence = None
        if div is not None:
            divergence = DivergenceProfile(
                method=str(div["method"]),
                groups=[str(g) for g in div["groups"]],
                raw=_floats(div["raw"]),
                excess=_floats(div["excess"]),
                reference=None if div.get("reference") is None else _floats(div["reference"]),
                source=None if div.get("source") is None else _build(SourceMeasures, div["source"]),
            )
        tr = values.get("transferability")
        return cls(
            spec=str(values["spec"]),
            fingerprint=str(values["fingerprint"]),
            model=str(values["model"]),
            num_groups=int(values["num_groups"]),
            size=SizeStats.from_dict(values["size"]),
            similarity=float(values["similarity"]),
            transferability_score=None
            if values.get("transferability_score") is None
            else float(values["transferability_score"]),
            divergence=divergence,
            transferability=None if tr is None else _build(Transferability, tr),
            placement=None if values.get("placement") is None else Placement.from_dict(values["placement"]),
            prior=None if values.get("prior") is None else Prior.from_dict(values["prior"]),
            timings={str(k): float(v) for k, v in values.get("timings", {}).items()},
            notes=[str(n) for n in values.get("notes", [])],
            skipped=None if values.get("skipped") is None else dict(values["skipped"]),
        )


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _build(cls: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def _floats(values: list[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _plain(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays and tuples to JSON values; non-finite -> None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value
