"""Opening Optuna storages from a URL: SQLite by default, PostgreSQL or a journal file on request."""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from autotransfer.errors import UserError

__all__ = [
    "DEFAULT_STORAGE",
    "open_storage",
    "storage_location",
    "masked_url",
    "HEARTBEAT_INTERVAL",
    "GRACE_PERIOD",
]

#: One SQLite file for all studies (an RDB storage, so heartbeats work).
DEFAULT_STORAGE = "sqlite:///studies/autotransfer.db"
#: Seconds between a running trial's heartbeats, and after which a silent trial is stale.
HEARTBEAT_INTERVAL = int(os.environ.get("AUTOTRANSFER_HEARTBEAT", "20"))
GRACE_PERIOD = int(os.environ.get("AUTOTRANSFER_GRACE", str(3 * HEARTBEAT_INTERVAL)))
#: Seconds an SQLite writer waits for the file's lock (local workers share one file).
SQLITE_LOCK_TIMEOUT = 60
#: A killed worker's running trial is retried (as a new trial) at most this many times.
MAX_RETRY = 2


def storage_location(url: str | None) -> str:
    """The URL actually used (the default when ``url`` is None); plain paths become URLs."""
    if not url:
        return DEFAULT_STORAGE
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

    RDB storages (SQLite, PostgreSQL, MySQL) get heartbeats and
    ``RetryHeartbeatStaleTrialCallback``: a trial whose worker dies is marked FAIL and
    re-queued with its original parameters. A path ending in ``.log``/``.jsonl`` opens a
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
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
            return RDBStorage(_with_driver(location), engine_kwargs=engine_kwargs, **kwargs)
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
