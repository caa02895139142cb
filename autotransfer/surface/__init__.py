"""The surface of optimal protocols: record each study's best protocol, fit it, use it as a prior.

Drawing it is the report's (``report.surface_plots``, ``report.slices``)."""

from __future__ import annotations

from autotransfer.surface.fit import (
    FEW_POINTS,
    PARAMS,
    SurfaceModel,
    SurfacePrediction,
    prior_at_coordinates,
    prior_for_task,
    prior_from_prediction,
    store_named_by,
    surface_points,
)
from autotransfer.surface.models import ModelExpectation, expected_score, expected_scores
from autotransfer.surface.store import (
    DEFAULT_STORE,
    POINT_ATTR,
    SurfacePoint,
    SurfaceStore,
    active_store,
    default_surface,
    record_study,
)

__all__ = [
    "DEFAULT_STORE",
    "POINT_ATTR",
    "SurfacePoint",
    "SurfaceStore",
    "record_study",
    "PARAMS",
    "FEW_POINTS",
    "SurfaceModel",
    "SurfacePrediction",
    "prior_from_prediction",
    "prior_at_coordinates",
    "prior_for_task",
    "surface_points",
    "store_named_by",
    "active_store",
    "default_surface",
    "ModelExpectation",
    "expected_score",
    "expected_scores",
]
