"""The "no prior" baseline: the default wide search ranges, nothing centred, nothing enqueued."""

from __future__ import annotations

from autotransfer.core.protocol import ProtocolSpace

__all__ = ["wide_prior"]


def wide_prior() -> ProtocolSpace:
    """The default wide ``ProtocolSpace()`` (``--prior none``; the plain-TPE baseline of issue 4).

    No centring and no protocol to enqueue: the ranges are the outer bounds every prior is
    clipped to, so this baseline searches the same space a centred prior narrows.
    """
    return ProtocolSpace()
