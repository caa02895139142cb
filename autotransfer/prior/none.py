"""The "no prior" baseline: the default wide search ranges, nothing centred, nothing enqueued."""

from __future__ import annotations

from typing import Sequence

from autotransfer.core.protocol import SCHEDULES, ProtocolSpace

__all__ = ["wide_prior"]


def wide_prior(schedules: Sequence[str] = SCHEDULES) -> ProtocolSpace:
    """The default wide ``ProtocolSpace()`` (``--prior none``; the plain-TPE baseline of issue 4),
    searching ``schedules`` (``StudySettings.schedules``).

    No centring and no protocol to enqueue: the ranges are the outer bounds every prior is
    clipped to, so this baseline searches the same space a centred prior narrows.
    """
    return ProtocolSpace(schedules=tuple(schedules))
