"""The surface keeps each point's schedule, and a surface prior's centre takes its schedule from a
distance-weighted vote of the points nearest the task (docs/design.md, "Schedules")."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from autotransfer.core.protocol import Protocol, ProtocolSpace
from autotransfer.surface import SurfaceModel, SurfacePoint, SurfaceStore, prior_at_coordinates
from tests.surface.test_store_fit import make_points


def with_schedules(points: list[SurfacePoint], schedules: list[tuple[str, float]]) -> list[SurfacePoint]:
    out = []
    for point, (schedule, frac) in zip(points, schedules):
        protocol = replace(point.best, schedule=schedule, stage_frac=frac)
        out.append(SurfacePoint.from_dict({**point.to_dict(), "protocol": protocol.to_dict()}))
    return out


# two clusters far apart: lp-ft around (2, 0.2), gradual around (4, 0.9), one-stage elsewhere
COORDS = [(2.0, 0.2), (2.05, 0.25), (2.1, 0.2), (4.0, 0.9), (3.9, 0.85), (3.0, 0.5), (3.1, 0.55)]
SCHEDULES = [
    ("lp-ft", 0.2),
    ("lp-ft", 0.4),
    ("one-stage", 0.7),
    ("gradual", 0.5),
    ("gradual", 0.6),
    ("one-stage", 0.3),
    ("one-stage", 0.3),
]


def test_points_keep_their_schedule_and_old_points_read_one_stage(tmp_path):
    points = with_schedules(make_points(COORDS), SCHEDULES)
    store = SurfaceStore(tmp_path / "surface.json")
    store.add(points)
    loaded = store.load()
    assert [(p.best.schedule, p.best.stage_frac) for p in loaded] == SCHEDULES
    # a store written before schedules existed: its protocols have neither field
    payload = json.loads(store.path.read_text())
    for p in payload["points"]:
        del p["protocol"]["schedule"], p["protocol"]["stage_frac"]
    store.path.write_text(json.dumps(payload))
    old = store.load()
    assert {p.best.schedule for p in old} == {"one-stage"}
    model = SurfaceModel().fit(old)
    schedule, frac, votes = model.schedule_at(2.0, 0.2)
    assert schedule == "one-stage" and frac == Protocol().stage_frac and votes["one-stage"] == pytest.approx(1.0)


def test_point_from_study_records_the_schedule():
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import create_trial

    from autotransfer.search.study import best_transfer_trial
    from autotransfer.surface.store import point_from_study
    from tests.report.conftest import synthetic_study

    study = synthetic_study()
    assert point_from_study(study).best.schedule == "one-stage"
    best = best_transfer_trial(study)
    params = {**best.params, "schedule": "lp-ft", "stage_frac": 0.45}
    dists = {
        **best.distributions,
        "schedule": CategoricalDistribution(["one-stage", "lp-ft", "gradual"]),
        "stage_frac": FloatDistribution(0.1, 0.8),
    }
    study.add_trial(
        create_trial(params=params, distributions=dists, value=best.value + 0.05, user_attrs=best.user_attrs)
    )
    point = point_from_study(study)
    assert (point.best.schedule, point.best.stage_frac) == ("lp-ft", 0.45)


def test_schedule_vote_follows_the_nearest_points():
    model = SurfaceModel().fit(with_schedules(make_points(COORDS), SCHEDULES))
    # near the lp-ft cluster: two lp-ft votes near, one one-stage near, the rest far
    schedule, frac, votes = model.schedule_at(2.0, 0.2)
    assert schedule == "lp-ft"
    assert sum(votes.values()) == pytest.approx(1.0)
    assert votes["lp-ft"] > votes["one-stage"] > votes["gradual"]
    assert 0.2 < frac < 0.4  # the weighted mean of the lp-ft voters' 0.2 (on the query) and 0.4
    assert frac < 0.3  # the point on the query weighs more
    schedule, frac, _ = model.schedule_at(4.0, 0.9)
    assert schedule == "gradual" and 0.5 <= frac <= 0.6
    schedule, frac, _ = model.schedule_at(3.05, 0.52)
    assert schedule == "one-stage" and frac == Protocol().stage_frac
    # k = 1: the single nearest point decides
    assert model.schedule_at(2.1, 0.2, k=1)[0] == "one-stage"
    with pytest.raises(ValueError, match="k must be >= 1"):
        model.schedule_at(2.0, 0.2, k=0)


def test_a_tie_goes_to_one_stage():
    # two points at the same distance from the query, one lp-ft and one one-stage
    points = with_schedules(make_points([(2.0, 0.2), (3.0, 0.2)]), [("lp-ft", 0.5), ("one-stage", 0.3)])
    model = SurfaceModel().fit(points)
    schedule, frac, votes = model.schedule_at(2.5, 0.2)
    assert votes["lp-ft"] == pytest.approx(votes["one-stage"]) == pytest.approx(0.5)
    assert (schedule, frac) == ("one-stage", Protocol().stage_frac)
    # lp-ft against gradual: the first in SCHEDULES order
    points = with_schedules(make_points([(2.0, 0.2), (3.0, 0.2)]), [("gradual", 0.5), ("lp-ft", 0.3)])
    assert SurfaceModel().fit(points).schedule_at(2.5, 0.2)[:2] == ("lp-ft", 0.3)


def test_surface_prior_centre_takes_the_voted_schedule(tmp_path):
    points = with_schedules(make_points(COORDS), SCHEDULES)
    path = tmp_path / "surface.json"
    SurfaceStore(path).add(points)
    model = SurfaceModel().fit(points)
    prediction = model.predict(2.0, 0.2)
    assert prediction.protocol.schedule == "lp-ft"
    assert prediction.schedule_votes == model.schedule_at(2.0, 0.2)[2]
    assert prediction.to_dict()["schedule_votes"]["lp-ft"] == pytest.approx(prediction.schedule_votes["lp-ft"])
    prior = prior_at_coordinates(path, model="fashion-source", log10_n=2.0, similarity=0.2, num_groups=8)
    assert prior.centre.schedule == "lp-ft"
    assert prior.centre.stage_frac == pytest.approx(model.schedule_at(2.0, 0.2)[1])
    assert any(line.startswith("schedule lp-ft (first stage") for line in prior.rationale)
    # the neighbours enqueued after the centre keep their own schedules
    assert [p.schedule for _, p in prior.candidates] == ["lp-ft", "one-stage"]  # study-0, study-2
    # a study that searches one-stage only: the centre is clipped to one-stage, and the rationale says so
    one = ProtocolSpace(schedules=("one-stage",))
    prior = prior_at_coordinates(path, model="fashion-source", log10_n=2.0, similarity=0.2, num_groups=8, bounds=one)
    assert prior.centre.schedule == "one-stage"
    assert any("does not search the schedule 'lp-ft'" in line for line in prior.rationale)


def test_surface_page_lists_each_points_schedule(tmp_path):
    from autotransfer.report.surface_plots import write_surface_html

    model = SurfaceModel().fit(with_schedules(make_points(COORDS), SCHEDULES))
    html = write_surface_html(model, tmp_path / "surface.html", grid=6).read_text()
    assert "<th>schedule</th>" in html
    assert "<td>lp-ft (first stage 20% of the budget)</td>" in html
    assert "<td>gradual (last group unfrozen at 60% of the budget)</td>" in html
    assert "<td>one-stage</td>" in html
