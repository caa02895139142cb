"""Dead and interrupted trials are run again: a trial whose worker died (its heartbeat went
stale) or that Ctrl-C / SIGTERM stopped is re-queued with its parameters, so nothing already
recorded is lost and no protocol is silently dropped (docs/faults.md)."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotransfer.core.schema import FAIL_REASON_ATTR

__all__ = [
    "retried_trial_number",
    "pending_retries",
    "settle_stale_trials",
    "INTERRUPTED_REASON",
    "requeue_interrupted",
    "interruptible",
    "quiet_interrupted_trials",
]


def retried_trial_number(trial: FrozenTrial | optuna.trial.Trial) -> int | None:
    """The number of the trial whose dead worker this trial is a retry of (``None`` if not a retry).

    ``autotransfer.search.storage.requeue_trial`` records it in the retry's system attributes
    (``failed_trial``; the first trial of the chain when a retry itself was retried), as Optuna's
    ``RetryHeartbeatStaleTrialCallback`` does.
    """
    if isinstance(trial, FrozenTrial):
        system_attrs = trial.system_attrs
    else:  # a live Trial (Optuna 5 has no Trial.system_attrs)
        system_attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    value = system_attrs.get("failed_trial")
    return None if value is None else int(value)


def pending_retries(study: optuna.Study) -> list[FrozenTrial]:
    """WAITING retries of trials whose worker died: they must run before the study stops."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return [t for t in waiting if retried_trial_number(t) is not None]


def _heartbeat_enabled(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)  # the study's storage: optuna has no public accessor


def settle_stale_trials(study: optuna.Study, *, wait: bool = True, deadline: float | None = None) -> None:
    """Fail and re-queue the trials of dead workers; with ``wait``, wait until none can still be found.

    Optuna finds a stale trial only once its heartbeat is ``grace`` seconds old, and only when a
    worker looks (at the start of each trial). When the budget is met, the live workers would
    stop looking, and a worker killed moments before would leave its trial RUNNING, never
    retried. So this polls ``fail_stale_trials`` until no trial is RUNNING any more, or for one
    grace period plus two heartbeats (a trial still beating after that has a live worker that
    will finish it), or until ``deadline`` (``time.monotonic()``). Without heartbeats (journal
    storage) it does nothing.
    """
    from autotransfer.search.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL

    if not _heartbeat_enabled(study):
        return
    end = time.monotonic() + GRACE_PERIOD + 2 * HEARTBEAT_INTERVAL
    if deadline is not None:
        end = min(end, deadline)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if not wait or time.monotonic() >= end:
            return
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(max(0.2, min(1.0, HEARTBEAT_INTERVAL / 2, end - time.monotonic())))


#: ``fail_reason`` of a trial stopped by Ctrl-C or SIGTERM (it is re-queued, see ``interruptible``).
INTERRUPTED_REASON = "interrupted (Ctrl-C or SIGTERM): re-queued to run again with its parameters"


def requeue_interrupted(trial: optuna.trial.Trial) -> None:
    """Re-queue a trial that Ctrl-C stopped mid-run, to run again (once) with its parameters.

    Called by the process that ran it, while the trial is still RUNNING (Optuna marks it FAIL
    next), so no other worker can queue it twice. Its ``fail_reason`` says why it failed.
    Unlike a killed run's (``MAX_RETRY``), an interrupted run's re-queue has no limit: an
    interrupt says nothing against the protocol. Best effort: a storage error here must not hide
    the interrupt.
    """
    from autotransfer.search.storage import requeue_trial

    try:
        requeue_trial(trial.study, trial.storage.get_trial(trial._trial_id), max_retry=None)
        trial.set_user_attr(FAIL_REASON_ATTR, INTERRUPTED_REASON)
    except Exception as err:  # noqa: BLE001 - the interrupt goes on regardless
        logging.getLogger(__name__).warning("interrupted trial %d was not re-queued: %s", trial.number, err)


def interruptible(runner: Callable[[optuna.trial.Trial], float]) -> Callable[[optuna.trial.Trial], float]:
    """``runner`` as an objective whose trial, stopped by Ctrl-C, is re-queued (``requeue_interrupted``)
    before the ``KeyboardInterrupt`` goes on: the next run of the study runs it again."""

    def objective(trial: optuna.trial.Trial) -> float:
        try:
            return runner(trial)
        except KeyboardInterrupt:
            requeue_interrupted(trial)
            raise

    return objective


class _DropInterruptedTrialLog(logging.Filter):
    """Drops Optuna's two records about a trial failed by ``KeyboardInterrupt``: "Trial N failed
    with parameters ... KeyboardInterrupt()" with its 60-line traceback, and "Trial N failed with
    value None." Every other record passes."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if isinstance(exc, KeyboardInterrupt) and message.startswith("Trial "):
            number = message.split()[1]
            if number.isdigit():
                self.numbers.add(int(number))
            return False
        return not any(message.startswith(f"Trial {n} failed with value ") for n in self.numbers)


@contextlib.contextmanager
def quiet_interrupted_trials():
    """Within, Optuna does not log the traceback of a trial stopped by Ctrl-C (the CLI says
    "interrupted" in one line, and the trial is re-queued); other logs are untouched."""
    logger = logging.getLogger("optuna.study._optimize")  # where _run_trial logs a failed trial
    quiet = _DropInterruptedTrialLog()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
