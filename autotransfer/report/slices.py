"""Accuracy along protocol slices: each sweep study's search-trial scores against each protocol knob (no plotly)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import optuna

from autotransfer.core.errors import UserError
from autotransfer.core.protocol import Protocol
from autotransfer.report.figures import protocol_score_info
from autotransfer.search.study import read_attr, search_trials
from autotransfer.surface.store import POINT_ATTR, SurfacePoint

__all__ = ["SLICE_PARAMS", "NORMALISATION", "StudySlice", "SliceInfo", "study_slice", "slice_info", "load_slice_info"]

#: The protocol knobs along which scores are drawn (the fitted surface's parameters).
SLICE_PARAMS = ("log10_elr", "freeze_frac", "reinit_frac", "log10_head_lr_mult")
#: How scores are put on one axis across studies of different difficulty.
NORMALISATION = "validation score minus the study's best completed search score (0 = the study's best)"


class StudySlice(NamedTuple):
    """One study's finished search trials (controls excluded) along every knob.

    Attributes:
        study: the study name.
        n, log10_n, similarity: the study's coordinates on the surface.
        metric: ``accuracy`` or ``balanced_accuracy``.
        numbers: ``(t,)`` trial numbers.
        pruned: ``(t,)`` True for PRUNED trials, scored at their last report (``steps``), so
            below what they would have reached: not comparable with complete ones.
        steps: ``(t,)`` step of each score (-1 when unknown).
        score: ``(t,)`` validation score.
        relative: ``(t,)`` ``score - best_score`` (``NORMALISATION``).
        values: parameter -> ``(t,)`` its value in each trial (``SLICE_PARAMS``).
        sources: ``(t,)`` where each protocol came from (``prior``, ``survey:...``, ``search``).
        best_index: index of the trial the study hands back (its pick's first member) when that
            is a search trial, else of the best completed search trial by score.
        best_score: the highest completed search score (the normalisation's reference). The
            handed-back trial can sit below it: the pick ranks by the settled score
            (``handback.pick.settled_score``), not the final one.
    """

    study: str
    n: int
    log10_n: float
    similarity: float
    metric: str
    numbers: np.ndarray
    pruned: np.ndarray
    steps: np.ndarray
    score: np.ndarray
    relative: np.ndarray
    values: dict[str, np.ndarray]
    sources: list[str]
    best_index: int
    best_score: float


class SliceInfo(NamedTuple):
    """The slices of every readable study, in store order, and why the others are missing.

    ``notes`` has one line per study skipped (not in the storage, no completed search trial...).
    """

    params: list[str]
    normalisation: str
    studies: list[StudySlice]
    notes: list[str]


def _coordinates(study: optuna.Study, point: SurfacePoint | None) -> tuple[int, float, float] | None:
    """``(n, log10 N, similarity)`` from the store's point, else the study's own point or profile."""
    if point is not None:
        return int(point.n), float(point.log10_n), float(point.similarity)
    own = study.user_attrs.get(POINT_ATTR)
    if own:
        return int(own["n"]), float(own["log10_n"]), float(own["similarity"])
    profile = read_attr(study, "profile") or {}
    images = (profile.get("size") or {}).get("images")
    if images and profile.get("similarity") is not None:
        return int(images), math.log10(int(images)), float(profile["similarity"])
    return None


def study_slice(study: optuna.Study, point: SurfacePoint | None = None) -> StudySlice | None:
    """The slice numbers of one study, or ``None`` when it has no completed search trial or no coordinates.

    Scores come from ``autotransfer.report.figures.protocol_score_info`` (COMPLETE trials at their
    value, PRUNED at their last report). Scores are put relative to the best completed search
    score; the marked trial is the one the study hands back when that is a search trial, else (a
    linear-probe control won) the best completed search trial.
    """
    coords = _coordinates(study, point)
    info = protocol_score_info(study)
    if coords is None or not any(p.state == "COMPLETE" for p in info.points):
        return None
    trials = {t.number: t for t in search_trials(study)}
    points = info.points
    index = {p.number: i for i, p in enumerate(points)}
    if info.best_number in index and points[index[info.best_number]].state == "COMPLETE":
        best_index = index[info.best_number]
    else:
        complete = [i for i, p in enumerate(points) if p.state == "COMPLETE"]
        best_index = max(complete, key=lambda i: (points[i].score, -points[i].number))
    score = np.array([p.score for p in points], dtype=float)
    best_score = float(score[[p.state == "COMPLETE" for p in points]].max())
    head = [Protocol.from_dict(trials[p.number].params).head_lr_mult for p in points]
    n, log10_n, similarity = coords
    return StudySlice(
        study=study.study_name,
        n=n,
        log10_n=log10_n,
        similarity=similarity,
        metric=info.metric,
        numbers=np.array([p.number for p in points], dtype=int),
        pruned=np.array([p.state == "PRUNED" for p in points], dtype=bool),
        steps=np.array([-1 if p.step is None else p.step for p in points], dtype=int),
        score=score,
        relative=score - best_score,
        values={
            "log10_elr": np.array([p.log10_elr for p in points], dtype=float),
            "freeze_frac": np.array([p.freeze_frac for p in points], dtype=float),
            "reinit_frac": np.array([p.reinit_frac for p in points], dtype=float),
            "log10_head_lr_mult": np.log10(np.array(head, dtype=float)),
        },
        sources=[p.source for p in points],
        best_index=int(best_index),
        best_score=best_score,
    )


def slice_info(
    studies: Sequence[optuna.Study],
    points: Mapping[str, SurfacePoint] | None = None,
    notes: Sequence[str] = (),
) -> SliceInfo:
    """The slices of ``studies`` (coordinates from ``points`` by study name when given); studies
    without a completed search trial or coordinates are left out with a note."""
    points = points or {}
    slices, out_notes = [], list(notes)
    for study in studies:
        s = study_slice(study, points.get(study.study_name))
        if s is None:
            out_notes.append(
                f"study {study.study_name!r} left out of the slices: no completed search trial or no task profile"
            )
        else:
            slices.append(s)
    return SliceInfo(params=list(SLICE_PARAMS), normalisation=NORMALISATION, studies=slices, notes=out_notes)


def load_slice_info(points: Sequence[SurfacePoint], storage: str | None) -> SliceInfo:
    """The slices of the studies behind ``points``, read from the Optuna ``storage`` URL.

    A study missing from the storage (or not made by autotransfer) is skipped with a note; a
    storage that cannot be opened (or an SQLite file that does not exist) gives no slices and a
    note, never an error: the surface itself is drawn from the store alone.
    """
    from autotransfer.search.storage import open_storage, storage_location
    from autotransfer.search.study import load_study

    url = storage_location(storage)
    if url.startswith("sqlite:///") and url[len("sqlite:///") :] not in ("", ":memory:"):
        if not Path(url[len("sqlite:///") :]).is_file():
            return SliceInfo(
                list(SLICE_PARAMS),
                NORMALISATION,
                [],
                [f"storage {url!r} does not exist: no protocol slices (pass the sweep's --storage)"],
            )
    elif "://" not in url and not Path(url).is_file():
        return SliceInfo(
            list(SLICE_PARAMS),
            NORMALISATION,
            [],
            [f"storage {url!r} does not exist: no protocol slices (pass the sweep's --storage)"],
        )
    try:
        store = open_storage(url, heartbeat=False)
        names = {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    except UserError as err:
        return SliceInfo(list(SLICE_PARAMS), NORMALISATION, [], [f"no protocol slices: {err}"])
    except Exception as err:  # noqa: BLE001 - a storage of another kind: the surface is still drawn
        return SliceInfo(
            list(SLICE_PARAMS),
            NORMALISATION,
            [],
            [f"no protocol slices: cannot read studies from the storage: {type(err).__name__}"],
        )
    studies, notes = [], []
    for point in points:
        if point.study not in names:
            notes.append(f"study {point.study!r} is not in the storage: left out of the slices")
            continue
        try:
            studies.append(load_study(point.study, store))
        except UserError as err:
            notes.append(f"study {point.study!r} left out of the slices: {err}")
    return slice_info(studies, {p.study: p for p in points}, notes)
