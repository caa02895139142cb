"""The rich table of ``autotransfer estimate --models``: each candidate's evidence, best first."""

from __future__ import annotations

import math

from rich.table import Table

from autotransfer.estimate.candidates import CandidateSet

__all__ = ["candidate_table"]


def _num(value: float | None, fmt: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return format(value, fmt)


def candidate_table(result: CandidateSet) -> Table:
    """One row per candidate, in the set's order (best ``ranker`` first); dominated rows say by whom."""
    table = Table(
        title=f"candidates on {result.target} ({result.images} images, {result.classes} classes), best {result.ranker.upper()} first",
        caption=(
            f"training speed at {result.resolution} px, batch {result.batch_size}, on {result.device};"
            f" all candidates estimated in {result.seconds:.1f} s"
        ),
    )
    for name, justify in (
        ("model", "left"),
        ("NLEEP", "right"),
        ("LogME over chance", "right"),
        ("LEEP", "right"),
        ("similarity", "right"),
        ("parameters", "right"),
        ("train img/s", "right"),
        ("estimate s", "right"),
        ("kept", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for c in result.candidates:
        table.add_row(
            c.model,
            _num(c.nleep, ".3f"),
            _num(c.logme_over_chance, ".3f"),
            _num(c.leep, ".3f"),
            _num(c.similarity, ".3f"),
            f"{c.params / 1e6:.2f}M",
            _num(c.images_per_s, ".0f"),
            _num(c.estimate_s, ".1f"),
            "yes" if c.kept else f"no: {c.reason}",
        )
    return table
