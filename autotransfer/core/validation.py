"""Checks shared by the core types (one place, as scikit-learn keeps its ``validation.py``)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from autotransfer.core.errors import UserError

__all__ = ["known_fields"]


def known_fields(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` when every key is a field of the dataclass ``cls``; an unknown key (a typo must
    not vanish silently) is a one-line ``UserError`` that names it and lists the ``what``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown {what} {', '.join(map(repr, unknown))}; the {what} are: {', '.join(sorted(known))}")
    return values
