"""``evaluate_model``: a model folder scored on labelled images (the info step; drawing is in ``report``).

The numbers (metric with its 95% interval, per-class precision and recall, confusion matrix) come
back as an ``EvaluationInfo``, testable without plotly; ``report.evaluation`` draws them. Without a
target the model is scored on the held-out test split of the study that made it, re-created from
the folder's settings (dataset spec, N, seed, split fractions) and checked against the recorded
fingerprint: that reproduces the test score ``tune`` printed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autotransfer.core.errors import UserError

__all__ = ["EvaluationInfo", "evaluate_model", "study_test_split", "match_classes"]


@dataclass
class EvaluationInfo:
    """A model's scores on a labelled set.

    Attributes:
        target: what was scored (a dataset spec, or ``"<spec> (the study's test split)"``).
        metric: ``accuracy`` or ``balanced_accuracy``.
        score: the metric on ``images`` images; ``low``, ``high``: its 95% Wilson interval.
        images: images scored; ``skipped``: files left out (unreadable, missing, links out).
        classes: the model's classes, in its output order (rows and columns below).
        precision, recall: per class (0 where a class was never predicted / never present).
        support: images per class in the target.
        confusion: ``confusion[i][j]`` images of class ``i`` predicted as ``j``.
        skipped_files: ``(path, reason)`` of what was left out.
    """

    target: str
    metric: str
    score: float
    low: float
    high: float
    images: int
    skipped: int
    classes: list[str]
    precision: list[float]
    recall: list[float]
    support: list[int]
    confusion: list[list[int]]
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval_95"] = [self.low, self.high]
        out["per_class"] = [
            {"class": c, "precision": p, "recall": r, "support": s}
            for c, p, r, s in zip(self.classes, self.precision, self.recall, self.support)
        ]
        out["skipped_files"] = [list(item) for item in self.skipped_files]
        return out


def match_classes(target_classes: list[str], model_classes: list[str], target: str) -> np.ndarray:
    """``(C_target,)`` model index of each target class, matched by name.

    A target may hold a subset of the model's classes, in any order; a class the model does not
    know is a one-line ``UserError`` (the CLI exits 2).
    """
    index = {str(c): i for i, c in enumerate(model_classes)}
    unknown = [c for c in target_classes if str(c) not in index]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        known = ", ".join(repr(str(c)) for c in model_classes[:10]) + (", ..." if len(model_classes) > 10 else "")
        raise UserError(
            f"the classes of {target} do not match the model's: {shown} {'is' if len(unknown) == 1 else 'are'} not"
            f" among its {len(model_classes)} classes ({known}); give a target whose class folders or labels"
            " use the model's class names"
        )
    return np.asarray([index[str(c)] for c in target_classes], dtype=np.int64)


def _find_target(target: str, directory: str | Path | None) -> str:
    """The recorded dataset spec made loadable here. A model folder names a dataset folder by its
    name alone (``handback.portable``): it is looked for in the current folder, then beside the
    model folder ``directory``; found nowhere, a one-line ``UserError`` asks for a TARGET."""
    from autotransfer.data.sources import split_spec

    if target.startswith("builtin:"):
        return target
    base, _ = split_spec(target)
    prefix = "folder:" if base.startswith("folder:") else ""
    path = Path(base[len(prefix) :]).expanduser()
    if path.is_absolute() or path.exists():
        return target
    beside = None if directory is None else Path(directory).expanduser().absolute().parent / path
    if beside is not None and beside.exists():
        return prefix + str(beside) + target[len(base) :]
    where = "here" if beside is None else f"here nor beside the model folder ({str(beside.parent)!r})"
    raise UserError(
        f"the study's dataset {target!r} is recorded by its name only and is neither {where}: give a TARGET"
        " to evaluate on (e.g. `autotransfer evaluate MODEL folder:PATH`)"
    )


def study_test_split(config: dict[str, Any], directory: str | Path | None = None):
    """The held-out test split of the study that wrote a model folder's ``config``.

    Re-created as ``tune`` made it (load the target, stratified subsample of N with the seed,
    stratified split) and checked against the recorded dataset fingerprint. ``directory`` (the
    model folder) is where a dataset recorded by its folder name alone may lie beside.
    """
    from autotransfer.data import load_dataset, stratified_split, stratified_subsample

    own = config.get("autotransfer") or {}
    settings = own.get("settings") or {}
    target = settings.get("target")
    if not target:
        raise UserError("this model folder records no study settings: give a TARGET to evaluate on")
    dataset = load_dataset(_find_target(str(target), directory), require_labels=True)
    if settings.get("n"):
        dataset = stratified_subsample(dataset, int(settings["n"]), seed=int(settings.get("seed", 0)))
    expected = own.get("dataset_fingerprint") or settings.get("fingerprint")
    if expected and dataset.fingerprint != expected:
        raise UserError(
            f"dataset {target!r} here has fingerprint {dataset.fingerprint[:12]}, the study's was {str(expected)[:12]}:"
            " the data changed since the model was trained; give a TARGET to evaluate on"
        )
    splits = stratified_split(
        dataset,
        val=float(settings.get("val_frac", 0.15)),
        test=float(settings.get("test_frac", 0.15)),
        seed=int(settings.get("seed", 0)),
    )
    return splits.test


def evaluate_model(
    model,
    target=None,
    *,
    metric: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationInfo:
    """Score ``model`` (a ``Predictor`` or a model folder) on ``target``.

    ``target``: a dataset spec (``folder:PATH``, a CSV manifest, ``builtin:NAME``), an
    ``ImageDataset``, or ``None`` for the study's own test split (``study_test_split``).
    ``metric``: default the one the study used. Unreadable files are skipped and counted by the
    loader; a target class the model does not know is a ``UserError``.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from autotransfer.data import load_dataset
    from autotransfer.handback.predict import Predictor, load_model
    from autotransfer.train.metrics import check_metric, score, score_interval

    predictor = model if isinstance(model, Predictor) else load_model(model)
    metric = check_metric(metric or predictor.metric)
    if target is None:
        dataset = study_test_split(predictor.config, predictor.directory)
        name = f"{dataset.spec} (the study's test split)"
    elif isinstance(target, (str, Path)):
        dataset = load_dataset(str(target), require_labels=True)
        name = str(target)
    else:
        dataset, name = target, getattr(target, "spec", "the target")
    if dataset.labels is None:
        raise UserError(f"{name} has no labels: evaluate needs class folders or a path,label manifest")
    if len(dataset) == 0:
        raise UserError(f"{name} holds no readable images")
    classes = [str(c) for c in predictor.classes_]
    mapping = match_classes(list(dataset.classes), classes, name)
    y_true = mapping[np.asarray(dataset.labels, dtype=np.int64)]
    images = dataset.images if isinstance(dataset.images, list) else list(dataset.images)
    proba = predictor.proba_of_arrays(images, progress=progress)
    y_pred = proba.argmax(axis=1)
    value = score(y_true, y_pred, metric)
    low, high = score_interval(min(max(value, 0.0), 1.0), len(y_true))
    labels = list(range(len(classes)))
    precision, recall, _, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    confusion = confusion_matrix(y_true, y_pred, labels=labels)
    return EvaluationInfo(
        target=name,
        metric=metric,
        score=float(value),
        low=low,
        high=high,
        images=int(len(y_true)),
        skipped=int(max(dataset.skipped, len(dataset.skipped_files))),
        classes=classes,
        precision=[float(v) for v in precision],
        recall=[float(v) for v in recall],
        support=[int(v) for v in support],
        confusion=confusion.astype(int).tolist(),
        skipped_files=[(str(p), str(r)) for p, r in dataset.skipped_files],
    )
