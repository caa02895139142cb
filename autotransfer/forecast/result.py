"""``Forecast``: the expected judged score of what ``tune`` would hand back, its interval and its evidence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Forecast"]


@dataclass(frozen=True)
class Forecast:
    """A forecast made before any trial.

    ``score``: the expected score (the task's metric: accuracy, or balanced accuracy) on unseen
    images of the model ``tune`` would hand back; ``low``/``high``: its central ``level`` interval
    (normal, ``sd``). ``studies``: the evidence rows it was fitted on, ``like``: those of the same
    model and a resolution the evidence has (0: nothing like this job), ``targets``: their distinct
    targets; ``nearest``/``distance``: the nearest row in the model's standardised features and how
    far; ``near``: a word for that distance. ``notes``: why the interval was widened.
    """

    score: float
    low: float
    high: float
    sd: float
    level: float
    metric: str
    studies: int
    like: int
    targets: int
    nearest: str
    distance: float
    near: str
    features: dict[str, float]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One line: ``forecast before any trial: accuracy 0.76 (80%: 0.69-0.84) ... on 27 past studies
        (13 like this job, ...)``."""
        metric = self.metric.replace("_", " ")
        stands = (
            f"on {self.studies} past studies ({self.like} like this job, {self.targets} targets;"
            f" nearest {self.nearest}, {self.near})"
            if self.like
            else f"on {self.studies} past studies, 0 like this job (another model or resolution; nearest {self.nearest})"
        )
        return (
            f"forecast before any trial: {metric} {self.score:.2f} ({self.level:.0%}: {self.low:.2f}-{self.high:.2f})"
            f" for the model tune hands back, {stands}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "interval": [self.low, self.high],
            "level": self.level,
            "sd": self.sd,
            "metric": self.metric,
            "studies": self.studies,
            "like": self.like,
            "targets": self.targets,
            "nearest": self.nearest,
            "distance": self.distance,
            "near": self.near,
            "features": dict(self.features),
            "notes": list(self.notes),
        }
