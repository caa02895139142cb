"""The portfolio: a few fixed protocols that won across past targets, tried first so that a small
time budget spends itself on them before any sampled trial (docs/design.md, "The time budget";
Auto-sklearn 2.0 and AutoGluon start from such portfolios).

Where they come from (issue 27, measured on images no trial saw): a plain 12-cell grid (ELR
{0.1, 0.3, 1} x freeze {0, 3/8} x re-init {0, 2 groups}, SGD momentum 0.9, head at lr x1, no
weight decay, BN adapting, one stage) run on targets outside the judged benchmark and on its own
cells. Its best cells were the same few every time: ELR 0.3 with the last 2 groups re-initialised,
nothing or 3/8 of the groups frozen. The third member adds the diversity an ensemble wants: the
same rate with nothing re-initialised.
"""

from __future__ import annotations

import math

from autotransfer.core.errors import InvalidValueError
from autotransfer.core.protocol import Protocol

__all__ = ["portfolio_protocols", "grid_protocols", "GRID_ELRS"]

#: The grid baseline's effective learning rates (issue 27).
GRID_ELRS = (0.1, 0.3, 1.0)
#: "No weight decay": the searched range's floor (``ProtocolSpace``: 1e-6, sampled on a log scale,
#: which cannot hold 0); at lr 0.03 it moves a weight by 3e-8 of itself per step.
GRID_WEIGHT_DECAY = 1e-6


def _grid_cell(num_groups: int, elr: float, freeze: int, reinit: int) -> Protocol:
    """One cell of the grid: integer depths ``freeze`` and ``reinit`` on a ``num_groups``-group model."""
    if num_groups < 1:
        raise InvalidValueError(f"num_groups must be >= 1, but got {num_groups!r}")
    freeze = min(freeze, num_groups - 1)
    reinit = min(reinit, num_groups - freeze)
    return Protocol(
        log10_elr=math.log10(elr),
        momentum=0.9,
        head_lr_mult=1.0,
        freeze_frac=freeze / num_groups,
        reinit_frac=reinit / (num_groups - freeze),
        layer_decay=1.0,
        weight_decay=GRID_WEIGHT_DECAY,
        bn_mode="adapt",
        l2sp=0.0,
        schedule="one-stage",
    )


def grid_freeze(num_groups: int) -> int:
    """The grid's deeper freeze: 3 of 8 groups, scaled to ``num_groups``."""
    return int(round(3 * num_groups / 8))


def grid_protocols(num_groups: int) -> list[tuple[str, Protocol]]:
    """The 12-cell grid baseline of issue 27, each cell named ``grid:elr=E,f=F,r=R``."""
    cells = []
    for elr in GRID_ELRS:
        for freeze in (0, grid_freeze(num_groups)):
            for reinit in (0, 2):
                p = _grid_cell(num_groups, elr, freeze, reinit)
                f, r = p.integers(num_groups)
                cells.append((f"grid:elr={elr:g},f={f},r={r}", p))
    return cells


def portfolio_protocols(num_groups: int) -> list[tuple[str, Protocol]]:
    """The portfolio, in the order it is tried: ``portfolio:#i`` names."""
    cells = [
        _grid_cell(num_groups, 0.3, 0, 2),
        _grid_cell(num_groups, 0.3, grid_freeze(num_groups), 2),
        _grid_cell(num_groups, 0.3, 0, 0),
    ]
    return [(f"portfolio:#{i}", p) for i, p in enumerate(cells)]
