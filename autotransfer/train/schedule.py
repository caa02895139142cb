"""When each depth group starts to train under a schedule (docs/design.md, "Schedules"): pure functions."""

from __future__ import annotations

from autotransfer.core.errors import InvalidValueError
from autotransfer.core.knobs import KNOBS

__all__ = ["join_steps", "unfreeze_steps", "frozen_depth"]


def join_steps(
    steps: int, schedule: str, stage_frac: float, freeze: int, reinit: int, num_groups: int
) -> list[tuple[int, int]]:
    """``[(step, group)]``: the 1-based step from which each pretrained trainable group
    ``f..G-r-1`` trains, top group first. ``one-stage``: every group at step 1; ``lp-ft``: every
    group at ``round(stage_frac * steps) + 1``; ``gradual``: the ``k``-th group from the top
    (``k = 1..K``, ``K = G - r - f``) at ``round(k / K * stage_frac * steps) + 1``."""
    KNOBS["schedule"].check(schedule)
    KNOBS["stage_frac"].check(stage_frac)
    if not 0 <= freeze <= num_groups or not 0 <= reinit <= num_groups - freeze:
        raise InvalidValueError(f"freeze {freeze!r} and reinit {reinit!r} do not fit {num_groups!r} groups")
    if steps < 0:
        raise InvalidValueError(f"need steps >= 0, but got {steps!r}")
    top = num_groups - reinit  # groups freeze..top-1 are pretrained and trainable
    count = top - freeze
    out = []
    for k in range(1, count + 1):
        if schedule == "one-stage":
            start = 0
        elif schedule == "lp-ft":
            start = int(round(stage_frac * steps))
        else:
            start = int(round(k / count * stage_frac * steps))
        out.append((start + 1, top - k))
    return out


def unfreeze_steps(
    steps: int, schedule: str, stage_frac: float, freeze: int, reinit: int, num_groups: int
) -> list[tuple[int, int]]:
    """``[(step, group)]`` in order: the groups that start frozen and join at a later ``step``
    (1-based: the first step that updates them); empty for ``one-stage``."""
    return [(s, g) for s, g in join_steps(steps, schedule, stage_frac, freeze, reinit, num_groups) if s > 1]


def frozen_depth(
    step: int, steps: int, schedule: str, stage_frac: float, freeze: int, reinit: int, num_groups: int
) -> int:
    """The number of leading groups that do not train at 1-based ``step`` (``f`` once all joined)."""
    joined = sum(1 for s, _ in join_steps(steps, schedule, stage_frac, freeze, reinit, num_groups) if s <= step)
    return num_groups - reinit - joined
