"""The surface store: one best protocol per study at its (log10 N, similarity) point, in a JSON file."""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, cast

import optuna

from autotransfer.core.errors import InvalidValueError, UserError
from autotransfer.core.protocol import Protocol
from autotransfer.core.schema import FREEZE_ATTR, REINIT_ATTR
from autotransfer.search.study import best_transfer_trial, read_attr, read_settings, search_trials

__all__ = [
    "SurfacePoint",
    "SurfaceStore",
    "record_study",
    "point_from_study",
    "fields_from_study",
    "DEFAULT_STORE",
    "POINT_ATTR",
]

#: The default surface store, beside the default study storage.
DEFAULT_STORE = "studies/surface.json"


def active_store() -> Path:
    """The surface store in use: ``$AUTOTRANSFER_SURFACE``, else ``studies/surface.json``."""
    return Path(os.environ.get("AUTOTRANSFER_SURFACE", DEFAULT_STORE))


def default_surface(model: str) -> Path | None:
    """The store ``tune`` and ``estimate`` use as the prior for ``model`` by default: the active
    store when it has points for that model, else ``None`` (the quadrant prior then)."""
    path = active_store()
    store = SurfaceStore(path)
    return path if store.exists() and store.load(model=model) else None


#: Study user attribute holding the study's own surface point (the same record as in the store).
POINT_ATTR = "autotransfer.surface_point"
#: Bumped when the file layout changes incompatibly.
STORE_VERSION = 1
#: Mode of a new store file (and of its lock) before the umask, as for a plain ``open()``.
FILE_MODE = 0o666


@dataclass
class SurfacePoint:
    """One study's optimum at its coordinates on the size x similarity map.

    Attributes:
        study: the study name (the store's key).
        target, model, n, seed: what the study measured (``n`` = the study's subsample size,
            after capping at the dataset's size; every image when the study took all).
        log10_n: log10 of the labelled images the task estimate saw (``TaskProfile.log10_n``:
            the train and validation splits; the test split stays unseen).
        similarity: in [0, 1] (``TaskProfile.similarity``).
        excess: ``(G,)`` excess divergence per depth group (empty when not measured).
        protocol: the best transfer trial's protocol (every ``Protocol`` field).
        score: that trial's validation score; ``test_score`` after retraining, if known.
        metric: ``accuracy`` or ``balanced_accuracy``.
        num_groups: ``G`` of the model; ``freeze``/``reinit``: the integers of the best trial.
        num_classes: ``C`` of the target (0 = unknown: recorded before this field existed).
        transferability: the profile's ``TaskProfile.transferability_score`` in [0, 1], or
            ``None`` (not measured, or unknown). With ``num_classes`` these are the inputs the
            quadrant rules need, so the surface can fit the residuals of the quadrant prior
            (``autotransfer.surface.fit``).
        trials: finished search trials in the study when recorded.
        time: when recorded (ISO 8601, local time).
    """

    study: str
    target: str
    model: str
    n: int
    seed: int
    log10_n: float
    similarity: float
    protocol: dict[str, Any]
    score: float
    metric: str
    excess: list[float] = field(default_factory=list)
    test_score: float | None = None
    num_groups: int = 0
    freeze: int | None = None
    reinit: int | None = None
    trials: int = 0
    time: str = ""
    num_classes: int = 0
    transferability: float | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 0:
            raise InvalidValueError(f"num_classes must be >= 0 (0 = unknown), but got {self.num_classes!r}")
        t = self.transferability
        if t is not None and not 0.0 <= t <= 1.0:
            raise InvalidValueError(f"transferability must lie in [0, 1] or be None, but got {t!r}")
        if not math.isfinite(self.log10_n):
            raise InvalidValueError(f"log10_n must be finite, but got {self.log10_n!r}")
        if not 0.0 <= self.similarity <= 1.0:
            raise InvalidValueError(f"similarity must lie in [0, 1], but got {self.similarity!r}")
        self.protocol = Protocol.from_dict(self.protocol).to_dict()  # validates and fills defaults

    @property
    def best(self) -> Protocol:
        return Protocol.from_dict(self.protocol)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SurfacePoint":
        known = set(cls.__dataclass_fields__)
        missing = {"study", "target", "model", "log10_n", "similarity", "protocol", "score"} - set(values)
        if missing:
            raise InvalidValueError(f"surface point is missing {sorted(missing)!r}, but got keys {sorted(values)!r}")
        return cls(**{k: v for k, v in values.items() if k in known})


class SurfaceStore:
    """A JSON file of surface points keyed by study name (default ``studies/surface.json``).

    ``add`` replaces a point with the same study name (recording a study twice is idempotent);
    every write goes to a temporary file in the same folder and is renamed over the old one.
    ``add`` and ``remove`` read, modify and write under an exclusive lock on ``NAME.lock``
    beside the store (``fcntl.flock``), so processes recording at the same time lose no point.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STORE) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, *, model: str | None = None) -> list[SurfacePoint]:
        """Every point (optionally only those of ``model``), in insertion order; ``[]`` if no file."""
        if not self.path.is_file():
            return []
        try:
            payload = json.loads(self.path.read_text())
            version = payload.get("version")
            if version != STORE_VERSION:
                raise InvalidValueError(f"store version must be {STORE_VERSION}, but got {version!r}")
            points = [SurfacePoint.from_dict(p) for p in payload["points"]]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(
                f"surface store {str(self.path)!r} is not a valid surface file ({err}): move it aside or"
                " pass another path"
            ) from None
        return [p for p in points if model is None or p.model == model]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on ``NAME.lock`` beside the store (blocks until it is free).

        A separate lock file, because the store itself is replaced by a rename on every write.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def add(self, points: SurfacePoint | Iterable[SurfacePoint]) -> list[SurfacePoint]:
        """Add points, replacing any with the same study name; returns the whole store."""
        new = [points] if isinstance(points, SurfacePoint) else list(points)
        with self._locked():
            by_name = {p.study: p for p in self.load()}
            for p in new:
                by_name[p.study] = p
            merged = list(by_name.values())
            self._write(merged)
        return merged

    def remove(self, study: str) -> bool:
        """Drop the point of ``study``; ``True`` if there was one."""
        with self._locked():
            points = self.load()
            kept = [p for p in points if p.study != study]
            if len(kept) != len(points):
                self._write(kept)
        return len(kept) != len(points)

    def _write(self, points: list[SurfacePoint]) -> None:
        """Replace the file atomically (temporary file + rename). An existing store keeps its mode;
        a new one gets ``FILE_MODE`` less the umask, as ``open()`` would give (the process umask is
        never changed). Call it holding ``_locked``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"version": STORE_VERSION, "points": [p.to_dict() for p in points]}
        try:
            mode: int | None = self.path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = None
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(6)}")
        # os.open's mode goes through the umask like a plain open() (mkstemp would give 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "w") as handle:
                if mode is not None:
                    os.fchmod(handle.fileno(), mode)  # an existing store keeps its mode
                json.dump(payload, handle, indent=1, allow_nan=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def point_from_study(study: optuna.Study) -> SurfacePoint | None:
    """The surface point of a finished study, or ``None`` if no transfer trial completed."""
    best = best_transfer_trial(study)
    if best is None:
        return None
    settings = read_settings(study)
    profile = read_attr(study, "profile")
    if not profile:
        raise UserError(
            f"study {study.study_name!r} has no task profile attribute, so it has no surface coordinates:"
            " record only studies made by `autotransfer tune`"
        )
    images = int(profile["size"]["images"])
    divergence = profile.get("divergence") or {}
    excess = [float(v) if v is not None else float("nan") for v in divergence.get("excess") or []]
    final = read_attr(study, "final") or {}
    return SurfacePoint(
        study=study.study_name,
        target=settings.target,
        model=settings.model,
        n=int(settings.n) if settings.n else images,
        seed=int(settings.seed),
        log10_n=math.log10(images),
        similarity=float(profile["similarity"]),
        excess=[v if math.isfinite(v) else 0.0 for v in excess],
        protocol=Protocol.from_dict(best.params).to_dict(),
        score=float(cast(float, best.value)),  # the best transfer trial is scored
        test_score=final.get("test_score") if final.get("trial") == best.number else None,
        metric=settings.metric or str(profile.get("metric", "")),
        num_groups=int(profile.get("num_groups", 0)),
        freeze=best.user_attrs.get(FREEZE_ATTR),
        reinit=best.user_attrs.get(REINIT_ATTR),
        trials=len(search_trials(study)),
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
        num_classes=_num_classes(settings.num_classes, profile),
        transferability=_transferability(profile),
    )


def fields_from_study(study: optuna.Study) -> tuple[int, float | None]:
    """``(num_classes, transferability)`` of a study's surface point, read from its settings and
    task profile (``(0, None)`` parts when unknown); used to fill points recorded without them."""
    profile = read_attr(study, "profile") or {}
    return _num_classes(read_settings(study).num_classes, profile), _transferability(profile)


def _num_classes(resolved: int, profile: dict[str, Any]) -> int:
    """``C`` from the study's resolved settings, else from the profile's size statistics (0 if neither)."""
    if resolved:
        return int(resolved)
    return int((profile.get("size") or {}).get("classes") or 0)


def _transferability(profile: dict[str, Any]) -> float | None:
    """The profile's ``transferability_score``; ``None`` when absent or not a finite number."""
    score = profile.get("transferability_score")
    if score is None or not math.isfinite(float(score)):
        return None
    return float(score)


def record_study(
    study: optuna.Study, store: SurfaceStore | str | os.PathLike[str] = DEFAULT_STORE
) -> SurfacePoint | None:
    """Write a finished study's point into ``store`` and into the study's ``autotransfer.surface_point``.

    Idempotent: recording again replaces the point. Returns ``None`` (and writes nothing) when
    the study has no completed transfer trial.
    """
    store = store if isinstance(store, SurfaceStore) else SurfaceStore(store)
    point = point_from_study(study)
    if point is None:
        return None
    store.add(point)
    study.set_user_attr(POINT_ATTR, point.to_dict())
    return point
