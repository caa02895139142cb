"""``tune`` over several candidate models (``--models A,B`` / ``--model auto``): the estimator's
ranking first, a short race of the leading candidates, each on a study of its own, then the
winner's study continued with the rest of the budget (docs/design.md, "Which model").

Why a race: transferability scores rank models only moderately well (mean weighted Kendall tau
0.4-0.7 over 11 models x 11 datasets in SFDA, ECCV 2022), so some budget goes to real trials of
the top candidates, in each model's own full trainings (a costlier model gets more seconds, not
fewer trials). Why so short: the first trials of a study are its prior's centre and the linear
probe, the protocols most likely to be near the best, and 30 validation images cannot separate
close models anyway; the race only has to find a clearly better model, and within the noise of
the validation split the estimator's order decides.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, cast

from autotransfer.core.budget import Ledger, format_duration
from autotransfer.core.errors import InvalidValueError, UserError
from autotransfer.core.settings import StudySettings
from autotransfer.pipeline.outcome import TuneResult
from autotransfer.pipeline.plan import DEFAULT_BUDGET_TRAININGS, JobBudget

__all__ = [
    "Contender",
    "ModelChoice",
    "RACED",
    "RACE_TRAININGS",
    "AUTO_TRAININGS",
    "choose_winner",
    "race_and_tune",
    "contender_study_name",
]

#: At most this many candidates are raced (the estimator's first ones, dominated ones dropped).
RACED = 2
#: Each race's budget, in full trainings of the raced model (the data and estimate come on top):
#: its prior's centre and the probe control, the study's first protocols.
RACE_TRAININGS = 1.5
#: The whole job's default budget, in full trainings of the first-ranked model: 1.5x one
#: single-model default study (issue 29's bound on what choosing the model may cost).
AUTO_TRAININGS = 1.5 * DEFAULT_BUDGET_TRAININGS
#: The winner's study must be left at least this many of its trainings, or no second model is raced.
MIN_CONTINUE_TRAININGS = 2.0


@dataclass
class Contender:
    """One candidate model and what it got.

    Attributes:
        model: the model spec.
        rank: its place in the estimator's order (0 first).
        evidence: the estimator's scores for it (transferability, divergence, cost), as recorded.
        dropped: why it was not raced (dominated, or below the first ``RACED``), else ``None``.
        study: its race study's name (``None``: not raced).
        seconds: wall seconds of its race (loading, estimate, timing and trials).
        training_s: one full training of it at the study's size (measured in its race).
        score: its race's best settled validation score (mean of a trial's last evaluations).
        val_images: the validation images ``score`` was measured on.
        trials: transfer trials its race completed.
        chosen: whether its study was continued and handed back.
    """

    model: str
    rank: int
    evidence: dict[str, Any] = field(default_factory=dict)
    dropped: str | None = None
    study: str | None = None
    seconds: float = 0.0
    training_s: float | None = None
    score: float | None = None
    val_images: int | None = None
    trials: int = 0
    chosen: bool = False
    #: its ``TaskProfile`` on the study's train+val split, when the ranking measured it (its race's
    #: study starts from it); not recorded
    profile: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "profile"}
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()}


@dataclass(frozen=True)
class ModelChoice:
    """The race's record: every contender, the chosen model and why (``reason``)."""

    contenders: tuple[Contender, ...]
    chosen: str
    reason: str
    budget_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "reason": self.reason,
            "budget_s": None if self.budget_s is None else round(self.budget_s, 1),
            "race_trainings": RACE_TRAININGS,
            "candidates": [c.to_dict() for c in self.contenders],
        }


def contender_study_name(base: str | None, settings: StudySettings) -> str:
    """The study of one candidate: ``base`` (the user's ``--study``) plus the model, else the
    default name (which already holds the model)."""
    from autotransfer.core.paths import safe_name
    from autotransfer.search.run import default_study_name

    if base is None:
        return default_study_name(settings)
    return safe_name(f"{base}-{settings.model}".replace(":", "_").replace("/", "_"))


def choose_winner(raced: Sequence[Contender]) -> tuple[Contender, str]:
    """The raced contender with the best score; when it beats the estimator's first by less than
    one binomial standard error of the validation split, the estimator's first (its order is the
    better evidence within that noise). ``raced`` in the estimator's order, at least one."""
    if not raced:
        raise InvalidValueError("choose_winner needs at least one raced contender")
    scored = [c for c in raced if c.score is not None and math.isfinite(c.score)]
    first = raced[0]
    if not scored:
        return first, "no race completed a trial: the estimator's first"
    best = max(scored, key=lambda c: (c.score, -c.rank))
    if best is first:
        return first, "the best race score, and the estimator's first"
    if first.score is None or not math.isfinite(first.score):
        return best, f"the best race score ({best.score:.3f}); the estimator's first completed no trial"
    top, base = float(cast(float, best.score)), float(first.score)
    n = max(1, int(first.val_images or best.val_images or 1))
    p = min(max((top + base) / 2, 1.0 / n), 1.0 - 1.0 / n)
    se = math.sqrt(2 * p * (1 - p) / n)  # of the difference of two scores on n images
    margin = top - base
    if margin < se:
        return first, (
            f"within noise: {best.model} {best.score:.3f} vs {first.score:.3f} on {n} validation images"
            f" (SE of the difference {se:.3f}); the estimator's first"
        )
    return best, f"the best race score: {best.score:.3f} vs {first.score:.3f} (SE of the difference {se:.3f})"


def _race(
    contender: Contender,
    settings: StudySettings,
    *,
    study_name: str,
    storage: str | None,
    runs_dir: Path,
    estimator_kwargs: dict[str, Any] | None,
    ui,
) -> Any:
    """Stages 1-2 of ``tune`` for one candidate on a budget of ``RACE_TRAININGS`` of its
    trainings; fills ``contender`` in and returns the trial models the race kept."""
    from autotransfer.core.paths import safe_name
    from autotransfer.core.schema import HISTORY_ATTR
    from autotransfer.pipeline.tune import BUDGET_ESTIMATE_IMAGES, open_study_for, run_trials
    from autotransfer.search.study import transfer_trials
    from autotransfer.search.trial_models import TrialModels, settled_of_history

    budget = JobBudget.start(None, auto=True, trainings=RACE_TRAININGS)
    t0 = time.monotonic()
    opened = open_study_for(
        settings,
        study_name=study_name,
        storage=storage,
        estimator_kwargs={"max_images": BUDGET_ESTIMATE_IMAGES, **(estimator_kwargs or {})},
        ui=ui,
        scratch_last=True,
        profile=contender.profile,
    )
    keep = TrialModels(runs_dir / f".{safe_name(opened.name)}.trials")
    run_trials(opened, ui=ui, budget=budget, keep=keep)
    trials = transfer_trials(opened.study)
    scores = [settled_of_history(t.user_attrs.get(HISTORY_ATTR) or [(0, float(t.value or 0.0))]) for t in trials]
    contender.study = opened.name
    contender.seconds = time.monotonic() - t0
    contender.training_s = budget.ledger.training_s
    contender.score = max(scores, default=None)
    contender.val_images = len(opened.prepared.val)
    contender.trials = len(trials)
    return keep


def race_and_tune(
    ranked: Sequence[Contender],
    settings: StudySettings | Callable[[str], StudySettings],
    *,
    study_name: str | None = None,
    storage: str | None = None,
    time_budget: float | Literal["auto"] | None = "auto",
    ranking_s: float = 0.0,
    runs_dir: str | Path = "studies/runs",
    estimator_kwargs: dict[str, Any] | None = None,
    ui=None,
    **tune_kwargs: Any,
) -> TuneResult:
    """Race the first ``RACED`` undropped contenders of ``ranked`` (the estimator's order) and
    continue the winner's study with ``pipeline.tune.tune`` for the rest of the budget.

    ``settings``: the study's settings (its model replaced by each candidate's), or a function of
    the model spec that gives each candidate's (its own prior). ``time_budget``: the whole job's
    seconds (``ranking_s`` of them already spent on the estimator's ranking); ``None``: the races
    as for ``"auto"``, then the winner's study runs to ``--trials`` with no time limit; ``"auto"``:
    ``AUTO_TRAININGS`` full trainings of the first raced
    model (as measured in its race), and never less than what the ranking and that race took
    plus the rest of those trainings (as the default job's budget: tiny studies train faster
    than they load). ``tune_kwargs`` go to ``tune`` (``export_dir``,
    ``surface_store``...). The result carries ``model_choice`` and a ledger of the whole job."""
    from autotransfer.pipeline.tune import tune
    from autotransfer.search.progress import NullUI

    ui = ui or NullUI()
    runs = Path(runs_dir)
    pool = [c for c in ranked if c.dropped is None]
    if not pool:
        raise UserError("every candidate model was dropped: give --models with at least one usable model")
    for c in pool[RACED:]:
        c.dropped = f"below the estimator's first {RACED}"
    settings_for = settings if callable(settings) else (lambda model: replace(settings, model=model))
    started = time.monotonic() - ranking_s
    budget_s = time_budget if isinstance(time_budget, (int, float)) else None
    raced: list[Contender] = []
    kept: dict[str, Any] = {}
    for c in pool[:RACED]:
        if raced:
            unit = raced[0].training_s or 0.0
            left = None if budget_s is None else budget_s - (time.monotonic() - started)
            if left is not None and left < (RACE_TRAININGS + MIN_CONTINUE_TRAININGS) * unit:
                c.dropped = (
                    f"not raced: {format_duration(max(left, 0.0))} left, too little for a race and the winner's"
                    " continuation"
                )
                continue
        ui.stage(f"race: {c.model} (candidate {c.rank + 1}, {RACE_TRAININGS:g} trainings)")
        own = settings_for(c.model)
        name = contender_study_name(study_name, own)
        kept[c.model] = _race(
            c,
            own,
            study_name=name,
            storage=storage,
            runs_dir=runs,
            estimator_kwargs=estimator_kwargs,
            ui=ui,
        )
        raced.append(c)
        if (
            time_budget == "auto" and budget_s is None and c.training_s
        ):  # as the default job's: never less than what was spent, plus its share
            spent = time.monotonic() - started
            budget_s = max(
                ranking_s + AUTO_TRAININGS * c.training_s, spent + (AUTO_TRAININGS - RACE_TRAININGS) * c.training_s
            )
        ui.note(
            f"race: {c.model}: best settled validation {c.score if c.score is not None else float('nan'):.3f}"
            f" over {c.trials} trial(s) in {format_duration(c.seconds)}"
        )
    winner, reason = choose_winner(raced)
    winner.chosen = True
    ui.note(f"model: {winner.model} ({reason})")
    spent = time.monotonic() - started
    left = None if budget_s is None else max(budget_s - spent, 1.0)
    result = tune(
        settings_for(winner.model),
        study_name=winner.study,
        storage=storage,
        runs_dir=runs,
        estimator_kwargs=estimator_kwargs,
        ui=ui,
        time_budget=left,
        keep=kept.get(winner.model),
        **tune_kwargs,
    )
    for model, models in kept.items():  # the losers' kept trial models are not needed any more
        if model != winner.model:
            models.clear()
    choice = ModelChoice(tuple(ranked), winner.model, reason, budget_s)
    return _with_choice(result, choice, raced, ranking_s)


def _with_choice(result: TuneResult, choice: ModelChoice, raced: Sequence[Contender], ranking_s: float) -> TuneResult:
    """``result`` with the race's record, on the study too, and a ledger of the whole job."""
    import optuna

    from autotransfer.core.schema import ATTR
    from autotransfer.search.storage import open_storage

    ledger = Ledger()
    ledger.add("ranking candidates", ranking_s)
    for c in raced:
        ledger.add(f"race {c.model}", c.seconds)
    own = result.ledger or {}
    for stage, seconds in (own.get("stages") or {}).items():
        ledger.add(stage, float(seconds))
    ledger.training_s = own.get("training_s")
    record = choice.to_dict()
    study = optuna.load_study(study_name=result.study_name, storage=open_storage(result.storage))
    study.set_user_attr(ATTR["model_choice"], record)
    study.set_user_attr(ATTR["ledger"], {**ledger.to_dict(), "plan": result.plan})  # the whole job's
    return replace(
        result,
        model_choice=record,
        ledger=ledger.to_dict(),
        notes=[f"model: {choice.chosen} of {len(choice.contenders)} candidates ({choice.reason})", *result.notes],
    )
