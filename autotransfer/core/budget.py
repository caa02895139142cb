"""The job's time budget: durations as users write them, the deadline, and the compute ledger.

``tune --time-budget 10m`` gives the whole job (estimate, controls, trials, final model,
self-training, publishing) one deadline (docs/design.md, "The time budget"). The ledger records
the seconds each stage took, and says them again as multiples of one full training at the study's
size, the unit the grid baseline and the plan speak in.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from autotransfer.core.errors import UserError

__all__ = ["parse_duration", "format_duration", "Deadline", "Ledger", "BUDGET_SLACK"]

#: How far past its budget a job may finish (the issue's promise: at most 10% over).
BUDGET_SLACK = 0.10

_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def parse_duration(text: str | float | int, *, option: str = "--time-budget") -> float:
    """Seconds in ``text``: ``600``, ``90s``, ``10m``, ``1.5h`` (also ``1h30m``). A duration that
    is not positive or not understood is a one-line ``UserError`` naming ``option``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", raw)
        joined = "".join(f"{v}{u}" for v, u in parts)
        if not parts or joined != re.sub(r"\s+", "", raw) or any(u not in _UNITS for _, u in parts):
            raise UserError(f"{option} takes a duration such as 600, 90s, 10m or 1h, but got {text!r}")
        if len(parts) > 1 and any(u == "" for _, u in parts):
            raise UserError(f"{option} takes a duration such as 600, 90s, 10m or 1h, but got {text!r}")
        seconds = sum(float(v) * _UNITS[u] for v, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{option} must be a positive duration (600, 90s, 10m, 1h), but got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``; ``42.3`` -> ``42 s``; ``3720`` -> ``1 h 2 min``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {(s % 3600) // 60} min"


@dataclass
class Deadline:
    """A point in ``time.monotonic()`` time by which the job must end (``None``: no budget)."""

    at: float | None = None
    budget: float | None = None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def after(cls, seconds: float | None) -> "Deadline":
        now = time.monotonic()
        return cls(None if seconds is None else now + seconds, seconds, now)

    def left(self) -> float | None:
        """Seconds left (``None`` without a budget; never below 0)."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def earlier(self, reserve: float) -> "Deadline":
        """The same clock with ``reserve`` seconds held back for later stages."""
        return Deadline(None if self.at is None else self.at - reserve, self.budget, self.started)


@dataclass
class Ledger:
    """Seconds per stage of one job, in the order the stages ran, and the unit ``training_s``
    (one full training at the study's size and budget) they are also given in."""

    stages: dict[str, float] = field(default_factory=dict)
    training_s: float | None = None
    trainings: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float, *, trainings: float | None = None) -> None:
        """Add ``seconds`` (and the number of trainings they ran, when known) to ``stage``."""
        self.stages[stage] = self.stages.get(stage, 0.0) + float(seconds)
        if trainings is not None:
            self.trainings[stage] = self.trainings.get(stage, 0.0) + float(trainings)

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    def in_trainings(self, seconds: float) -> float | None:
        """``seconds`` as a multiple of one full training (``None`` before one was measured)."""
        return None if not self.training_s else seconds / self.training_s

    def to_dict(self) -> dict[str, Any]:
        unit = self.training_s
        return {
            "stages": {k: round(v, 1) for k, v in self.stages.items()},
            "total_s": round(self.total, 1),
            "training_s": None if unit is None else round(unit, 2),
            "in_trainings": None
            if not unit
            else {**{k: round(v / unit, 2) for k, v in self.stages.items()}, "total": round(self.total / unit, 2)},
            "trainings_run": {k: round(v, 2) for k, v in self.trainings.items()},
        }
