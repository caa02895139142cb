"""autotransfer.prior: place a task on the survey's size x similarity map and derive a prior.

Plested & Gedeon, "Deep transfer learning for image classification: a survey", arXiv 2205.09904.
"""

from __future__ import annotations

from autotransfer.prior.none import wide_prior
from autotransfer.prior.placement import (
    DECISION_TABLE,
    Placement,
    effective_similarity,
    place,
    similarity_from_excess,
    size_score,
    transferability_from_logme,
)
from autotransfer.prior.portfolio import grid_protocols, portfolio_protocols
from autotransfer.prior.quadrant import (
    Prior,
    less_similar_protocol,
    linear_probe_protocol,
    probe_control_protocols,
    quadrant_prior,
    recommended_protocol,
    scratch_protocols,
    with_schedules,
)

__all__ = [
    "DECISION_TABLE",
    "Placement",
    "effective_similarity",
    "grid_protocols",
    "portfolio_protocols",
    "Prior",
    "less_similar_protocol",
    "linear_probe_protocol",
    "place",
    "probe_control_protocols",
    "quadrant_prior",
    "recommended_protocol",
    "scratch_protocols",
    "similarity_from_excess",
    "size_score",
    "transferability_from_logme",
    "wide_prior",
    "with_schedules",
]
