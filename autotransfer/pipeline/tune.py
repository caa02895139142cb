"""``tune``, the main job, as four named stages (docs/design.md, "Data flow"):

1. ``open_study_for``: load the data, estimate the task and derive the prior, then create the
   study (ranges, enqueued controls and candidates), or resume it after checking it fits;
2. ``run_trials``: controls + search, in this process or on local worker processes;
3. ``finalise``: the pick, then the final retrain(s) on train+val, checked, and the test score;
4. ``publish``: save the model folder, write the export, record the surface point.

With ``--unlabelled``, ``self_train_stage`` runs between ``finalise`` and ``publish``
(docs/design.md, "Self-training"). ``tune`` runs them in order and builds its ``TuneResult`` once, at the end.

Over 400 lines: the four stages and their small result types; each stage is a function that can be
run and tested alone.
"""

from __future__ import annotations

import functools
import gc
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import optuna

from autotransfer.core.budget import parse_duration
from autotransfer.core.errors import UserError
from autotransfer.core.paths import safe_name
from autotransfer.core.protocol import Protocol
from autotransfer.core.schema import ATTR, FREEZE_ATTR, REINIT_ATTR
from autotransfer.core.settings import StudySettings
from autotransfer.core.validation import check_timeout
from autotransfer.handback.deliver import Delivered
from autotransfer.handback.final import FinalEnsemble, Member, final_is_current, handed_back_members, train_ensemble
from autotransfer.handback.pick import PICK_TOP, Pick, pick_protocol
from autotransfer.pipeline.outcome import (
    SMALL_VALIDATION,
    TuneResult,
    describe_pick,
    describe_prior,
    describe_self_training,
    surface_evidence_shortfall,
)
from autotransfer.pipeline.plan import DEFAULT_BUDGET_TRAININGS, RETRAIN_COST, JobBudget
from autotransfer.search.prepared import PreparedData, prepare_data
from autotransfer.search.run import (
    build_runner,
    control_scores,
    default_study_name,
    fixed_protocols,
    run_search,
    validation_counts,
    warm_start_protocols,
)
from autotransfer.search.storage import masked_url, open_storage, storage_location
from autotransfer.search.study import (
    JOIN_WAIT,
    best_transfer_trial,
    check_compatible,
    create_study,
    load_study,
    open_study,
    read_settings,
    search_trials,
    study_exists,
)
from autotransfer.search.trial_models import TrialModels

if TYPE_CHECKING:
    from autotransfer.prior import Prior

#: Under a time budget the estimator reads at most this many images (its default is 1,000): its
#: features come from forward passes at the model's native input size (224 px for Lite0), which
#: at N = 1000 cost about half a training on 2 CPU cores; 300 keep LogME's features-to-images
#: ratio under 5 for a 1,280-wide feature.
BUDGET_ESTIMATE_IMAGES = 300

__all__ = [
    "TuneResult",
    "tune",
    "OpenStudy",
    "Finalised",
    "open_study_for",
    "run_trials",
    "finalise",
    "self_train_stage",
    "publish",
]


@dataclass(frozen=True)
class OpenStudy:
    """A study ready to run (stage 1's result).

    Attributes:
        study: the Optuna study; ``name`` its name, ``url`` its storage.
        settings: resolved on the data (fingerprint, metric, counts); on resume, the recorded ones.
        prepared: the study's data (subsample, splits, device).
        preprocessing: the model's input preprocessing (mean, std, size).
        profile, prior: the task profile and the prior, as recorded on the study.
        notes: what the summary must say about how the study was opened (capped N, recorded
            settings that won over this run's).
    """

    study: optuna.Study
    name: str
    url: str
    settings: StudySettings
    prepared: PreparedData
    preprocessing: Any
    profile: dict[str, Any] | None
    prior: dict[str, Any] | None
    notes: tuple[str, ...] = ()


def open_study_for(
    settings: StudySettings,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    warm_start: str | None = None,
    estimator_kwargs: dict[str, Any] | None = None,
    ui=None,
    scratch_last: bool = False,
    profile=None,
) -> OpenStudy:
    """Stage 1: load and split the data; create the study (estimate, prior, ranges, enqueued
    controls and candidates) or resume it (the data fingerprint, model and precision must fit;
    the recorded settings win, only ``--trials`` may grow). ``scratch_last``: a time-budgeted job
    queues its from-scratch control after every other enqueued protocol (``fixed_protocols``).
    ``profile``: the ``TaskProfile`` of this model on this study's train+val split, already
    measured (``estimate.candidates``): a new study starts from it instead of estimating again."""
    from autotransfer.backbones import create_backbone
    from autotransfer.search.progress import NullUI

    ui = ui or NullUI()
    url = storage_location(storage)
    store = open_storage(url)
    name = safe_name(study_name or default_study_name(settings))
    notes: list[str] = []

    ui.stage("loading data")
    prepared = prepare_data(settings)
    if settings.n is not None and settings.n > len(prepared.dataset):
        ui.note(
            f"--n {settings.n} is more than {settings.target!r} holds: the study uses all {len(prepared.dataset)} images"
        )
        settings = replace(settings, n=len(prepared.dataset))
        notes.append(f"N was capped at {settings.n}: all the images {settings.target!r} holds")
    probe_backbone = create_backbone(settings.model, num_classes=len(prepared.dataset.classes))

    joined = study_exists(store, name)
    if not joined:
        try:
            study, settings, profile_dict, prior_dict = _create(
                name, store, settings, prepared, probe_backbone, warm_start, estimator_kwargs, ui, scratch_last, profile
            )
            ui.note(f"created study {name!r} in {masked_url(url)}")
        except optuna.exceptions.DuplicatedStudyError:  # another run created it while this one estimated
            joined = True
            ui.note(f"another run created study {name!r} meanwhile: joined study {name!r} as one more worker")
    if joined:
        study, settings, profile_dict, prior_dict, overridden = _resume(name, store, settings, prepared, warm_start, ui)
        if overridden:
            notes.insert(0, overridden)
    ui.note(describe_prior(settings.prior_spec, prior_dict))
    return OpenStudy(
        # a run that joins the study draws its own protocols (each process that runs trials explores)
        study=open_study(name, store, settings, reseed=joined),
        name=name,
        url=url,
        settings=settings,
        prepared=prepared,
        preprocessing=probe_backbone.preprocessing,
        profile=profile_dict,
        prior=prior_dict,
        notes=tuple(notes),
    )


def _resume(name, store, settings: StudySettings, prepared: PreparedData, warm_start, ui):
    """The existing study ``name``, checked against this run, with its recorded settings."""
    from autotransfer.search.objective import precision_refusal, trial_precision
    from autotransfer.search.study import resume_overrides

    study = load_study(name, store, wait=JOIN_WAIT)  # its creator may still be writing its settings
    stored = read_settings(study)
    settings = settings.resolved(
        fingerprint=prepared.fingerprint,
        metric=stored.metric,
        num_classes=stored.num_classes,
        n_train=len(prepared.train),
        **validation_counts(prepared, stored.metric),
    )
    check_compatible(study, settings)
    # one precision per study (docs/devices.md): refuse before any trial runs
    refusal = precision_refusal(study, trial_precision(prepared.device), str(prepared.device))
    if refusal is not None:
        raise UserError(refusal)
    overridden = resume_overrides(stored, settings, warm_start=warm_start)
    # resume with the stored budget and options; only --trials may grow. Self-training follows
    # the search (it does not change it): a run's --unlabelled (with its threshold) wins, and
    # without it the study's recorded request stands
    this_run: dict[str, Any] = {"trials": settings.trials, "deliver": settings.deliver}
    if settings.unlabelled:
        this_run.update(unlabelled=settings.unlabelled, pseudo_threshold=settings.pseudo_threshold)
    settings = type(settings).from_dict({**stored.to_dict(), **this_run, "device": settings.device})
    if any(getattr(settings, key) != getattr(stored, key) for key in this_run):
        # workers read the budget from the study
        study.set_user_attr(ATTR["settings"], {**stored.to_dict(), **this_run})
    ui.note(f"resuming study {name!r}: {len(search_trials(study))} finished search trials")
    if overridden:
        ui.note(overridden)
    return study, settings, study.user_attrs.get(ATTR["profile"]), study.user_attrs.get(ATTR["prior"]), overridden


def _create(
    name,
    store,
    settings: StudySettings,
    prepared: PreparedData,
    probe_backbone,
    warm_start,
    estimator_kwargs,
    ui,
    scratch_last: bool = False,
    profile=None,
):
    """A new study ``name``: estimate the task (unless its ``profile`` is given), derive the
    prior, enqueue the fixed protocols."""
    from autotransfer.estimate import TaskEstimator
    from autotransfer.forecast import forecast_line

    if profile is None or profile.model != settings.model:
        ui.stage("estimating the task")
        # the estimator runs where the trials run (--device), unless told otherwise
        estimator = TaskEstimator(**{"device": str(prepared.device), **(estimator_kwargs or {})})
        # the held-out test split stays unseen: LogME, LEEP and H-score read labels
        profile = estimator.fit(prepared.trainval, probe_backbone)
        ui.note(forecast_line(estimator, len(prepared.dataset), resolution=settings.resolution, trials=settings.trials))
    metric = profile.size.metric
    settings = settings.resolved(
        fingerprint=prepared.fingerprint,
        metric=metric,
        num_classes=len(prepared.dataset.classes),
        n_train=len(prepared.train),
        **validation_counts(prepared, metric),
    )
    spec = settings.prior_spec
    if spec.kind == "surface":
        from autotransfer.surface import prior_for_task

        prior: Prior | None = prior_for_task(cast(str, spec.path), profile)  # a surface spec has its path
    else:
        prior = profile.prior if spec.kind != "none" else None
    if prior is None:
        from autotransfer.prior import wide_prior

        space = wide_prior(settings.schedules)
    else:
        from autotransfer.prior import with_schedules

        prior = with_schedules(prior, settings.schedules)  # the recorded prior says what runs
        space = prior.space
    fixed = fixed_protocols(prior, probe_backbone.num_groups, scratch_last=scratch_last)
    if warm_start:
        fixed += warm_start_protocols(store, warm_start)
    profile_dict = profile.to_dict()
    prior_dict = prior.to_dict() if prior is not None else None
    study = create_study(
        name,
        store,
        settings,
        profile=profile_dict,
        prior=prior_dict,
        space=space,
        enqueue=fixed,
        spread=prior.spread if prior is not None else None,
    )
    return study, settings, profile_dict, prior_dict


def run_trials(
    opened: OpenStudy,
    *,
    workers: int = 1,
    timeout: float | None = None,
    ui=None,
    budget: JobBudget | None = None,
    keep: TrialModels | None = None,
) -> int | None:
    """Stage 2: controls + search until the study's budget is met (or ``timeout``), in this
    process or on ``workers`` local worker processes. Returns the micro-batch an out-of-memory
    shrank the search to (``None``: the full batch fitted, or the workers ran it).

    With a time ``budget`` (``pipeline.plan.JobBudget``), one full training is timed first and the
    plan printed; the search then stops, mid-trial if need be, when its share of the budget is
    spent. ``keep`` keeps the best trials' models for a hand-back without retraining."""
    from autotransfer.search.progress import NullUI

    ui = ui or NullUI()
    settings = opened.settings
    if workers > 1:
        from autotransfer.search.workers import run_local_workers

        ui.stage(f"controls + search on {workers} local workers")
        left = None if budget is None else budget.clock.left()
        if left is not None:
            timeout = left if timeout is None else min(timeout, left)
        t0 = time.monotonic()
        run_local_workers(opened.name, opened.url, workers, device=settings.device, timeout=timeout, ui=ui)
        if budget is not None:
            budget.ledger.add("controls + search", time.monotonic() - t0)
        return None
    runner = build_runner(opened.study, settings, opened.prepared, ui=ui, preprocessing=opened.preprocessing)
    expired = None
    if budget is not None and budget.limited:
        _plan(opened, runner, budget, ui)
        expired = runner.stop = _SearchClock(budget, opened.study)
    runner.keep = keep
    ui.stage("controls + search")
    ui.search_start(total=settings.trials, done=len(search_trials(opened.study)))
    t0 = time.monotonic()
    started = time.time()
    run_search(
        opened.study,
        runner,
        settings.trials,
        timeout=timeout,
        on_trial_end=ui.search_advance,
        expired=expired,
        on_trial_done=ui.trial_end,
    )
    ui.search_end()
    if budget is not None:
        _account_search(opened.study, budget, time.monotonic() - t0, started)
        if budget.search_expired():
            ui.note(f"the search's share of the time budget is spent: {len(search_trials(opened.study))} search trials")
    micro_batch = runner.micro_batch  # an out-of-memory in the search shrank it: keep it
    del runner  # its prefix cache is not needed by the pick or the retrain
    gc.collect()
    return micro_batch


class _SearchClock:
    """Whether the search's share of the time budget is spent (``JobBudget.search_expired``), but
    never before one transfer trial has completed: a budget that loading and estimating already
    spent still hands back a model (and the plan said so). Called after every optimizer step, so
    it reads the study at most once a second, and only once the time is up."""

    def __init__(self, budget: JobBudget, study: optuna.Study) -> None:
        self.budget, self.study = budget, study
        self.have_one = False
        self.checked = 0.0

    def __call__(self) -> bool:
        if not self.budget.search_expired():
            return False
        if not self.have_one and time.monotonic() - self.checked >= 1.0:
            from autotransfer.search.study import transfer_trials

            self.checked = time.monotonic()
            self.have_one = bool(transfer_trials(self.study))
        return self.have_one


def _plan(opened: OpenStudy, runner, budget: JobBudget, ui) -> None:
    """Time one full training (a few steps of the prior's model, every group trainable) and fix
    the job's plan; print it."""
    from autotransfer.search.objective import train_config_for
    from autotransfer.train.timing import time_training

    t0 = time.monotonic()
    config = train_config_for(Protocol(), opened.settings, runner.make_backbone().num_groups)
    training_s = time_training(runner.make_backbone, runner.train, runner.val, config, metric=opened.settings.metric)
    budget.ledger.add("timing", time.monotonic() - t0)
    plan = budget.make_plan(
        training_s,
        members=PICK_TOP if opened.settings.pick == "ensemble" else 1,
        self_training=bool(opened.settings.unlabelled),
        distill=opened.settings.deliver == "distilled",
    )
    ui.note(plan.describe())
    for note in plan.notes:
        ui.note(note)
    ui.budget_start(budget.clock)


def _account_search(study: optuna.Study, budget: JobBudget, seconds: float, since: float) -> None:
    """Split the search's ``seconds`` into the controls' and the search trials' (by the wall time
    each trial this run finished recorded) in the ledger."""
    from autotransfer.search.study import control_trials

    controls = [
        t for t in control_trials(study) if t.datetime_complete is not None and t.datetime_complete.timestamp() >= since
    ]
    control_s = sum(float(t.user_attrs.get("wall_time_s", 0.0)) for t in controls)
    budget.ledger.add("controls", control_s, trainings=len(controls))
    budget.ledger.add("search", max(0.0, seconds - control_s))


@dataclass(frozen=True)
class Finalised:
    """Stage 3's result: the pick and the handed-back model.

    Attributes:
        pick: the pick recorded on the study (``None`` for a study without one).
        best: the trial the study hands back (an ensemble's first member).
        members: the trials whose retrains form the handed-back model.
        test_score: its score on the held-out test split.
        trained: the retrained models, or ``None`` when an earlier run's model folder was kept.
        notes: what the summary must say (the pick, a fallback, the ensemble's members).
    """

    pick: Pick | None
    best: optuna.trial.FrozenTrial
    members: tuple[Member, ...]
    test_score: float | None
    trained: FinalEnsemble | None
    notes: tuple[str, ...] = ()
    self_training: dict[str, Any] | None = None
    #: the folder's root network, when ``deliver_stage`` made it (``None``: kept, or not yet run)
    delivered: Delivered | None = None


def finalise(
    opened: OpenStudy,
    *,
    model_dir: Path,
    micro_batch: int | None = None,
    ui=None,
    self_training: dict[str, Any] | None = None,
    budget: JobBudget | None = None,
    keep: TrialModels | None = None,
) -> Finalised | None:
    """Stage 3: apply the pick rule (recorded on the study), then retrain and check each member on
    train+val and score the handed-back model on the test split. ``None`` when no transfer trial
    completed. A resumed study whose recorded final model is still in ``model_dir`` keeps it, if
    it was made with this run's self-training request ``self_training``
    (``handback.self_training.self_training_key``: ``None`` without ``--unlabelled``)."""
    from autotransfer.backbones import create_backbone
    from autotransfer.search.progress import NullUI

    ui = ui or NullUI()
    study, settings = opened.study, opened.settings

    def make_backbone():
        return create_backbone(settings.model, num_classes=settings.num_classes)

    if settings.pick == "cv":
        ui.stage(f"picking: cross-validating the top {PICK_TOP} protocols on train+val")
    pick = pick_protocol(
        study,
        settings,
        opened.prepared,
        make_backbone,
        progress=ui.trial_progress,
        on_candidate=lambda i, k, number: ui.note(f"pick: candidate {i + 1} of {k} (trial {number})"),
        micro_batch=micro_batch,
    )
    best = best_transfer_trial(study)
    if best is None:
        return None
    notes = [describe_pick(pick, settings)]
    members = handed_back_members(study, pick, best, len(opened.prepared.val) or 1)
    wanted = [m.trial for m in members]
    final = study.user_attrs.get(ATTR["final"]) or {}
    if (
        final_is_current(final, wanted, model_dir)
        and final.get("self_training") == self_training
        and _delivered_as_asked(final.get("deliverable") or {}, settings.deliver)
    ):
        notes.append("the handed-back model was already retrained and tested: kept that result")
        recorded = study.user_attrs.get(ATTR["self_training"]) if self_training else None
        if recorded:
            notes.append(describe_self_training(recorded))
        return Finalised(
            pick, best, tuple(members), final.get("test_score"), None, tuple(notes), self_training=recorded or None
        )
    if budget is not None and budget.limited:
        trained = _hand_back_within(opened, members, budget, keep, micro_batch, ui)
    else:
        ui.stage(
            f"retraining trial {best.number} on train+val"
            if len(members) == 1
            else f"retraining the {len(members)} members (trials {', '.join(map(str, wanted))}) on train+val"
        )
        t0 = time.monotonic()
        trained = train_ensemble(
            members,
            settings,
            opened.prepared,
            progress=ui.trial_progress,
            micro_batch=micro_batch,
            on_member=(lambda i, k, number: ui.note(f"member {i + 1} of {k}: trial {number}"))
            if len(members) > 1
            else None,
        )
        if budget is not None:
            budget.ledger.add("final retrain", time.monotonic() - t0, trainings=len(members))
    notes.extend(trained.notes)
    if len(trained.members) > 1:
        alone = ", ".join(f"{f.test_score:.3f}" for f in trained.members)
        how = "retrains" if all(f.trained_on == "train+val" for f in trained.members) else "final stage"
        notes.append(
            f"ensemble of {len(trained.members)}: test {trained.test_score:.3f}; its members alone {alone};"
            f" the {how} took {trained.seconds:.0f} s"
        )
    members = [m for m in members if m.trial in _kept_trials(members, trained)]
    return Finalised(pick, best, tuple(members), trained.test_score, trained, tuple(notes))


def _delivered_as_asked(record: dict[str, Any], asked: str) -> bool:
    """Whether a recorded deliverable answers ``--deliver asked``: the kind asked then (a refused
    network's ensemble answers it too; a study recorded before issue 28 handed back its ensemble)."""
    return record.get("kind") == "single" or record.get("asked", record.get("kind", "ensemble")) == asked


def _kept_trials(members: list[Member], trained: FinalEnsemble) -> set[int]:
    """The trials of ``members`` that ``trained`` holds (a budget may leave some out)."""
    numbers = [f.trial for f in trained.members]
    return {m.trial for m in members} if None in numbers else {int(n) for n in numbers if n is not None}


def _hand_back_within(
    opened: OpenStudy, members: list[Member], budget: JobBudget, keep: TrialModels | None, micro_batch, ui
) -> FinalEnsemble:
    """The final stage under a time budget: each member retrained on train+val while the plan
    says so and the time left affords it; else the trial's own kept model (``handback.final.hand_back``)."""
    from autotransfer.backbones import create_backbone
    from autotransfer.handback.final import hand_back

    settings = opened.settings
    plan = budget.plan
    k = len(members)

    def retrain(i: int) -> bool:
        # the best members first: a budget that affords only some retrains keeps the later trials' own models
        return plan is None or (plan.retrain and budget.affords(RETRAIN_COST))

    def make_backbone():
        return create_backbone(settings.model, num_classes=settings.num_classes)

    def trial_model(member: Member):
        return keep.load(member.trial, make_backbone) if keep is not None else None

    def on_member(i: int, n: int, number: int, again: bool) -> None:
        how = "retraining on train+val" if again else "the trial's own model"
        ui.note(f"member {i + 1} of {n}: trial {number}, {how}")

    ui.stage(f"final model: {k} member(s) (trials {', '.join(str(m.trial) for m in members)})")
    t0 = time.monotonic()
    trained = hand_back(
        members,
        settings,
        opened.prepared,
        retrain=retrain,
        trial_model=trial_model,
        reproduce=lambda i: budget.affords(RETRAIN_COST),
        progress=ui.trial_progress,
        micro_batch=micro_batch,
        on_member=on_member,
    )
    retrained = sum(f.trained_on == "train+val" or (f.fell_back and f.fit_score is not None) for f in trained.members)
    budget.ledger.add("final model", time.monotonic() - t0, trainings=retrained)
    return trained


def self_train_stage(
    opened: OpenStudy, final: Finalised, *, pool=None, micro_batch: int | None = None, ui=None
) -> Finalised:
    """Stage 3b (``--unlabelled``): self-training on the unlabelled images ``pool`` (an
    ``ImageDataset``; ``None``: loaded from ``settings.unlabelled``) for the handed-back model's
    members (``handback.self_training.self_train``). Returns ``final`` with the students when they
    won, else the teacher, and the outcome in its notes either way. A ``final`` kept from an
    earlier run (nothing retrained) is returned as is: its self-training was recorded with it."""
    from autotransfer.handback.self_training import load_unlabelled, self_train
    from autotransfer.search.progress import NullUI

    ui = ui or NullUI()
    settings = opened.settings
    if final.trained is None or not settings.unlabelled:
        return final
    if pool is None:
        pool = load_unlabelled(settings.unlabelled)
    ui.stage(
        f"self-training on {len(pool):,} unlabelled images (threshold {settings.pseudo_threshold:g}):"
        f" {len(final.members)} teacher(s) and student(s) on the train split, then the decision on validation"
    )
    outcome = self_train(
        opened.study,
        settings,
        opened.prepared,
        list(final.members),
        final.trained,
        pool,
        progress=ui.trial_progress,
        micro_batch=micro_batch,
        note=ui.note,
    )
    notes = list(final.notes) + [describe_self_training(outcome.record)]
    notes.extend((outcome.record.get("final") or {}).get("broken") or [])
    if outcome.final is None:
        return replace(final, notes=tuple(notes), self_training=outcome.record)
    return replace(
        final,
        test_score=outcome.final.test_score,
        trained=outcome.final,
        notes=tuple(notes),
        self_training=outcome.record,
    )


def deliver_stage(
    opened: OpenStudy,
    final: Finalised,
    *,
    micro_batch: int | None = None,
    ui=None,
    budget: JobBudget | None = None,
) -> Finalised:
    """Stage 3c: the folder's root network from the handed-back members (``settings.deliver``;
    ``handback.deliver``). A ``final`` kept from an earlier run is returned as is. Under a time
    budget whose plan held no time for distillation, or that has not the time left, the ensemble
    is handed back and the notes say so."""
    from autotransfer.handback.deliver import deliver
    from autotransfer.pipeline.plan import DISTILL_COST
    from autotransfer.search.progress import NullUI

    ui = ui or NullUI()
    if final.trained is None:
        return final
    settings, trained = opened.settings, final.trained
    kind, notes = settings.deliver, list(final.notes)
    k = len(trained.members)
    if kind == "distilled" and k > 1 and budget is not None and budget.limited:
        plan = budget.plan
        if (plan is not None and not plan.distill_s) or not budget.affords(DISTILL_COST):
            kind = "ensemble"
            notes.append(
                "not distilled: the time budget has no room for it; the ensemble is handed back (every loader"
                " averages its members; give a larger --time-budget for one network)"
            )
    if kind == "distilled" and k > 1:
        ui.stage(f"distilling the {k} members into one network on train+val")
    t0 = time.monotonic()
    delivered = deliver(
        kind,
        trained,
        list(final.members),
        settings,
        opened.prepared,
        progress=ui.trial_progress,
        micro_batch=micro_batch,
    )
    delivered.asked = settings.deliver  # what this run asked for, whatever the budget or the check made of it
    if budget is not None and kind in ("distilled", "soup") and k > 1:
        budget.ledger.add("deliverable", time.monotonic() - t0, trainings=1.0 if kind == "distilled" else None)
    notes.extend(delivered.notes)
    if delivered.kind in ("distilled", "soup"):
        alone = ", ".join(f"{score:.3f}" for _, score in delivered.member_scores)
        notes.append(
            f"delivered one network, {delivered.how}: test {delivered.test_score:.3f} (the ensemble"
            f" {trained.test_score:.3f}; its members {alone}); {delivered.seconds:.0f} s"
        )
    return replace(final, test_score=delivered.test_score, delivered=delivered, notes=tuple(notes))


def publish(
    opened: OpenStudy,
    final: Finalised,
    *,
    model_dir: Path,
    export_dir: str | Path,
    surface_store: str | Path | None = None,
) -> tuple[Path, list[str]]:
    """Stage 4: save the model folder (when ``final`` retrained one) and record it on the study,
    write the export, and record the study on the surface when it has enough evidence.
    Returns the export's path and the notes for the summary."""
    from autotransfer.handback.export import export_payload, write_export

    study, settings, notes = opened.study, opened.settings, []
    if final.trained is not None:
        _save_final(opened, final, model_dir)
    path = write_export(export_payload(study), Path(export_dir) / f"{safe_name(opened.name)}.yaml", "yaml")
    if surface_store:
        from autotransfer.surface import record_study

        shortfall = surface_evidence_shortfall(len(search_trials(study)), settings.val_images)
        if shortfall:
            notes.append(f"not recorded on the surface {str(surface_store)!r}: {shortfall}")
        else:
            record_study(study, surface_store)
    return path, notes


def _save_final(opened: OpenStudy, final: Finalised, model_dir: Path) -> None:
    """Write the handed-back model folder and record the final model on the study."""
    from autotransfer.handback.model_card import save_tuned_ensemble
    from autotransfer.handback.self_training import self_training_key

    study, trained = opened.study, final.trained
    assert trained is not None
    delivered = final.delivered
    members = [
        (
            f.backbone,
            m.protocol,
            {
                "trial": m.trial,
                "val_score": m.val_score,
                "test_score": f.test_score,
                "trained_on": f.trained_on,
                "freeze_reinit": m.freeze_reinit,
            },
        )
        for m, f in zip(final.members, trained.members)
    ]
    test_score = trained.test_score
    if delivered is not None and delivered.model is not None and len(members) > 1:
        # one network: the first member's protocol, trained on train+val; the members stay on record only
        backbone, protocol, info = members[0]
        members = [(delivered.model.backbone, protocol, {**info, "test_score": delivered.test_score, "trial": None})]
        test_score = delivered.test_score
    save_tuned_ensemble(
        members,
        model_dir,
        opened.settings,
        classes=list(opened.prepared.dataset.classes),
        test_score=test_score,
        test_images=len(opened.prepared.test),
        controls=control_scores(study),
        study=opened.name,
        self_training=final.self_training,
        deliverable=delivered.record() if delivered is not None else None,
    )
    study.set_user_attr(
        ATTR["final"],
        {
            "trial": final.best.number,
            "members": [m.trial for m in final.members],
            "test_score": test_score,
            "ensemble_test_score": trained.test_score,
            "deliverable": delivered.record() if delivered is not None else {"kind": "ensemble"},
            "member_test_scores": [f.test_score for f in trained.members],
            "model": str(model_dir),
            "trained_on": trained.trained_on,
            "member_trained_on": [f.trained_on for f in trained.members],
            "fit_score": trained.members[0].fit_score,
            "fit_scores": [f.fit_score for f in trained.members],
            "train_images_per_s": trained.members[0].images_per_s
            if trained.members[0].images_per_s == trained.members[0].images_per_s  # NaN: a trial's own model
            else None,
            "seconds": round(trained.seconds, 1),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            # the self-training request this model answers (None: none asked)
            "self_training": self_training_key(opened.settings),
        },
    )


def tune(
    settings: StudySettings,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    timeout: float | None = None,
    warm_start: str | None = None,
    export_dir: str | Path = "studies/exports",
    runs_dir: str | Path = "studies/runs",
    estimator_kwargs: dict[str, Any] | None = None,
    surface_store: str | Path | None = None,
    ui=None,
    workers: int = 1,
    unlabelled=None,
    time_budget: float | str | None = None,
    data_curve: bool | None = None,
    auto_trainings: float = DEFAULT_BUDGET_TRAININGS,
    keep: TrialModels | None = None,
) -> TuneResult:
    """Run (or resume) a protocol search for ``settings`` and return its summary.

    The four stages in order: ``open_study_for`` (data, estimate, prior, study), ``run_trials``
    (controls + search), ``finalise`` (pick, retrain on train+val, test) and ``publish`` (model
    folder, export, surface point). ``ui`` (``autotransfer.search.progress``) draws progress;
    ``None`` is silent. ``workers`` > 1 runs the search on that many local worker processes
    (``search.workers.run_local_workers``: one per GPU, or the CPU cores split). With
    ``surface_store``, the study's best protocol is recorded on that surface.

    Self-training (docs/design.md, "Self-training") follows the retrain when
    ``settings.unlabelled`` names unlabelled images of the target, or when ``unlabelled`` gives
    them as an ``ImageDataset`` (e.g. ``data.unlabelled_pool``; its ``spec`` is recorded). A
    missing or empty source is refused before the study opens.

    ``time_budget`` (seconds, or a duration such as ``"10m"``; docs/design.md, "The time budget")
    bounds the whole job: the search stops when its share is spent, and the final stage retrains
    on train+val only when the budget affords it, else hands back the best trials' own models.
    ``"auto"`` is the default job's budget: ``auto_trainings`` full trainings (default
    ``pipeline.plan.DEFAULT_BUDGET_TRAININGS``); ``None``: no time limit, ``settings.trials``
    alone decides. Either way the result carries a compute ledger (seconds per stage, and in full
    trainings). ``keep``: the trial models an earlier stage of this process kept for this study
    (``pipeline.model_choice``'s race), instead of a fresh ``TrialModels``.

    ``data_curve`` (issue 30; ``pipeline.curve``): after the study, the handed-back protocol is
    trained on fractions of the train split and a corrected power law forecasts what more labelled
    images buy. ``None``: under a time budget that holds room for it (the default job's grows by
    it; ``--trials`` alone runs none); ``True``: held even at the search's expense; ``False``: not run.
    A resume keeps a recorded curve.
    """
    from autotransfer.handback.self_training import load_unlabelled, self_training_key

    if workers < 1:
        raise UserError(f"--workers must be >= 1, but got {workers!r}")
    auto = time_budget == "auto"
    budget = JobBudget.start(
        None if time_budget is None or auto else parse_duration(time_budget), auto=auto, trainings=auto_trainings
    )
    check_timeout(timeout)
    pool = unlabelled
    if pool is not None:
        settings = replace(settings, unlabelled=str(pool.spec))
    elif settings.unlabelled:
        pool = load_unlabelled(settings.unlabelled)
    if budget.limited:  # the estimator's forward passes at the model's native size: a budget caps them
        estimator_kwargs = {"max_images": BUDGET_ESTIMATE_IMAGES, **(estimator_kwargs or {})}
    t0 = time.monotonic()
    opened = open_study_for(
        settings,
        study_name=study_name,
        storage=storage,
        warm_start=warm_start,
        estimator_kwargs=estimator_kwargs,
        ui=ui,
        scratch_last=budget.limited,
    )
    budget.ledger.add("data + estimate", time.monotonic() - t0)
    model_dir = Path(runs_dir) / safe_name(opened.name)
    if keep is None and workers == 1:
        keep = TrialModels(Path(runs_dir) / f".{safe_name(opened.name)}.trials")
    wants_curve = data_curve or (data_curve is None and budget.limited)
    if wants_curve and not (opened.study.user_attrs.get(ATTR["data_curve"]) or {}).get("curve"):
        from autotransfer.handback.curve_runs import curve_cost  # the plan holds the curve's cost

        budget.data_curve = curve_cost(opened.settings, reuse_full=keep is not None)
        budget.data_curve_asked = bool(data_curve)
    micro_batch = run_trials(opened, workers=workers, timeout=timeout, ui=ui, budget=budget, keep=keep)
    asked = self_training_key(opened.settings)
    final = finalise(
        opened, model_dir=model_dir, micro_batch=micro_batch, ui=ui, self_training=asked, budget=budget, keep=keep
    )
    if final is not None and asked is not None:
        plan = budget.plan
        if plan is not None and plan.budget_s is not None and not plan.self_training_s:
            final = replace(final, notes=final.notes + tuple(n for n in plan.notes if n.startswith("self-training")))
        else:
            t0 = time.monotonic()
            final = self_train_stage(opened, final, pool=pool, micro_batch=micro_batch, ui=ui)
            budget.ledger.add("self-training", time.monotonic() - t0)
    if final is not None:
        final = deliver_stage(opened, final, micro_batch=micro_batch, ui=ui, budget=budget)
    study, settings, prepared = opened.study, opened.settings, opened.prepared
    notes = list(opened.notes)
    val_images = len(prepared.val)
    if val_images < SMALL_VALIDATION:
        notes.append(
            f"the validation split holds {val_images} images (one image is {100 / val_images:.1f} points): "
            "trials closer than that are tied within noise, and the best trial's validation score is optimistic"
        )
    controls = control_scores(study)
    result = functools.partial(  # the fields common to both outcomes
        TuneResult,
        study_name=opened.name,
        storage=opened.url,
        settings=settings,
        controls=controls,
        n_search_trials=len(search_trials(study)),
        profile=opened.profile,
        prior=opened.prior,
        val_images=val_images,
        test_images=len(prepared.test),
    )
    if final is None:
        notes.append("no transfer trial completed: nothing to retrain or export")
        return result(
            ledger=budget.ledger.to_dict(),
            plan=budget.plan.to_dict() if budget.plan else None,
            best_protocol=None,
            best_trial=None,
            val_score=None,
            test_score=None,
            negative_transfer=False,
            export_path=None,
            model_path=None,
            notes=notes,
        )
    t0 = time.monotonic()
    export_path, published = publish(
        opened, final, model_dir=model_dir, export_dir=export_dir, surface_store=surface_store
    )
    budget.ledger.add("publish", time.monotonic() - t0)
    from autotransfer.pipeline.curve import data_curve_stage

    curve, curve_notes = data_curve_stage(
        opened, final.best, asked=data_curve, budget=budget, micro_batch=micro_batch, ui=ui, keep=keep
    )
    published += curve_notes
    if keep is not None:
        keep.clear()  # the members are in the model folder now
    ledger = budget.ledger.to_dict()
    study.set_user_attr(ATTR["ledger"], {**ledger, "plan": budget.plan.to_dict() if budget.plan else None})
    best = final.best
    val_score = float(cast(float, best.value))  # the best trial is a completed one
    scratch = controls.get("scratch")
    return result(
        best_protocol=Protocol.from_dict(best.params),
        best_trial=best.number,
        val_score=val_score,
        test_score=final.test_score,
        negative_transfer=scratch is not None and scratch > val_score,
        export_path=export_path,
        model_path=model_dir,  # the model folder: config.json + model.safetensors + README.md
        integers=(int(best.user_attrs.get(FREEZE_ATTR, 0)), int(best.user_attrs.get(REINIT_ATTR, 0))),
        notes=notes + list(final.notes) + published,
        pick=final.pick.to_dict() if final.pick is not None else None,
        trained_on=(study.user_attrs.get(ATTR["final"]) or {}).get("trained_on", "train+val"),
        self_training=final.self_training,
        deliverable=(study.user_attrs.get(ATTR["final"]) or {}).get("deliverable"),
        ledger=ledger,
        plan=budget.plan.to_dict() if budget.plan else None,
        data_curve=curve,
    )
