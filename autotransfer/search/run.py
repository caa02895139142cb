"""Running a study's trials: the enqueued protocols, the search loop with its budget, the trial
runner, and one more worker joining a study (``join_study``). ``pipeline.tune`` strings these
together with the estimate, the pick and the final model; ``search.workers`` launches
``join_study`` in processes."""

from __future__ import annotations

import re
import time
import warnings
from typing import Any, Callable

import numpy as np
import optuna

from autotransfer.core.errors import UserError
from autotransfer.core.protocol import Protocol
from autotransfer.core.schema import CONTROL_ATTR, SOURCE_ATTR
from autotransfer.core.settings import StudySettings
from autotransfer.search.prepared import PreparedData, prepare_data, split_batches
from autotransfer.search.storage import open_storage, storage_location
from autotransfer.search.study import (
    JOIN_WAIT,
    control_trials,
    load_study,
    open_study,
    read_settings,
    read_space,
    search_trials,
)

__all__ = [
    "default_study_name",
    "fixed_protocols",
    "warm_start_protocols",
    "SearchBudget",
    "run_search",
    "validation_counts",
    "control_scores",
    "build_runner",
    "join_study",
]


def default_study_name(settings: StudySettings) -> str:
    """``<target>-<model>-n<N>-s<seed>``, with characters Optuna dashboards like."""
    n = f"n{settings.n}" if settings.n else "all"
    raw = f"{settings.target.removeprefix('builtin:')}-{settings.model}-{n}-s{settings.seed}"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", raw).strip("_")


def fixed_protocols(prior, num_groups: int, *, scratch_last: bool = True) -> list[tuple[Protocol, dict[str, Any]]]:
    """The enqueued protocols in the order they run, the most useful first, so that a small time
    budget spends itself on them (docs/design.md, "The time budget"): with a prior (``None`` for
    ``--prior none``) its centre; the linear-probe control (cheap: only the head trains, on cached
    features, so even a small budget says whether fine-tuning beat it); the portfolio
    (``prior.portfolio``); then the prior's candidates, the survey's two protocols and a linear
    probe; the from-scratch control last (one full training of a re-initialised network). Without
    a prior, the two controls alone. With ``scratch_last=False`` (a study bounded by ``--trials``
    alone, whose search always waits for its controls) the from-scratch control follows the probe:
    queued behind the other enqueued protocols, waiting for it would run them all past ``--trials``."""
    from autotransfer.prior import (
        less_similar_protocol,
        linear_probe_protocol,
        portfolio_protocols,
        probe_control_protocols,
        recommended_protocol,
        scratch_protocols,
    )

    fixed: list[tuple[Protocol, dict[str, Any]]] = []
    scratch = [
        (p, {CONTROL_ATTR: "scratch", SOURCE_ATTR: f"control:scratch#{i}"}) for i, p in enumerate(scratch_protocols())
    ]
    if prior is None and not scratch_last:  # no prior and no time budget: the controls as before issue 27
        fixed += scratch
    if prior is not None:
        fixed.append((prior.centre, {SOURCE_ATTR: "prior"}))
    for i, p in enumerate(probe_control_protocols()):
        fixed.append((p, {CONTROL_ATTR: "probe", SOURCE_ATTR: f"control:probe#{i}"}))
    if prior is not None and not scratch_last:
        fixed += scratch
    if prior is not None:  # a surface prior's candidates (measured optima of the nearest studies) first
        fixed += [(p, {SOURCE_ATTR: source}) for source, p in prior.candidates]
        fixed += [(p, {SOURCE_ATTR: source}) for source, p in portfolio_protocols(num_groups)]
        fixed.append((recommended_protocol(), {SOURCE_ATTR: "survey:recommended"}))
        fixed.append((less_similar_protocol(num_groups), {SOURCE_ATTR: "survey:less-similar"}))
        fixed.append((linear_probe_protocol(), {SOURCE_ATTR: "linear-probe"}))
    if scratch_last:
        fixed += scratch
    return fixed


def warm_start_protocols(storage, name: str, top: int = 3) -> list[tuple[Protocol, dict[str, Any]]]:
    """The top protocols (parameters only) of an earlier study, to enqueue in a new one."""
    earlier = load_study(name, storage)
    scored = [
        (t.value, t) for t in search_trials(earlier, states=(optuna.trial.TrialState.COMPLETE,)) if t.value is not None
    ]
    ranked = [t for _, t in sorted(scored, key=lambda pair: pair[0], reverse=True)[:top]]
    return [(Protocol.from_dict(t.params), {SOURCE_ATTR: f"warm-start:{name}#{t.number}"}) for t in ranked]


class SearchBudget:
    """Stops ``optimize`` once the study holds ``trials`` finished search trials (controls excluded)
    and no control, and no retry of a dead worker's trial, is left waiting; or, whatever is left,
    once ``expired()`` says the job's time for the search is spent."""

    def __init__(
        self,
        trials: int,
        on_trial_end: Callable[[int], None] | None = None,
        *,
        deadline: float | None = None,
        expired: Callable[[], bool] | None = None,
    ) -> None:
        self.trials = trials
        self.on_trial_end = on_trial_end
        self.deadline = deadline
        self.expired = expired or (lambda: False)

    def remaining(self, study: optuna.Study) -> int:
        return max(0, self.trials - len(search_trials(study)))

    def pending(self, study: optuna.Study) -> int:
        """WAITING trials that must still run: retries of trials whose worker died, and controls
        queued ahead of every other waiting protocol (a control queued behind them, the
        from-scratch control of a time-budgeted study, would run them all past the budget)."""
        from autotransfer.search.retry import retried_trial_number

        waiting = sorted(
            study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)), key=lambda t: t.number
        )
        count, ahead = 0, True
        for t in waiting:
            if retried_trial_number(t) is not None:
                count += 1
            elif CONTROL_ATTR in t.user_attrs:
                count += ahead
            else:
                ahead = False
        return count

    def done(self, study: optuna.Study, *, wait: bool = True) -> bool:
        """Budget met and nothing pending; first re-queues trials of dead workers (waiting, with
        ``wait``, until every other running trial is finished or found stale)."""
        from autotransfer.search.retry import settle_stale_trials

        if self.expired():
            return True
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
    expired: Callable[[], bool] | None = None,
    on_trial_done: Callable[[optuna.trial.FrozenTrial], None] | None = None,
) -> None:
    """Run trials until ``trials`` finished search trials exist (and the controls ran), or timeout,
    or ``expired()`` (the job's time budget for the search: the runner's ``stop`` ends the trial in
    flight, and no other starts).

    Failed trials (NaN loss, out of memory) are recorded with their reason and the study
    goes on; Ctrl-C stops at once, keeping every completed trial: the trial it stopped is
    re-queued with its parameters (``workers.interruptible``), without Optuna's traceback.
    ``on_trial_done(trial)`` is called with every trial as it ends (a log line per trial).
    """
    from autotransfer.search.objective import TrialFailed
    from autotransfer.search.retry import interruptible, quiet_interrupted_trials

    deadline = None if timeout is None else time.monotonic() + timeout
    budget = SearchBudget(trials, on_trial_end, deadline=deadline, expired=expired)
    if budget.done(study, wait=False):
        return
    with warnings.catch_warnings(), quiet_interrupted_trials():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = []
        if on_trial_done is not None:
            callbacks.append(lambda _study, trial: on_trial_done(trial))
        callbacks.append(budget)
        study.optimize(
            interruptible(runner), timeout=timeout, callbacks=callbacks, catch=(TrialFailed,), gc_after_trial=False
        )


def validation_counts(prepared: PreparedData, metric: str) -> dict[str, int]:
    """The validation split's size and its effective size under the study's metric (the pruner's
    noise margin; ``effective_images``)."""
    from autotransfer.search.pruning import effective_images

    labels = np.asarray(prepared.val.labels)
    counts = np.bincount(labels, minlength=len(prepared.dataset.classes)) if len(labels) else np.zeros(0, int)
    return {"val_images": int(len(labels)), "val_effective": effective_images(counts.tolist(), metric)}


def control_scores(study: optuna.Study) -> dict[str, float | None]:
    """Best score of each control kind (from scratch: one ELR; linear probe: best of 2)."""
    scores: dict[str, float | None] = {"scratch": None, "probe": None}
    for t in control_trials(study):
        kind = t.user_attrs[CONTROL_ATTR]
        best = scores.get(kind)
        if t.value is not None and (best is None or t.value > best):
            scores[kind] = float(t.value)
    return scores


def build_runner(study: optuna.Study, settings: StudySettings, prepared: PreparedData, *, ui=None, preprocessing=None):
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
    store = open_storage(url, must_exist=True)  # a worker joins a study: it never creates a database
    study = load_study(study_name, store, wait=JOIN_WAIT)  # its creator may still be writing its settings
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
