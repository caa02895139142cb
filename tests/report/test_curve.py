"""``report.curve`` and ``plots.data_curve_figure``: the recorded data curve as numbers, then drawn."""

from __future__ import annotations

import optuna

from autotransfer.core.schema import ATTR
from autotransfer.handback.data_curve import CurvePoint, DataCurvePrior, curve_record, fit_data_curve
from autotransfer.report import plots
from autotransfer.report.curve import data_curve_info


def test_the_recorded_curve_becomes_the_figure():
    study = optuna.create_study()
    assert data_curve_info(study) is None
    pts = [CurvePoint(30, 0.70, 60), CurvePoint(60, 0.80, 60), CurvePoint(120, 0.85, 30)]
    curve = fit_data_curve(pts, share=0.85, labelled=170, prior=DataCurvePrior(0.6, 0.4, ("a", "b")))
    study.set_user_attr(ATTR["data_curve"], {"trial": 3, "curve": curve_record(curve)})
    info = data_curve_info(study)
    assert info is not None and info.line == curve_record(curve)["line"]
    assert info.measured == [0.70, 0.80, 0.85] and info.study_labelled == 170
    fig = plots.data_curve_figure(info)
    assert [t.name for t in fig.data] == ["80% interval", "forecast", "measured (val + test)"]
    assert fig.layout.xaxis.type == "log" and "labelled images" in fig.layout.title.text
