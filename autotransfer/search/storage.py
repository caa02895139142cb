"""Opening Optuna storages from a URL: SQLite by default, PostgreSQL or a journal file on request."""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autotransfer.core.errors import UserError
from autotransfer.core.schema import FIXED_PARAMS

__all__ = [
    "DEFAULT_STORAGE",
    "STORAGE_ENV",
    "default_storage",
    "open_storage",
    "storage_location",
    "masked_url",
    "HEARTBEAT_INTERVAL",
    "GRACE_PERIOD",
    "MAX_RETRY",
    "QUEUED_ATTRS",
    "requeue_trial",
    "RequeueStaleTrial",
]

#: One SQLite file for all studies (an RDB storage, so heartbeats work).
DEFAULT_STORAGE = "sqlite:///studies/autotransfer.db"
#: The environment variable that sets the default storage of every command, as ``OPTUNA_STORAGE``
#: does for optuna's CLI; ``--storage`` wins over it.
STORAGE_ENV = "AUTOTRANSFER_STORAGE"
#: Seconds between a running trial's heartbeats, and after which a silent trial is stale.
HEARTBEAT_INTERVAL = int(os.environ.get("AUTOTRANSFER_HEARTBEAT", "20"))
GRACE_PERIOD = int(os.environ.get("AUTOTRANSFER_GRACE", str(3 * HEARTBEAT_INTERVAL)))
#: Seconds an SQLite writer waits for the file's lock (local workers share one file).
SQLITE_LOCK_TIMEOUT = 60
#: A killed worker's running trial is retried (as a new trial) at most this many times.
MAX_RETRY = 2
#: The trial user attributes a trial is queued with (``autotransfer.search.study``: ``control``,
#: ``source``); a retry keeps these and drops what the dead run wrote (its worker, its integers,
#: ``oom_retried``, ...), so that it runs as the trial first ran: a control stays a control,
#: never pruned, an enqueued candidate stays a candidate.
QUEUED_ATTRS = ("control", "source")

_logger = logging.getLogger(__name__)


def requeue_trial(study: optuna.Study, trial: FrozenTrial, *, max_retry: int | None = MAX_RETRY) -> bool:
    """Queue ``trial`` (a trial that died: stale heartbeat, Ctrl-C) to run again with its parameters.

    The retry is a new WAITING trial that records the chain the way Optuna's
    ``RetryHeartbeatStaleTrialCallback`` does (system attributes ``failed_trial``, the first trial
    of the chain, and ``retry_history``), keeps ``QUEUED_ATTRS`` and is queued the way the trial was:

    - an enqueued trial (a control, a prior or survey candidate, a warm start: Optuna's
      ``fixed_params``) is enqueued again with the same fixed values. Optuna's callback re-created
      it with the parameters *and* the distributions of the dead run, and an enqueued value outside
      the study's range (``freeze_frac`` 0.0 in [0.68, 1]) made that raise ``ValueError`` inside
      ``fail_stale_trials``: the worker crashed and the trial was never re-run (issue 16).
    - a sampled trial keeps its parameters and distributions (the sampler counts it as sampled);
      a distribution that does not hold its value (never seen: a sampled value lies in its range)
      is widened to hold it.

    Returns False when the chain already ran ``max_retry`` retries (nothing queued).
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if max_retry is not None and len(history) > max_retry:
        return False
    system_attrs: dict[str, Any] = {
        "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
        "retry_history": history,
    }
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k in QUEUED_ATTRS}
    fixed = trial.system_attrs.get(FIXED_PARAMS)
    if fixed is not None:
        system_attrs[FIXED_PARAMS] = {**fixed, **trial.params}
        retry = optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=user_attrs, system_attrs=system_attrs)
    else:
        retry = optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=dict(trial.params),
            distributions={k: _holding(d, trial.params[k]) for k, d in trial.distributions.items()},
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    study.add_trial(retry)
    return True


def _holding(distribution: BaseDistribution, value: Any) -> BaseDistribution:
    """``distribution``, widened to hold ``value`` if it does not (float and int ranges)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if distribution._contains(distribution.to_internal_repr(value)):
        return distribution
    if isinstance(distribution, FloatDistribution):
        return FloatDistribution(min(distribution.low, value), max(distribution.high, value), log=distribution.log)
    if isinstance(distribution, IntDistribution):
        return IntDistribution(min(distribution.low, value), max(distribution.high, value), log=distribution.log)
    if isinstance(distribution, CategoricalDistribution):
        return CategoricalDistribution([*distribution.choices, value])
    return distribution


class RequeueStaleTrial:
    """The storage's stale-trial callback: re-queues a dead worker's trial with ``requeue_trial``.

    It replaces Optuna's ``RetryHeartbeatStaleTrialCallback`` (same chain attributes, same
    ``max_retry``), which crashed the live worker on an enqueued value outside the study's range.
    It runs inside ``fail_stale_trials`` at the start of every trial of every worker, so it never
    raises: a retry that cannot be queued is one warning line, and the worker goes on.
    """

    def __init__(self, max_retry: int | None = MAX_RETRY) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            requeue_trial(study, trial, max_retry=self.max_retry)
        except Exception as err:  # noqa: BLE001 - a worker must not die for another worker's trial
            _logger.warning("trial %d of a dead worker could not be re-queued: %s", trial.number, _one_line(err))


def default_storage(folder: str | Path | None = None) -> str:
    """The storage used when none is given: ``$AUTOTRANSFER_STORAGE``, else ``autotransfer.db`` in
    ``folder`` (``tune --out``), else ``DEFAULT_STORAGE``."""
    from_env = os.environ.get(STORAGE_ENV, "").strip()
    if from_env:
        return from_env
    return DEFAULT_STORAGE if folder is None else f"sqlite:///{Path(folder) / 'autotransfer.db'}"


def storage_location(url: str | None) -> str:
    """The URL actually used (``default_storage()`` when ``url`` is None); plain paths become URLs."""
    url = url or default_storage()
    if "://" not in url:
        if url.endswith((".log", ".jsonl", ".journal")):
            return url
        return f"sqlite:///{url}"
    return url


def _with_driver(url: str) -> str:
    """``postgresql://`` with the installed driver named (SQLAlchemy 2.1 defaults to psycopg 3,
    2.0 to psycopg2; the ``postgres`` extra installs psycopg2-binary)."""
    if not url.startswith("postgresql://"):
        return url
    rest = url[len("postgresql://") :]
    for module, dialect in (("psycopg2", "postgresql+psycopg2"), ("psycopg", "postgresql+psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    raise UserError(
        f"storage {masked_url(url)!r} needs a PostgreSQL driver: pip install 'autotransfer[postgres]' (psycopg2-binary)"
    )


def masked_url(url: str) -> str:
    """The URL with its password masked (``postgresql://user:***@host/db``): the one way to
    show a storage URL in a message, a note or a summary."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a database URL: nothing to mask
        return url


class _BeatingRDBStorage(RDBStorage):
    """``RDBStorage`` whose trials beat from the moment they are RUNNING.

    Optuna's first heartbeat comes from the thread that ``optimize`` starts after ``ask``, and
    ``ask`` samples the parameters first (tens of milliseconds). A RUNNING trial that never beat is
    never found stale, so a worker killed, or interrupted, inside ``ask`` left its trial RUNNING for
    good: an enqueued control popped there never ran again. Seen: a SIGKILL that landed between two
    trials. Here a trial's first heartbeat is written as it becomes RUNNING, so the stale-trial check
    catches it like any other dead worker's trial (``RequeueStaleTrial``).
    """

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        frozen = super()._create_new_trial(study_id, template_trial)  # what _CachedStorage calls
        if frozen.state == TrialState.RUNNING:
            self._first_beat(frozen._trial_id)
        return frozen

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        updated = super().set_trial_state_values(trial_id, state, values)
        if updated and state == TrialState.RUNNING:  # a WAITING trial popped by ask
            self._first_beat(trial_id)
        return updated

    def _first_beat(self, trial_id: int) -> None:
        if self.heartbeat_interval is not None:
            self.record_heartbeat(trial_id)


def _check_sqlite_file(url: str, *, writable: bool = True) -> None:
    path = Path(url[len("sqlite:///") :])
    if str(path) in ("", ":memory:"):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the folder of storage {str(path)!r} ({err.strerror or err}):"
            " pass a --storage in a folder you can write to"
        ) from None
    if writable and path.exists():
        try:  # SQLite opens a read-only file without complaint and fails at the first write
            with open(path, "r+b"):
                pass
            if not os.access(path.parent, os.W_OK):  # its journal goes beside it
                raise PermissionError(13, f"folder {str(path.parent)!r} is read-only")
        except OSError as err:
            raise UserError(
                f"storage {str(path)!r} is read-only ({err.strerror or err}): make it and its folder"
                " writable (chmod u+w), or pass another --storage"
            ) from None
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as handle:
            header = handle.read(16)
        if header != b"SQLite format 3\x00":
            raise UserError(
                f"storage {str(path)!r} is not an SQLite database (corrupt or another file):"
                " move it aside or pass another --storage"
            )


def open_storage(
    url: str | None = None, *, heartbeat: bool = True, writable: bool | None = None
) -> optuna.storages.BaseStorage:
    """Open the storage at ``url`` (default ``studies/autotransfer.db``).

    ``writable`` (default: ``heartbeat``, as running trials write) refuses an SQLite file
    that cannot be written with a one-line ``UserError``; pass ``False`` to only read.

    RDB storages (SQLite, PostgreSQL, MySQL) get heartbeats and ``RequeueStaleTrial``: a trial
    whose worker dies is marked FAIL and re-queued with its original parameters and queue
    attributes (``requeue_trial``). A path ending in ``.log``/``.jsonl`` opens a
    journal file instead (no heartbeats). Any failure to open is a one-line ``UserError``.
    """
    location = storage_location(url)
    if "://" not in location:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(location).parent.mkdir(parents=True, exist_ok=True)
        try:
            return JournalStorage(JournalFileBackend(location))
        except Exception as err:  # noqa: BLE001 - any open failure is the user's storage
            raise UserError(f"cannot open journal storage {location!r}: {_one_line(err)}") from err
    if location.startswith("sqlite:///"):
        _check_sqlite_file(location, writable=heartbeat if writable is None else writable)
    kwargs: dict = {}
    if heartbeat:
        retry = RequeueStaleTrial(max_retry=MAX_RETRY)
        kwargs = dict(
            heartbeat_interval=HEARTBEAT_INTERVAL,
            grace_period=GRACE_PERIOD,
            heartbeat_stale_trial_callback=retry,
        )
    engine_kwargs = None
    if location.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 10}}
    elif location.startswith("sqlite"):
        # several local workers write to one file: wait for its lock instead of failing at 5 s
        engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _BeatingRDBStorage(_with_driver(location), engine_kwargs=engine_kwargs, **kwargs)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - sqlalchemy/driver errors vary
        raise UserError(
            f"cannot open storage {masked_url(location)!r}: {_one_line(err)} — check the URL, that the database"
            " is reachable, and that the file is an Optuna storage"
        ) from err


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
