"""The surface of optimal protocols: record each study's best protocol, fit it, use it as a prior.

Drawing it is the report's (``report.surface_plots``, ``report.slices``)."""
from __future__ import annotations

from autotransfer.surface.fit import (
    FEW_POINTS,
    PARAMS,
    SurfaceModel,
    SurfacePrediction,
    prior_from_surface,
    surface_prior,
    surface_for_prior,
    surface_points,
    surface_prior_for_profile,
)
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
    "surface_prior",
    "prior_from_surface",
    "surface_prior_for_profile",
    "surface_points",
    "surface_for_prior",
    "active_store",
    "default_surface",
]
