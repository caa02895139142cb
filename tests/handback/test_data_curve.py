"""``handback.data_curve``: the piecewise power law, its correction, its interval and its line,
on synthetic curves whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autotransfer.core.errors import InvalidValueError
from autotransfer.handback.data_curve import (
    CurvePoint,
    DataCurvePrior,
    curve_from_record,
    curve_line,
    curve_record,
    curve_series,
    exponent_prior,
    fit_data_curve,
    load_prior,
    next_target,
)


def truth(m: float) -> float:
    """A known error curve: e = 2 m^-0.5."""
    return 2.0 * m**-0.5


def points(sizes, scored_on):
    return [CurvePoint(m, 1.0 - truth(m), scored_on) for m in sizes]


def test_the_fit_recovers_a_known_power_law():
    curve = fit_data_curve(points([50, 100, 200, 400], 10**7), share=0.85, labelled=500, draws=200)
    assert curve.beta == pytest.approx(0.5, abs=0.01) and curve.exponent == curve.beta  # no prior: plain
    labelled = np.array([500, 2000, 10000])
    centre, low, high = curve.score_at(labelled)
    assert centre == pytest.approx([1 - truth(n * 0.85) for n in labelled], abs=0.003)
    assert np.all(low <= centre) and np.all(centre <= high)
    # how many labelled images 0.99 needs: e = 0.01 at m = 40,000, so N = 40,000 / 0.85
    need, lo, hi = curve.images_for(0.99)
    assert need == pytest.approx(40000 / 0.85, rel=0.05) and lo <= need <= hi


def test_the_interval_widens_with_fewer_and_noisier_points():
    def width(sizes, scored_on):
        curve = fit_data_curve(points(sizes, scored_on), share=0.85, labelled=400, draws=400)
        _, low, high = curve.score_at([2000])
        return float(high[0] - low[0])

    many, few = width([25, 50, 100, 200, 300], 200), width([100, 300], 200)
    assert few > many > 0
    assert width([25, 50, 100, 200, 300], 50) > many  # fewer scoring images: wider too


def test_the_correction_shrinks_the_exponent_towards_past_tasks():
    pts = [CurvePoint(35, 0.70, 60), CurvePoint(70, 0.78, 60), CurvePoint(140, 0.80, 60)]
    plain = fit_data_curve(pts, share=0.85, labelled=200, draws=100)
    prior = DataCurvePrior(1.0, 0.2, ("a", "b"))
    corrected = fit_data_curve(pts, share=0.85, labelled=200, prior=prior, draws=100)
    assert plain.beta < corrected.exponent < 1.0
    vague = fit_data_curve(pts, share=0.85, labelled=200, prior=DataCurvePrior(1.0, 50.0), draws=100)
    assert vague.exponent == pytest.approx(plain.beta, abs=0.01)  # a vague prior leaves the curve's own


def test_the_line_for_a_reachable_target():
    curve = fit_data_curve(points([50, 100, 200], 10**6), share=0.85, labelled=300, draws=200)
    now = float(curve.score_at([300])[0][0])  # 1 - 2 / sqrt(255) = 0.875
    assert next_target(now) == 0.9
    line = curve_line(curve)
    assert line.startswith("data curve: about 0.90 accuracy needs ~")
    assert "(80%: " in line and "+500 images ~ +" in line and "points" in line
    need = curve.images_for(0.9)[0]  # e = 0.1 at m = 400: N = 471, printed to 2 figures
    assert need == pytest.approx(400 / 0.85, rel=0.02) and "~470 labelled images" in line


def test_the_line_says_when_the_curve_does_not_reach_the_target():
    flat = [CurvePoint(35, 0.80, 60), CurvePoint(70, 0.79, 60), CurvePoint(140, 0.78, 60)]
    curve = fit_data_curve(flat, share=0.85, labelled=200, draws=200)
    assert curve.exponent < 0 and not math.isfinite(curve.images_for(0.8)[0])
    line = curve_line(curve)
    assert (
        "data curve: 0.80 accuracy is not reachable by labelling more on this curve (its error stops falling)" in line
    )
    # more data never lowers the forecast: the extrapolated piece is flat, not falling
    centre = curve.score_at([200, 2000])[0]
    assert centre[1] == pytest.approx(centre[0])
    # a slow curve: reachable in principle, but beyond 100x the study's images
    slow = fit_data_curve(points([50, 100, 200], 10**6), share=0.85, labelled=300, draws=100)
    assert "needs over 100x the 300 images" in curve_line(slow, target=0.9999)


def test_next_target_and_bad_input():
    assert [next_target(s) for s in (0.87, 0.9, 0.91, 0.96, 0.998)] == [0.9, 0.95, 0.95, 0.97, 0.999]
    with pytest.raises(InvalidValueError, match="2 or more sizes"):
        fit_data_curve([CurvePoint(50, 0.8, 60)], share=0.85, labelled=100)
    with pytest.raises(InvalidValueError, match="score in"):
        fit_data_curve([CurvePoint(50, 1.2, 60), CurvePoint(90, 0.8, 60)], share=0.85, labelled=100)
    with pytest.raises(InvalidValueError, match="share"):
        fit_data_curve(points([50, 100], 60), share=0, labelled=100)
    curve = fit_data_curve(points([50, 100], 60), share=0.85, labelled=100, draws=50)
    with pytest.raises(InvalidValueError, match="target score"):
        curve.images_for(1.0)


def test_the_record_round_trips_and_feeds_the_figure():
    prior = DataCurvePrior(0.6, 0.4, ("x", "y"))
    curve = fit_data_curve(points([40, 80, 160], 100), share=0.85, labelled=230, prior=prior, draws=300)
    record = curve_record(curve)
    again = curve_from_record(record, draws=300)
    assert again.exponent == pytest.approx(curve.exponent) and record["line"] == curve_line(again)
    assert [f["labelled"] for f in record["forecast"]] == [230, 460, 1150, 2300]
    series = curve_series(again, line=record["line"])
    assert series.measured_labelled == pytest.approx([40 / 0.85, 80 / 0.85, 160 / 0.85])
    assert series.labelled[-1] == pytest.approx(2300) and len(series.centre) == len(series.low) == 40
    assert all(lo <= c <= hi for lo, c, hi in zip(series.low, series.centre, series.high))
    assert all(lo <= s <= hi for lo, s, hi in zip(series.measured_low, series.measured, series.measured_high))


def test_the_shipped_correction_and_leave_one_target_out():
    shipped = load_prior()
    assert 0 < shipped.exponent < 2 and shipped.sd >= 0.1 and "builtin:elpv" in shipped.tasks
    loto = load_prior(exclude=["builtin:elpv"])
    assert "builtin:elpv" not in loto.tasks and loto.exponent != shipped.exponent
    rows = [
        {"target": "a", "n": 100, "score": 1 - 2 * 100**-0.5, "scored_on": 10**6},
        {"target": "a", "n": 1000, "score": 1 - 2 * 1000**-0.5, "scored_on": 10**6},
        {"target": "b", "n": 100, "score": 1 - 100**-0.3, "scored_on": 10**6},
        {"target": "b", "n": 1000, "score": 1 - 1000**-0.3, "scored_on": 10**6},
    ]
    prior = exponent_prior(rows)
    assert prior.exponent == pytest.approx(0.4, abs=0.01) and prior.tasks == ("a", "b")
    with pytest.raises(InvalidValueError, match="2 or more targets"):
        exponent_prior(rows, exclude=["b"])
