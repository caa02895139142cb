"""Disk-full errors: found in an exception's chain and said in one line that names the path and the space."""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from autotransfer.core.errors import UserError

__all__ = ["disk_full_cause", "disk_full_error", "disk_full_as_user_error", "format_bytes"]

#: How the libraries below us word a full disk when they do not raise ``OSError(ENOSPC)``:
#: safetensors (``SafetensorError: ... No space left on device (os error 28)``), SQLite
#: (``database or disk is full``, which Optuna re-raises as a ``StorageInternalError``).
_PHRASES = ("no space left on device", "disk quota exceeded", "database or disk is full", "os error 28")


def format_bytes(count: float) -> str:
    """``count`` bytes as ``"12.3 MB"`` (powers of 1024, written as KB, MB, GB)."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # unreachable: the loop returns at GB


def _chain(err: BaseException):
    seen: set[int] = set()
    todo: list[BaseException] = [err]
    while todo:
        item = todo.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [e for e in (item.__cause__, item.__context__, getattr(item, "orig", None)) if e is not None]


def disk_full_cause(err: BaseException) -> BaseException | None:
    """The error in ``err``'s chain (itself, its causes and contexts, SQLAlchemy's ``orig``) that
    says the disk is full: ``OSError`` with ``ENOSPC`` or ``EDQUOT``, SQLite's ``SQLITE_FULL``, or a
    message saying "No space left on device". ``None`` when there is none."""
    for item in _chain(err):
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT):
            return item
        if getattr(item, "sqlite_errorname", None) == "SQLITE_FULL":
            return item
        if any(phrase in str(item).lower() for phrase in _PHRASES):
            return item
    return None


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_full_error(
    err: BaseException,
    path: str | os.PathLike | None = None,
    needed: int | None = None,
    *,
    fallback: str | os.PathLike | None = None,
    then: str = "run the command again",
) -> UserError:
    """One line for the disk-full ``err``: the path written (``path``; else the file the ``OSError``
    names; else ``fallback``; else the current folder), the space free on its disk, ``needed``
    bytes when known, and what to do (``then``: after freeing space)."""
    cause = disk_full_cause(err) or err
    named = path if path is not None else getattr(cause, "filename", None) or fallback
    where = Path(named if named is not None else os.getcwd())
    free = _free_bytes(where.absolute())
    room = "" if free is None else f"{format_bytes(free)} free"
    if needed is not None:
        room = f"it needs about {format_bytes(needed)}" + (f", {room}" if room else "")
    detail = f" ({room})" if room else ""
    return UserError(
        f"no space left on the device holding {str(where)!r}{detail}: free some space there, or write to"
        f" another disk, then {then}"
    )


@contextmanager
def disk_full_as_user_error(fallback: str | os.PathLike | None = None, *, then: str = "run the command again"):
    """Turn a disk-full error raised in the block into ``disk_full_error`` (one line, no traceback);
    ``fallback`` names the path when the error names no file (SQLite's "database or disk is full")."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        if disk_full_cause(err) is None:
            raise
        raise disk_full_error(err, fallback=fallback, then=then) from None
