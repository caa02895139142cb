"""The numbers behind the data-curve figure (issue 30): the curve the study recorded
(``autotransfer.data_curve``), refitted from its points and prior, as ``CurveSeries``. Testable
without plotly; ``report.plots.data_curve_figure`` draws them."""

from __future__ import annotations

import optuna

from autotransfer.core.schema import ATTR
from autotransfer.handback.data_curve import CurveSeries, curve_from_record, curve_series

__all__ = ["data_curve_info"]


def data_curve_info(study: optuna.Study) -> CurveSeries | None:
    """The study's data curve as the figure's numbers, or ``None`` when it has none."""
    recorded = (study.user_attrs.get(ATTR["data_curve"]) or {}).get("curve")
    if not recorded:
        return None
    return curve_series(curve_from_record(recorded), line=recorded.get("line"))
