"""Checks shared by the core types (one place, as scikit-learn keeps its ``validation.py``)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from autotransfer.core.errors import UserError

__all__ = ["known_fields", "check_timeout"]


def known_fields(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` when every key is a field of the dataclass ``cls``; an unknown key (a typo must
    not vanish silently) is a one-line ``UserError`` that names it and lists the ``what``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown {what} {', '.join(map(repr, unknown))}; the {what} are: {', '.join(sorted(known))}")
    return values


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` (seconds, ``None``: no limit) when it is > 0; zero, a negative or NaN would run no
    trial at all and hand back nothing, so it is a one-line ``UserError`` before any work."""
    if timeout is not None and not timeout > 0:
        raise UserError(
            f"--timeout must be > 0 seconds, but got {timeout!r}: leave it out to run until --trials finish"
        )
    return timeout
