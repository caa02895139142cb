"""Opening Optuna storages from a URL: SQLite by default, PostgreSQL or a journal file on request."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autotransfer.core.errors import AutotransferRuntimeError, UserError
from autotransfer.core.schema import FIXED_PARAMS

__all__ = [
    "DEFAULT_STORAGE",
    "STORAGE_ENV",
    "default_storage",
    "open_storage",
    "open_existing_storage",
    "storage_location",
    "study_storage",
    "storage_name",
    "masked_url",
    "scrub",
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


#: A query parameter whose name holds one of these carries a credential (libpq's ``password``,
#: ``passfile``, ``sslpassword``; tokens, keys, secrets of any driver): its value is never shown.
_CREDENTIAL_WORDS = ("pass", "pwd", "secret", "token", "key", "credential", "auth")
_QUERY_PARAM = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")


def _credential_spans(url: str) -> list[tuple[int, int]]:
    """Where ``url`` holds a secret: the password of its userinfo and every credential-bearing
    query value, as ``(start, end)`` offsets."""
    spans: list[tuple[int, int]] = []
    scheme_end = url.find("://")
    if scheme_end < 0:
        return spans
    start = scheme_end + 3
    query_at = min([i for i in (url.find("?", start), url.find("#", start)) if i >= 0], default=len(url))
    at = url.rfind("@", start, query_at)
    if at >= 0 and not url.startswith("sqlite"):  # an SQLite path may hold '@' and ':'
        colon = url.find(":", start, at)
        if colon >= 0:
            spans.append((colon + 1, at))
    if query_at < len(url) and url[query_at] == "?":
        for match in _QUERY_PARAM.finditer(url, query_at):
            name = match.group(2).strip().lower()
            if any(word in name for word in _CREDENTIAL_WORDS) and match.group(3):
                spans.append(match.span(3))
    return spans


def masked_url(url: str) -> str:
    """The URL with every credential masked: the password of ``user:password@`` and each query
    parameter that carries one (``?password=``, ``passfile``, ``sslpassword``, tokens, keys):
    ``postgresql://user:***@host/db?password=***``. The one way to show a storage URL in a
    message, a note, a summary or a file."""
    shown = url
    for begin, end in sorted(_credential_spans(url), reverse=True):
        shown = shown[:begin] + "***" + shown[end:]
    return shown


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with ``url`` masked and each of its secrets,
    as written and URL-decoded, replaced by ``***``."""
    from urllib.parse import unquote

    secrets = {url[a:b] for a, b in _credential_spans(url)}
    secrets |= {unquote(v) for v in secrets}
    text = text.replace(url, masked_url(url))
    for secret in sorted((v for v in secrets if v), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def storage_name(storage: optuna.storages.BaseStorage | str) -> str:
    """How a message names ``storage`` (an opened storage or a URL): its URL, credentials masked,
    an SQLite or journal file by its absolute path, so that the user sees which one was opened."""
    if isinstance(storage, str):
        url = storage_location(storage)
    else:
        inner = getattr(storage, "_backend", storage)  # optuna's _CachedStorage wraps an RDBStorage
        found = getattr(inner, "url", None)
        if not isinstance(found, str):
            journal = getattr(getattr(inner, "_backend", None), "_file_path", None)  # JournalStorage
            return str(Path(journal).resolve()) if journal else type(storage).__name__
        url = found
    path = _sqlite_path(url)
    if path is not None:
        return f"sqlite:///{path.resolve()}"
    if "://" not in url:
        return str(Path(url).resolve())
    return masked_url(url)


def _sqlite_path(url: str) -> Path | None:
    """The file of an ``sqlite:///`` URL (``None``: not SQLite, or in memory)."""
    if not url.startswith("sqlite:///"):
        return None
    raw = url[len("sqlite:///") :].split("?", 1)[0]
    return None if raw in ("", ":memory:") else Path(raw)


def study_storage(storage: str | None = None, out: str | Path | None = None) -> str:
    """The storage a command that reads a study opens: ``storage`` (``--storage``: a URL, a file,
    or the folder ``tune --out`` wrote), else the storage of the folder ``out`` (``--out``: the
    folder ``tune --out`` wrote, or a model folder in its ``runs/``), found as ``tune`` chose it
    (``default_storage``), else the default storage."""
    if storage:
        if "://" not in storage and Path(storage).expanduser().is_dir():
            return f"sqlite:///{_tune_folder(Path(storage)) / 'autotransfer.db'}"
        return storage_location(storage)
    if out is not None:
        return default_storage(_tune_folder(Path(out)))
    return storage_location(None)


def _tune_folder(folder: Path) -> Path:
    """The folder ``tune --out`` wrote: ``folder`` itself, or, for a model folder
    ``OUT/runs/STUDY`` with no storage of its own, ``OUT``."""
    folder = folder.expanduser().resolve()
    if not (folder / "autotransfer.db").exists() and folder.parent.name == "runs":
        if (folder.parent.parent / "autotransfer.db").exists():
            return folder.parent.parent
    return folder


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
        if state == TrialState.RUNNING and values is None:  # ask popping a WAITING (enqueued) trial
            updated = self._claim_waiting(trial_id)
        else:
            updated = super().set_trial_state_values(trial_id, state, values)
        if updated and state == TrialState.RUNNING:
            self._first_beat(trial_id)
        return updated

    def _claim_waiting(self, trial_id: int) -> bool:
        """Move a trial from WAITING to RUNNING in one conditional UPDATE; ``False`` if another
        worker claimed it first.

        Optuna reads the state, then writes RUNNING; on SQLite that read takes no lock, so two
        workers both popped one enqueued trial and the slower died on tell ("Cannot tell a
        COMPLETE trial"; seen with two local workers). A single UPDATE ... WHERE state = WAITING
        is atomic on SQLite and PostgreSQL alike.
        """
        from datetime import datetime

        from optuna.storages._rdb import models

        session = self.scoped_session()
        try:
            claimed = (
                session.query(models.TrialModel)
                .filter(models.TrialModel.trial_id == trial_id, models.TrialModel.state == TrialState.WAITING)
                .update({models.TrialModel.state: TrialState.RUNNING}, synchronize_session=False)
            )
            if claimed == 1:  # ours now (the UPDATE holds the write lock): stamp its start as Optuna does
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                trial.datetime_start = datetime.now()
            session.commit()
        except Exception:
            session.rollback()
            raise
        finally:
            session.close()
        return claimed == 1

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


#: Messages of a database whose tables another process created between the check and the create
#: (two runs opening a new storage at once): opening again finds them.
_CREATED_MEANWHILE = ("already exists", "unique constraint", "duplicate key")


def open_storage(
    url: str | None = None, *, heartbeat: bool = True, writable: bool | None = None, must_exist: bool = False
) -> optuna.storages.BaseStorage:
    """Open the storage at ``url`` (default ``studies/autotransfer.db``).

    ``writable`` (default: ``heartbeat``, as running trials write) refuses an SQLite file
    that cannot be written with a one-line ``UserError``; pass ``False`` to only read.
    ``must_exist`` refuses an SQLite or journal file that does not exist (commands that read
    studies never create a database; ``open_existing_storage``).

    RDB storages (SQLite, PostgreSQL, MySQL) get heartbeats and ``RequeueStaleTrial``: a trial
    whose worker dies is marked FAIL and re-queued with its original parameters and queue
    attributes (``requeue_trial``). A path ending in ``.log``/``.jsonl`` opens a
    journal file instead (no heartbeats). Any failure to open is a one-line ``UserError`` that
    names the storage (``storage_name``), credentials masked.
    """
    location = storage_location(url)
    if must_exist:
        _refuse_missing(location)
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
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _BeatingRDBStorage(_with_driver(location), engine_kwargs=engine_kwargs, **kwargs)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - sqlalchemy/driver errors vary
            if attempt < 2 and any(word in str(err).lower() for word in _CREATED_MEANWHILE):
                time.sleep(0.2 * (attempt + 1))  # another process created the tables: open them
                continue
            raise UserError(
                f"cannot open storage {masked_url(location)!r}: {scrub(_one_line(err), location)} — check the URL,"
                " that the database is reachable, and that the file is an Optuna storage"
            ) from None
    raise AutotransferRuntimeError("unreachable")  # the loop returns or raises


def open_existing_storage(url: str | None = None) -> optuna.storages.BaseStorage:
    """Open an existing storage to read (no heartbeats), as ``export``, ``report``, ``dashboard``
    and ``worker`` do: an SQLite or journal file that does not exist is a one-line ``UserError``
    (nothing is created), and so is a storage whose studies cannot be read."""
    location = storage_location(url)
    store = open_storage(location, heartbeat=False, must_exist=True)
    try:
        store.get_all_studies()
    except Exception as err:  # noqa: BLE001 - any failure to read is the user's storage
        raise UserError(
            f"cannot read studies from storage {storage_name(location)!r}: {scrub(_one_line(err), location)}"
        ) from None
    return store


def _refuse_missing(location: str) -> None:
    path = _sqlite_path(location) if "://" in location else Path(location)
    if path is not None and not path.is_file():
        raise UserError(
            f"storage {str(path.resolve())!r} does not exist: run `autotransfer tune` first, or pass --out (the"
            " folder tune wrote into) or the --storage of your studies"
        )


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
