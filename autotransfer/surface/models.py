"""Which model for a target like this: the score each model's past studies reached near the
target's coordinates on the surface (size x similarity), with how much evidence stands behind it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from autotransfer.surface.store import SurfacePoint, SurfaceStore

__all__ = ["ModelExpectation", "expected_scores", "expected_score", "BANDWIDTH"]

#: Kernel bandwidths on the surface's two coordinates: half a decade of size, 0.15 of similarity.
#: Past studies farther than about two bandwidths barely count, and the evidence says so (``support``).
BANDWIDTH = {"log10_n": 0.5, "similarity": 0.15}


@dataclass(frozen=True)
class ModelExpectation:
    """What the surface says of one model at a target's coordinates.

    Attributes:
        model: the model spec.
        score: the kernel-weighted mean of its studies' scores (the held-out test score where
            recorded, else the validation score), or ``None`` without a study.
        spread: the weighted standard deviation of those scores (``None`` below 2 studies).
        studies: its studies in the store; ``support``: how many of them stand at the target,
            in effect (the kernel weights' sum: a study at the target counts 1, one at two
            bandwidths 0.14; well below 1 means every study is far from it).
        nearest: the distance, in bandwidths, of its nearest study.
    """

    model: str
    score: float | None
    spread: float | None
    studies: int
    support: float
    nearest: float | None

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _score(point: SurfacePoint) -> float:
    return float(point.test_score if point.test_score is not None else point.score)


def expected_score(points: list[SurfacePoint], model: str, log10_n: float, similarity: float) -> ModelExpectation:
    """The surface's expectation for ``model`` at (``log10_n``, ``similarity``), from ``points``
    (any models: only ``model``'s count). Nadaraya-Watson with a Gaussian kernel of ``BANDWIDTH``,
    written here: with 1-3 studies per model a Gaussian process's kernel cannot be fitted and a
    fixed one says no more than this weighted mean, and scikit-learn has no kernel mean that
    reports its effective number of studies."""
    own = [p for p in points if p.model == model]
    if not own:
        return ModelExpectation(model, None, None, 0, 0.0, None)
    d = np.array(
        [
            math.hypot(
                (p.log10_n - log10_n) / BANDWIDTH["log10_n"], (p.similarity - similarity) / BANDWIDTH["similarity"]
            )
            for p in own
        ]
    )
    w = np.exp(-0.5 * d**2)
    scores = np.array([_score(p) for p in own])
    support = float(w.sum())
    if support <= 1e-12:  # every study is very far away: the nearest one speaks, with no weight behind it
        i = int(np.argmin(d))
        return ModelExpectation(model, float(scores[i]), None, len(own), 0.0, float(d[i]))
    mean = float(np.sum(w * scores) / support)
    spread = float(math.sqrt(np.sum(w * (scores - mean) ** 2) / support)) if len(own) > 1 else None
    return ModelExpectation(model, mean, spread, len(own), support, float(d.min()))


def expected_scores(path: str | Path, coordinates: Mapping[str, tuple[float, float]]) -> dict[str, ModelExpectation]:
    """``expected_score`` of every model in ``coordinates`` (model -> (log10_n, similarity): the
    target's coordinates as that model measures them) from the store at ``path``; a missing store
    is an empty surface (every expectation ``None``)."""
    points = SurfaceStore(path).load()
    return {model: expected_score(points, model, *xy) for model, xy in coordinates.items()}
