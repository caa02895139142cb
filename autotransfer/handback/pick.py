"""The pick: how ``tune`` turns a finished study into the protocol it hands back.

A study's validation split is small (30 images at N = 200: one image is 3.3 points), and its
best validation score is the luckiest of twenty noisy draws.

Rule ``ensemble`` (the default) does not choose among the top protocols: it keeps the top
``PICK_TOP`` distinct ones by settled validation score (``pick_candidates``, ``settled_score``: the
mean of a trial's last ``SETTLE_EVALS`` validation evaluations, so a protocol whose curve swings
loses to a steady one of similar score) as the members of an ensemble;
``handback.final`` retrains each on train+val and the handed-back model averages their softmax
probabilities. Measured on the judged benchmark (docs/design.md, "The pick"): the validation
and cross-validation scores on a few hundred images cannot tell the top protocols apart, while
averaging them scores above the single picked model and close to the best protocol the study
tried, at the cost of ``PICK_TOP - 1`` extra retrains and as many forward passes at prediction.

Rule ``cv`` re-scores
the top ``PICK_TOP`` distinct transfer protocols by stratified ``PICK_FOLDS``-fold
cross-validation on train+val: every train+val image is scored once, by a model that did not
train on it, so each candidate is judged on ~6x the images of the validation split. The trials'
own validation scores are left out of the re-score: they are what selected the candidates, so
they are biased upwards. Each fold trains with its own seed, so a protocol that is unstable
across seeds shows it in the spread of its fold scores; candidates rank by the pooled
out-of-fold score minus the standard error of their fold scores relative to the other candidates
on the same folds (``paired_instability``: every candidate meets the same hard fold, so the raw
spread would measure the folds; measured on the embedded demo, it flipped the pick to a protocol
2.6 points worse on unseen images). ``CandidateScore.key`` is that value.
Rule ``val`` takes the best validation trial (``best_by_validation``) at no cost.

The pick is stored on the study (``ATTR["pick"]``), so a resumed study hands back the same
trial without re-scoring, and ``export`` / ``train --config`` reproduce it
(``best_transfer_trial`` reads it). docs/design.md, "The pick", gives the measurements.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, cast

import numpy as np
import optuna

from autotransfer.core.protocol import Protocol
from autotransfer.core.schema import ATTR, BUDGET_STOP_ATTR, HISTORY_ATTR, SOURCE_ATTR
from autotransfer.core.settings import StudySettings
from autotransfer.search.prepared import PreparedData, device_batches
from autotransfer.search.study import best_by_validation, rank_key, transfer_trials

__all__ = [
    "PICK_TOP",
    "PICK_FOLDS",
    "CandidateScore",
    "Pick",
    "paired_instability",
    "pick_candidates",
    "pick_protocol",
    "read_pick",
    "settled_score",
    "SETTLE_EVALS",
]

#: How many of the study's best distinct protocols the ``cv`` rule re-scores.
PICK_TOP = 3
#: How many of a trial's last validation evaluations its settled score averages (docs/design.md,
#: "The pick": measured on the judged benchmark's recorded studies).
SETTLE_EVALS = 3
#: Folds of the re-score (each trains at the study's step budget on (K-1)/K of train+val).
PICK_FOLDS = 3


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's cross-validated score.

    Attributes:
        trial: the study trial whose protocol this is; ``val_score`` its validation score.
        fold_scores: the metric on each held-out fold.
        oof_score: the metric over all out-of-fold predictions pooled (``images`` of them).
        fit_scores: each fold model's score on its own training part (eval mode): what a healthy
            final retrain on train+val should reach or exceed.
        instability: the standard error of the candidate's fold scores *relative to the other
            candidates on the same folds* (``paired_instability``): protocol-specific swings with
            the seed and the split, with the folds' shared difficulty taken out.
    """

    trial: int
    source: str | None
    val_score: float
    fold_scores: list[float]
    oof_score: float
    images: int
    fit_scores: list[float]
    instability: float = 0.0

    @property
    def key(self) -> float:
        """The ranking value: the pooled score less its instability."""
        return self.oof_score - self.instability


def paired_instability(fold_scores: list[list[float]]) -> list[float]:
    """Per candidate, the standard error over folds of its fold score minus the candidates' mean
    on that fold. All candidates share the folds, so a hard fold lowers every score alike: the
    raw fold-to-fold spread measures the folds; this paired spread measures the protocol.

    ``fold_scores``: ``(candidates, K)``.
    """
    scores = np.asarray(fold_scores, dtype=float)
    if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] < 2:
        return [0.0] * len(fold_scores)
    residual = scores - scores.mean(axis=0, keepdims=True)
    return [float(v) for v in residual.std(axis=1, ddof=1) / math.sqrt(scores.shape[1])]


@dataclass
class Pick:
    """The outcome of a pick rule (stored on the study as ``ATTR["pick"]``).

    ``trial`` is the protocol the study hands back (for an ensemble: its first member, the best
    by validation, which ``export``, the surface and timm's single-model tools use).
    ``members`` are the trials whose retrained models form the handed-back model, in order (one
    for ``cv`` and ``val``). ``trainings`` models of ``steps`` optimizer steps each were trained
    in ``seconds`` for the pick itself, beyond the one retrain every rule makes (for
    ``ensemble``: the ``len(members) - 1`` extra retrains, made by ``handback.final``).
    """

    rule: str
    trial: int
    candidates: list[CandidateScore] = field(default_factory=list)
    trainings: int = 0
    steps: int = 0
    seconds: float = 0.0
    members: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [self.trial]

    @property
    def chosen(self) -> CandidateScore | None:
        return next((c for c in self.candidates if c.trial == self.trial), None)

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "trial": self.trial,
            "members": list(self.members),
            "candidates": [asdict(c) for c in self.candidates],
            "trainings": self.trainings,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Pick":
        return cls(
            rule=str(values["rule"]),
            trial=int(values["trial"]),
            candidates=[CandidateScore(**c) for c in values.get("candidates", [])],
            trainings=int(values.get("trainings", 0)),
            steps=int(values.get("steps", 0)),
            seconds=float(values.get("seconds", 0.0)),
            members=[int(v) for v in values.get("members") or []],
        )


def read_pick(study: optuna.Study) -> Pick | None:
    """The pick recorded on ``study``, if any."""
    values = study.user_attrs.get(ATTR["pick"])
    return Pick.from_dict(values) if values else None


def settled_score(trial: optuna.trial.FrozenTrial) -> float:
    """The mean of ``trial``'s last ``SETTLE_EVALS`` validation scores (its recorded history); its
    final score when it recorded none (trials from before the history was kept)."""
    history = trial.user_attrs.get(HISTORY_ATTR) or []
    tail = [float(v) for _, v in history[-SETTLE_EVALS:]]
    return sum(tail) / len(tail) if tail else cast(float, trial.value)


def pick_candidates(
    study: optuna.Study,
    top: int = PICK_TOP,
    score: Callable[[optuna.trial.FrozenTrial], float] = settled_score,
) -> list[optuna.trial.FrozenTrial]:
    """The ``top`` best COMPLETE transfer trials, one per distinct protocol, ranked by ``score``
    (default ``settled_score``; ties: ``rank_key``: the final score, the lower validation loss,
    the earlier trial). ``benchmarks/bench_pick_replay.py`` passes other rankings.

    The final validation score alone rewards a curve that happens to peak at its last evaluation,
    which is how an unstable protocol joined ensembles on the judged benchmark (docs/design.md,
    "The pick")."""
    seen: set[tuple] = set()
    out = []

    # a trial the time budget stopped mid-run ranks after every trial that ran its whole budget
    # (its score is of a model trained less): it is handed back only when too few others completed
    def order(t: optuna.trial.FrozenTrial) -> tuple:
        return (BUDGET_STOP_ATTR not in t.user_attrs, score(t), *rank_key(t))

    for t in sorted(transfer_trials(study), key=order, reverse=True):
        key = tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in t.params.items()))
        if key in seen:
            continue
        seen.add(key)
        out.append(t)
        if len(out) == top:
            break
    return out


def pick_protocol(
    study: optuna.Study,
    settings: StudySettings,
    prepared: PreparedData,
    make_backbone: Callable[[], Any],
    *,
    progress: Callable[[int, int], None] | None = None,
    on_candidate: Callable[[int, int, int], None] | None = None,
    micro_batch: int | None = None,
) -> Pick | None:
    """Apply ``settings.pick`` to the finished ``study`` and record the result on it.

    A pick already recorded with the same rule is returned as is (a resumed study hands back the
    same trial). ``None`` when no transfer trial completed. ``on_candidate(i, k, trial)`` is called
    before each candidate is re-scored.
    """
    recorded = read_pick(study)
    if recorded is not None and recorded.rule == settings.pick:
        return recorded
    best = best_by_validation(study)
    if best is None:
        return None
    candidates = pick_candidates(study) if settings.pick in ("cv", "ensemble") else [best]
    if settings.pick == "ensemble":
        members = [t.number for t in candidates]
        chosen = Pick(
            rule="ensemble",
            trial=members[0],
            members=members,
            trainings=len(members) - 1,
            steps=int(cast(int, settings.steps)),
        )
        study.set_user_attr(ATTR["pick"], chosen.to_dict())
        return chosen
    if settings.pick == "val" or len(candidates) == 1:
        chosen = Pick(rule=settings.pick, trial=best.number)
        study.set_user_attr(ATTR["pick"], chosen.to_dict())
        return chosen
    started = time.perf_counter()
    folds = _folds(prepared, settings, make_backbone().preprocessing)
    scores = []
    for i, trial in enumerate(candidates):
        if on_candidate:
            on_candidate(i, len(candidates), trial.number)
        scores.append(_cross_validate(trial, settings, folds, make_backbone, progress, micro_batch))
    spreads = paired_instability([c.fold_scores for c in scores])
    scores = [replace(c, instability=round(v, 6)) for c, v in zip(scores, spreads)]
    winner = max(scores, key=lambda c: (c.key, -c.trial))
    chosen = Pick(
        rule="cv",
        trial=winner.trial,
        candidates=scores,
        trainings=len(scores) * len(folds),
        steps=int(cast(int, settings.steps)),
        seconds=time.perf_counter() - started,
    )
    study.set_user_attr(ATTR["pick"], chosen.to_dict())
    return chosen


@dataclass
class _Fold:
    train: Any
    held: Any
    seed: int
    cache: Any


def _folds(prepared: PreparedData, settings: StudySettings, preprocessing) -> list[_Fold]:
    """Stratified folds of train+val, seeded by the study's seed; fold ``i`` trains with seed
    ``seed + 1 + i`` (a different seed from the trials', so seed instability shows)."""
    from sklearn.model_selection import StratifiedKFold

    from autotransfer.train import PrefixCache

    trainval = prepared.trainval
    labels = np.asarray(trainval.labels)
    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    k = max(2, min(PICK_FOLDS, smallest)) if smallest >= 2 else 2
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=settings.seed)
    stratify = labels if smallest >= k else np.zeros_like(labels)
    folds = []
    for i, (fit_idx, held_idx) in enumerate(splitter.split(np.zeros(len(labels)), stratify)):
        folds.append(
            _Fold(
                train=device_batches(trainval.subset(fit_idx), settings, preprocessing, prepared.device),
                held=device_batches(trainval.subset(held_idx), settings, preprocessing, prepared.device),
                seed=settings.seed + 1 + i,
                cache=PrefixCache(),
            )
        )
    return folds


def _cross_validate(
    trial, settings: StudySettings, folds: list[_Fold], make_backbone, progress, micro_batch: int | None = None
) -> CandidateScore:
    from autotransfer.search.objective import train_config_for
    from autotransfer.train import DivergedError, predict_labels, score, train_protocol, with_oom_retry

    protocol = Protocol.from_dict(trial.params)
    fold_scores, fit_scores, y_true, y_pred = [], [], [], []
    for fold in folds:

        def run(micro: int | None, fold: _Fold = fold):
            model = make_backbone()
            config = train_config_for(protocol, settings, model.num_groups, micro_batch=micro)
            config = config.replace(seed=fold.seed, eval_every=config.steps)
            train_protocol(model, fold.train, None, config, metric=settings.metric, progress=progress, cache=fold.cache)
            return model

        try:
            backbone, micro_batch = with_oom_retry(run, micro_batch, settings.batch_size)
        except DivergedError:
            # a protocol that diverges under another seed is as good as chance here
            held_labels = np.asarray(fold.held.labels.cpu())
            y_true.append(held_labels)
            y_pred.append(np.full_like(held_labels, -1))
            fold_scores.append(0.0)
            fit_scores.append(0.0)
            continue
        labels, predicted = predict_labels(backbone, fold.held)
        y_true.append(labels)
        y_pred.append(predicted)
        fold_scores.append(score(labels, predicted, settings.metric))
        fit_labels, fit_predicted = predict_labels(backbone, fold.train)
        fit_scores.append(score(fit_labels, fit_predicted, settings.metric))
        del backbone
    all_true, all_pred = np.concatenate(y_true), np.concatenate(y_pred)
    return CandidateScore(
        trial=int(trial.number),
        source=trial.user_attrs.get(SOURCE_ATTR),
        val_score=float(trial.value),
        fold_scores=[round(float(v), 6) for v in fold_scores],
        oof_score=round(float(score(all_true, all_pred, settings.metric)), 6),
        images=int(len(all_true)),
        fit_scores=[round(float(v), 6) for v in fit_scores],
    )
