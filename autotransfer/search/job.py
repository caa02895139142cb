"""The main job: estimate → prior → controls + search → retrain the best → test → export."""
from __future__ import annotations

import gc
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

from autotransfer.core.errors import UserError
from autotransfer.core.paths import safe_name
from autotransfer.search.final import Member, retrain_and_test, train_ensemble
from autotransfer.search.pick import PICK_TOP, Pick, pick_protocol
from autotransfer.search.prepared import PreparedData, prepare_data, split_batches
from autotransfer.core.protocol import Protocol
from autotransfer.core.settings import StudySettings
from autotransfer.search.storage import masked_url, open_storage, storage_location
from autotransfer.core.schema import ATTR, CONTROL_ATTR, SOURCE_ATTR
from autotransfer.search.study import (
    best_transfer_trial,
    check_compatible,
    control_trials,
    create_study,
    load_study,
    open_study,
    read_settings,
    read_space,
    search_trials,
    study_exists,
)

__all__ = [
    "PreparedData",
    "prepare_data",
    "default_study_name",
    "TuneResult",
    "tune",
    "run_search",
    "build_runner",
    "join_study",
    "retrain_and_test",
    "control_scores",
    "validation_counts",
    "surface_evidence_shortfall",
]


def default_study_name(settings: StudySettings) -> str:
    """``<target>-<model>-n<N>-s<seed>``, with characters Optuna dashboards like."""
    n = f"n{settings.n}" if settings.n else "all"
    raw = f"{settings.target.removeprefix('builtin:')}-{settings.model}-{n}-s{settings.seed}"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", raw).strip("_")


def _fixed_protocols(prior, num_groups: int, *, mode: str) -> list[tuple[Protocol, dict[str, Any]]]:
    """Controls first, then (with a prior) the prior, the survey's two protocols and a linear probe."""
    from autotransfer.prior import (
        less_similar_protocol,
        linear_probe_protocol,
        probe_control_protocols,
        recommended_protocol,
        scratch_protocols,
    )

    fixed: list[tuple[Protocol, dict[str, Any]]] = []
    for i, p in enumerate(scratch_protocols()):
        fixed.append((p, {CONTROL_ATTR: "scratch", SOURCE_ATTR: f"control:scratch#{i}"}))
    for i, p in enumerate(probe_control_protocols()):
        fixed.append((p, {CONTROL_ATTR: "probe", SOURCE_ATTR: f"control:probe#{i}"}))
    if mode != "none" and prior is not None:
        fixed.append((prior.centre, {SOURCE_ATTR: "prior"}))
        fixed += [(p, {SOURCE_ATTR: source}) for source, p in prior.candidates]
        fixed.append((recommended_protocol(), {SOURCE_ATTR: "survey:recommended"}))
        fixed.append((less_similar_protocol(num_groups), {SOURCE_ATTR: "survey:less-similar"}))
        fixed.append((linear_probe_protocol(), {SOURCE_ATTR: "linear-probe"}))
    return fixed


def _warm_start_protocols(storage, name: str, top: int = 3) -> list[tuple[Protocol, dict[str, Any]]]:
    """The top protocols (parameters only) of an earlier study, to enqueue in a new one."""
    earlier = load_study(name, storage)
    ranked = sorted(
        (t for t in search_trials(earlier, states=(optuna.trial.TrialState.COMPLETE,)) if t.value is not None),
        key=lambda t: t.value,
        reverse=True,
    )[:top]
    return [(Protocol.from_dict(t.params), {SOURCE_ATTR: f"warm-start:{name}#{t.number}"}) for t in ranked]


class _SearchBudget:
    """Stops ``optimize`` once the study holds ``trials`` finished search trials (controls excluded)
    and no control, and no retry of a dead worker's trial, is left waiting."""

    def __init__(
        self,
        trials: int,
        on_trial_end: Callable[[int], None] | None = None,
        *,
        deadline: float | None = None,
    ) -> None:
        self.trials = trials
        self.on_trial_end = on_trial_end
        self.deadline = deadline

    def remaining(self, study: optuna.Study) -> int:
        return max(0, self.trials - len(search_trials(study)))

    def pending(self, study: optuna.Study) -> int:
        """WAITING trials that must still run: controls, and retries of trials whose worker died."""
        from autotransfer.search.workers import retried_trial_number

        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        return sum(1 for t in waiting if CONTROL_ATTR in t.user_attrs or retried_trial_number(t) is not None)

    def done(self, study: optuna.Study, *, wait: bool = True) -> bool:
        """Budget met and nothing pending; first re-queues trials of dead workers (waiting, with
        ``wait``, until every other running trial is finished or found stale)."""
        from autotransfer.search.workers import settle_stale_trials

        if self.remaining(study) > 0:
            return False
        settle_stale_trials(study, wait=wait, deadline=self.deadline)
        return self.remaining(study) == 0 and self.pending(study) == 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.on_trial_end:
            self.on_trial_end(len(search_trials(study)))
        if self.done(study):
            study.stop()


def run_search(
    study: optuna.Study,
    runner,
    trials: int,
    *,
    timeout: float | None = None,
    on_trial_end: Callable[[int], None] | None = None,
) -> None:
    """Run trials until ``trials`` finished search trials exist (and the controls ran), or timeout.

    Failed trials (NaN loss, out of memory) are recorded with their reason and the study
    goes on; Ctrl-C stops at once, keeping every completed trial: the trial it stopped is
    re-queued with its parameters (``workers.interruptible``), without Optuna's traceback.
    """
    from autotransfer.search.objective import TrialFailed
    from autotransfer.search.workers import interruptible, quiet_interrupted_trials

    deadline = None if timeout is None else time.monotonic() + timeout
    budget = _SearchBudget(trials, on_trial_end, deadline=deadline)
    if budget.done(study, wait=False):
        return
    with warnings.catch_warnings(), quiet_interrupted_trials():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        study.optimize(
            interruptible(runner), timeout=timeout, callbacks=[budget], catch=(TrialFailed,), gc_after_trial=False
        )


SMALL_VALIDATION = 100  # below this many validation images, tune says how coarse the scores are
#: A study's optimum enters the surface (the next study's prior) only with this much evidence:
#: at least 10 finished search trials (half the default budget: fewer and the "optimum" is one of
#: the enqueued guesses) and 30 validation images (N = 200; below that one image is 4+ points, and
#: the judged leave-one-target-out benchmark found no gain from the surface at N = 100, where the
#: validation split holds 15 images; benchmarks/RESULTS.md).
SURFACE_MIN_TRIALS = 10
SURFACE_MIN_VAL_IMAGES = 30


def surface_evidence_shortfall(search_trials: int, val_images: int) -> str | None:
    """Why a study is too thin to enter the surface of optimal protocols, or ``None``."""
    missing = []
    if search_trials < SURFACE_MIN_TRIALS:
        missing.append(f"{search_trials} finished search trials (needs {SURFACE_MIN_TRIALS})")
    if val_images < SURFACE_MIN_VAL_IMAGES:
        missing.append(f"{val_images} validation images (needs {SURFACE_MIN_VAL_IMAGES})")
    return ("too little evidence: " + " and ".join(missing)) if missing else None


def describe_prior(spec: str, prior: dict[str, Any] | None) -> str:
    """One line: which prior the study searches around, and from which file."""
    if spec == "none" or prior is None:
        return "prior: none (uniform start-up draws over the wide ranges; nothing enqueued)"
    if spec.startswith("surface:"):
        return f"prior: the surface of optimal protocols in {spec[len('surface:'):]!r} ({prior.get('quadrant', '')})"
    return f"prior: the quadrant rules ({prior.get('quadrant', '')}; survey arXiv 2205.09904)"


def describe_pick(pick: Pick | None, settings: StudySettings) -> str:
    """One line: the pick rule, the chosen protocol's score with its uncertainty, and the cost."""
    from autotransfer.train import score_interval

    if pick is not None and pick.rule == "ensemble":
        if not pick.is_ensemble:
            return "pick: an ensemble of the top protocols (rule 'ensemble'), but only one transfer trial completed: that one"
        return (
            f"pick: an ensemble of the top {len(pick.members)} distinct protocols by validation (trials"
            f" {', '.join(map(str, pick.members))}; rule 'ensemble'), each retrained on train+val, probabilities"
            f" averaged; cost {pick.trainings} extra trainings of {pick.steps} steps and {len(pick.members)}x the"
            " prediction time; the validation scores of the top protocols lie within noise of each other"
        )
    if pick is None or pick.chosen is None:
        return "pick: the best validation trial (rule 'val'; no re-score)"
    c = pick.chosen
    low, high = score_interval(min(max(c.oof_score, 0.0), 1.0), c.images)
    return (
        f"pick: trial {c.trial} by {len(c.fold_scores)}-fold cross-validation of the top {len(pick.candidates)}"
        f" protocols on train+val: {c.oof_score:.3f} on {c.images} out-of-fold images (95% CI {low:.3f}-{high:.3f},"
        f" instability ±{c.instability:.3f} against the other candidates on the same folds); cost {pick.trainings} extra trainings of {pick.steps} steps"
        f" ({pick.seconds:.0f} s)"
    )


def handed_back_members(study, pick: Pick | None, best, val_images: int) -> list[Member]:
    """The trials whose retrains form the handed-back model (the pick's members; ``best`` alone
    without a pick), each with the score its retrain's check expects: the cross-validated score
    for a ``cv`` pick, else the trial's validation score on ``val_images`` images."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    numbers = pick.members if pick is not None else [best.number]
    chosen = pick.chosen if pick is not None else None
    members = []
    for number in numbers:
        trial = trials[number]
        if chosen is not None and chosen.trial == number:
            expected, images = chosen.oof_score, chosen.images
        else:
            expected, images = float(trial.value), val_images
        members.append(Member(number, Protocol.from_dict(trial.params), expected, images, float(trial.value)))
    return members


def final_is_current(final: dict[str, Any], members: list[int], model_dir: Path) -> bool:
    """Whether the recorded final retrain (``ATTR["final"]``) is of these ``members`` and its
    model folder is still there (a resumed study keeps it instead of retraining)."""
    recorded = final.get("members") or ([final["trial"]] if "trial" in final else [])
    return (
        [int(v) for v in recorded] == list(members)
        and (model_dir / "model.safetensors").exists()
        and (model_dir / "config.json").exists()
    )


def validation_counts(prepared: PreparedData, metric: str) -> dict[str, int]:
    """The validation split's size and its effective size under the study's metric (the pruner's
    noise margin; ``effective_images``)."""
    from autotransfer.search.pruning import effective_images

    labels = np.asarray(prepared.val.labels)
    counts = np.bincount(labels, minlength=len(prepared.dataset.classes)) if len(labels) else np.zeros(0, int)
    return {"val_images": int(len(labels)), "val_effective": effective_images(counts.tolist(), metric)}



@dataclass
class TuneResult:
    """What ``tune`` hands back (the CLI prints it)."""

    study_name: str
    storage: str
    settings: StudySettings
    best_protocol: Protocol | None
    best_trial: int | None
    val_score: float | None
    test_score: float | None
    controls: dict[str, float | None]
    negative_transfer: bool
    export_path: Path | None
    model_path: Path | None
    n_search_trials: int
    profile: dict[str, Any] | None
    prior: dict[str, Any] | None
    integers: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    val_images: int | None = None
    test_images: int | None = None
    pick: dict[str, Any] | None = None
    trained_on: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_name,
            "storage": self.storage,
            "metric": self.settings.metric,
            "best_protocol": self.best_protocol.to_dict() if self.best_protocol else None,
            "best_trial": self.best_trial,
            "freeze_reinit": list(self.integers) if self.integers else None,
            "val_score": self.val_score,
            "test_score": self.test_score,
            "val_images": self.val_images,
            "test_images": self.test_images,
            "pick": self.pick,
            "skipped": (self.profile or {}).get("skipped"),
            "trained_on": self.trained_on,
            "controls": self.controls,
            "negative_transfer": self.negative_transfer,
            "export": str(self.export_path) if self.export_path else None,
            "model": str(self.model_path) if self.model_path else None,
            "search_trials": self.n_search_trials,
            "settings": self.settings.to_dict(),
            "notes": self.notes,
        }


def control_scores(study: optuna.Study) -> dict[str, float | None]:
    """Best score of each control kind (from scratch: best of 3 ELRs; linear probe: best of 2)."""
    scores: dict[str, float | None] = {"scratch": None, "probe": None}
    for t in control_trials(study):
        kind = t.user_attrs[CONTROL_ATTR]
        if t.value is not None and (scores.get(kind) is None or t.value > scores[kind]):
            scores[kind] = float(t.value)
    return scores


def build_runner(
    study: optuna.Study, settings: StudySettings, prepared: PreparedData, *, ui=None, preprocessing=None
):
    """The objective for ``study`` over ``prepared`` data (fresh backbone per trial, shared prefix cache)."""
    from autotransfer.backbones import create_backbone
    from autotransfer.search.objective import TrialRunner
    from autotransfer.search.progress import NullUI
    from autotransfer.train import PrefixCache

    ui = ui or NullUI()

    def make_backbone():
        return create_backbone(settings.model, num_classes=settings.num_classes)

    preprocessing = preprocessing or make_backbone().preprocessing
    return TrialRunner(
        settings=settings,
        space=read_space(study),
        make_backbone=make_backbone,
        train=split_batches(prepared, "train", settings, preprocessing),
        val=split_batches(prepared, "val", settings, preprocessing),
        prefix_cache=PrefixCache(),
        on_progress=ui.trial_progress,
        on_trial_start=ui.trial_start,
    )


def join_study(
    study_name: str,
    storage: str | None,
    *,
    device: str | None = None,
    ui=None,
    timeout: float | None = None,
) -> int:
    """Run trials of an existing study as one more worker until its search budget is met.

    The study holds everything needed (settings, space, budget, data fingerprint); a worker
    whose data fingerprint or package versions differ from the study's refuses to start.
    Returns the number of finished search trials when the worker stops.
    """
    from autotransfer.search.progress import NullUI
    from autotransfer.search.study import package_versions, read_attr

    ui = ui or NullUI()
    url = storage_location(storage)
    store = open_storage(url)
    study = load_study(study_name, store)
    settings = read_settings(study)
    if device:
        settings = type(settings).from_dict({**settings.to_dict(), "device": device})
    stored_versions = read_attr(study, "versions") or {}
    mine = package_versions()
    differing = [
        f"{k} {stored_versions[k]} != {mine.get(k)}"
        for k in ("torch", "timm", "autotransfer")
        if k in stored_versions and stored_versions[k] != mine.get(k)
    ]
    if differing:
        raise UserError(
            f"worker refused for study {study_name!r}: package versions differ from the study's"
            f" ({'; '.join(differing)}): install the study's versions on this machine"
        )
    prepared = prepare_data(settings)
    if prepared.fingerprint != settings.fingerprint:
        raise UserError(
            f"worker refused for study {study_name!r}: dataset {settings.target!r} here has fingerprint"
            f" {prepared.fingerprint[:12]}, the study's is {settings.fingerprint[:12]}: give this machine the same data"
        )
    study = open_study(study_name, store, settings, reseed=True)
    runner = build_runner(study, settings, prepared, ui=ui)
    ui.search_start(total=settings.trials, done=len(search_trials(study)))
    run_search(study, runner, settings.trials, timeout=timeout, on_trial_end=ui.search_advance)
    ui.search_end()
    return len(search_trials(study))


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
) -> TuneResult:
    """Run (or resume) a protocol search for ``settings`` and return its summary.

    Steps, in order: load + split the data; estimate the task (size, divergence,
    transferability) and derive the prior; create the study (ranges centred on the prior;
    controls, prior and survey protocols enqueued) or resume it after checking the data
    fingerprint and model; run controls + search; retrain the best protocol on train+val;
    score it on the held-out test split; save the model; export the config.
    ``ui`` (see ``autotransfer.search.progress``) draws progress; ``None`` is silent.
    ``workers`` > 1 runs the search on that many local worker processes
    (``autotransfer.search.workers.run_local_workers``: one per GPU, or the CPU cores split).
    With ``surface_store``, the study's best protocol is recorded on that surface.
    """
    from autotransfer.backbones import create_backbone
    from autotransfer.estimate import TaskEstimator
    from autotransfer.search.progress import NullUI

    if workers < 1:
        raise UserError(f"--workers must be >= 1, but got {workers!r}")
    ui = ui or NullUI()
    url = storage_location(storage)
    store = open_storage(url)
    name = safe_name(study_name or default_study_name(settings))

    ui.stage("loading data")
    prepared = prepare_data(settings)
    capped = settings.n is not None and settings.n > len(prepared.dataset)
    if capped:
        ui.note(f"--n {settings.n} is more than {settings.target!r} holds: the study uses all {len(prepared.dataset)} images")
        settings = replace(settings, n=len(prepared.dataset))
    probe_backbone = create_backbone(settings.model, num_classes=len(prepared.dataset.classes))
    num_groups = probe_backbone.num_groups

    existing = study_exists(store, name)
    if existing:
        study = load_study(name, store)
        stored = read_settings(study)
        settings = settings.resolved(
            fingerprint=prepared.fingerprint,
            metric=stored.metric,
            num_classes=stored.num_classes,
            n_train=len(prepared.train),
            **validation_counts(prepared, stored.metric),
        )
        check_compatible(study, settings)
        from autotransfer.search.objective import precision_refusal, trial_precision
        from autotransfer.search.study import resume_overrides

        # one precision per study (docs/devices.md): refuse before any trial runs
        refusal = precision_refusal(study, trial_precision(prepared.device), str(prepared.device))
        if refusal is not None:
            raise UserError(refusal)

        overridden = resume_overrides(stored, settings, warm_start=warm_start)
        # resume with the stored budget and options; only --trials may grow
        settings = type(settings).from_dict({**stored.to_dict(), "trials": settings.trials, "device": settings.device})
        if settings.trials != stored.trials:
            # workers read the budget from the study
            study.set_user_attr(ATTR["settings"], {**stored.to_dict(), "trials": settings.trials})
        profile_dict = study.user_attrs.get(ATTR["profile"])
        prior_dict = study.user_attrs.get(ATTR["prior"])
        ui.note(f"resuming study {name!r}: {len(search_trials(study))} finished search trials")
        if overridden:
            ui.note(overridden)
    else:
        overridden = None
        ui.stage("estimating the task")
        # the estimator runs where the trials run (--device), unless told otherwise
        estimator = TaskEstimator(**{"device": str(prepared.device), **(estimator_kwargs or {})})
        # the held-out test split stays unseen: LogME, LEEP and H-score read labels
        profile = estimator.fit(prepared.trainval, probe_backbone)
        metric = profile.size.metric
        settings = settings.resolved(
            fingerprint=prepared.fingerprint,
            metric=metric,
            num_classes=len(prepared.dataset.classes),
            n_train=len(prepared.train),
            **validation_counts(prepared, metric),
        )
        if settings.prior.startswith("surface:"):
            from autotransfer.surface import surface_prior_for_profile

            prior = surface_prior_for_profile(settings.prior[len("surface:") :], profile)
        else:
            prior = profile.prior if settings.prior != "none" else None
        if settings.prior == "none":
            from autotransfer.prior import wide_prior

            space = wide_prior()
        else:
            space = prior.space
        fixed = _fixed_protocols(prior, num_groups, mode=settings.prior)
        if warm_start:
            fixed += _warm_start_protocols(store, warm_start)
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
        ui.note(f"created study {name!r} in {masked_url(url)}")
    ui.note(describe_prior(settings.prior, prior_dict))

    study = open_study(name, store, settings)

    micro_batch: int | None = None
    if workers > 1:
        from autotransfer.search.workers import run_local_workers

        ui.stage(f"controls + search on {workers} local workers")
        run_local_workers(name, url, workers, device=settings.device, timeout=timeout, ui=ui)
    else:
        ui.stage("controls + search")
        runner = build_runner(study, settings, prepared, ui=ui, preprocessing=probe_backbone.preprocessing)
        ui.search_start(total=settings.trials, done=len(search_trials(study)))
        run_search(study, runner, settings.trials, timeout=timeout, on_trial_end=ui.search_advance)
        ui.search_end()
        micro_batch = runner.micro_batch  # an out-of-memory in the search shrank it: keep it
        del runner  # its prefix cache is not needed by the pick or the retrain
        gc.collect()

    def make_backbone():
        return create_backbone(settings.model, num_classes=settings.num_classes)

    if settings.pick == "cv":
        ui.stage(f"picking: cross-validating the top {PICK_TOP} protocols on train+val")
    pick = pick_protocol(
        study,
        settings,
        prepared,
        make_backbone,
        progress=ui.trial_progress,
        on_candidate=lambda i, k, number: ui.note(f"pick: candidate {i + 1} of {k} (trial {number})"),
        micro_batch=micro_batch,
    )
    best = best_transfer_trial(study)
    controls = control_scores(study)
    result = TuneResult(
        study_name=name,
        storage=url,
        settings=settings,
        best_protocol=None,
        best_trial=None,
        val_score=None,
        test_score=None,
        controls=controls,
        negative_transfer=False,
        export_path=None,
        model_path=None,
        n_search_trials=len(search_trials(study)),
        profile=profile_dict,
        prior=prior_dict,
        val_images=len(prepared.val),
        test_images=len(prepared.test),
    )
    if overridden:
        result.notes.append(overridden)
    if capped:
        result.notes.append(f"N was capped at {settings.n}: all the images {settings.target!r} holds")
    if result.val_images < SMALL_VALIDATION:
        result.notes.append(
            f"the validation split holds {result.val_images} images (one image is {100 / result.val_images:.1f} points): "
            "trials closer than that are tied within noise, and the best trial's validation score is optimistic"
        )
    if best is None:
        result.notes.append("no transfer trial completed: nothing to retrain or export")
        return result
    protocol = Protocol.from_dict(best.params)
    result.best_protocol, result.best_trial, result.val_score = protocol, best.number, float(best.value)
    result.pick = pick.to_dict() if pick is not None else None
    result.notes.append(describe_pick(pick, settings))
    members = handed_back_members(study, pick, best, result.val_images or 1)
    result.integers = (int(best.user_attrs.get("freeze", 0)), int(best.user_attrs.get("reinit", 0)))
    scratch = controls.get("scratch")
    result.negative_transfer = scratch is not None and scratch > result.val_score

    final = study.user_attrs.get(ATTR["final"]) or {}
    model_dir = Path(runs_dir) / safe_name(name)
    wanted = [m.trial for m in members]
    if final_is_current(final, wanted, model_dir):
        result.test_score = final.get("test_score")
        result.notes.append("the handed-back model was already retrained and tested: kept that result")
    else:
        ui.stage(
            f"retraining trial {best.number} on train+val" if len(members) == 1
            else f"retraining the {len(members)} members (trials {', '.join(map(str, wanted))}) on train+val"
        )
        handed = train_ensemble(
            members, settings, prepared, progress=ui.trial_progress, micro_batch=micro_batch,
            on_member=(lambda i, k, number: ui.note(f"member {i + 1} of {k}: trial {number}")) if len(members) > 1 else None,
        )
        result.test_score = handed.test_score
        result.notes.extend(handed.notes)
        from autotransfer.search.model_card import save_tuned_ensemble

        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        save_tuned_ensemble(
            [
                (f.backbone, m.protocol, {
                    "trial": m.trial, "val_score": m.val_score, "test_score": f.test_score, "trained_on": f.trained_on,
                    "freeze_reinit": (int(trials[m.trial].user_attrs.get("freeze", 0)),
                                      int(trials[m.trial].user_attrs.get("reinit", 0))),
                })
                for m, f in zip(members, handed.members)
            ],
            model_dir, settings, classes=list(prepared.dataset.classes), test_score=handed.test_score,
            test_images=len(prepared.test), controls=controls, study=name,
        )
        if len(members) > 1:
            alone = ", ".join(f"{f.test_score:.3f}" for f in handed.members)
            result.notes.append(
                f"ensemble of {len(members)}: test {handed.test_score:.3f}; its members alone {alone};"
                f" the retrains took {handed.seconds:.0f} s"
            )
        study.set_user_attr(
            ATTR["final"],
            {
                "trial": best.number,
                "members": wanted,
                "test_score": handed.test_score,
                "member_test_scores": [f.test_score for f in handed.members],
                "model": str(model_dir),
                "trained_on": handed.trained_on,
                "member_trained_on": [f.trained_on for f in handed.members],
                "fit_score": handed.members[0].fit_score,
                "fit_scores": [f.fit_score for f in handed.members],
                "train_images_per_s": handed.members[0].images_per_s,
                "seconds": round(handed.seconds, 1),
                "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
    result.trained_on = (study.user_attrs.get(ATTR["final"]) or {}).get("trained_on", "train+val")
    result.model_path = model_dir  # the model folder: config.json + model.safetensors + README.md

    from autotransfer.export import export_payload, write_export

    result.export_path = write_export(export_payload(study), Path(export_dir) / f"{safe_name(name)}.yaml", "yaml")
    if surface_store:
        from autotransfer.surface import record_study

        shortfall = surface_evidence_shortfall(result.n_search_trials, settings.val_images)
        if shortfall:
            result.notes.append(f"not recorded on the surface {str(surface_store)!r}: {shortfall}")
        else:
            record_study(study, surface_store)
    return result

