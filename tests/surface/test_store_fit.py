"""The surface store round-trips; the GP fit recovers a smooth function, widens away from data and with few points."""
from __future__ import annotations

import json
import os
import math

import numpy as np
import pytest

from autotransfer.errors import UserError
from autotransfer.prior.quadrant import WIDTHS
from autotransfer.search.protocol import Protocol
from autotransfer.surface import (
    SurfaceModel,
    SurfacePoint,
    SurfaceStore,
    load_sweep_spec,
    surface_grid_info,
    surface_prior,
    write_surface_html,
)


def truth(x: float, s: float) -> dict[str, float]:
    """A smooth synthetic optimum over (log10 N, similarity)."""
    return {
        "log10_elr": -2.0 - 0.8 * s + 0.3 * math.sin(1.5 * x),
        "reinit_frac": 0.6 * (1 - s) * (x - 1.5) / 2.5,
        "freeze_frac": 0.8 * s * (1 - (x - 1.5) / 2.5),
        "log10_head_lr_mult": 0.5 + 0.5 * s,
    }


def make_points(coords) -> list[SurfacePoint]:
    points = []
    for i, (x, s) in enumerate(coords):
        t = truth(x, s)
        protocol = Protocol(log10_elr=t["log10_elr"], head_lr_mult=10 ** t["log10_head_lr_mult"],
                            freeze_frac=t["freeze_frac"], reinit_frac=t["reinit_frac"])
        points.append(SurfacePoint(study=f"study-{i}", target=f"builtin:t{i % 3}", model="fashion-source",
                                   n=int(10**x), seed=0, log10_n=x, similarity=s, protocol=protocol.to_dict(),
                                   score=0.5 + 0.01 * i, metric="accuracy", excess=[0.1, 0.2, 0.3]))
    return points


def grid_coords(k: int = 5):
    return [(x, s) for x in np.linspace(1.5, 4.0, k) for s in np.linspace(0.0, 1.0, k)]


def test_store_round_trips_and_replaces_by_name(tmp_path):
    store = SurfaceStore(tmp_path / "studies" / "surface.json")
    assert store.load() == []
    points = make_points(grid_coords(2))
    store.add(points)
    loaded = store.load()
    assert [p.to_dict() for p in loaded] == [p.to_dict() for p in points]
    assert loaded[0].best == Protocol.from_dict(points[0].protocol)
    # same study name again: replaced, not duplicated (idempotent recording)
    changed = SurfacePoint.from_dict({**points[1].to_dict(), "score": 0.99})
    store.add(changed)
    store.add(changed)
    loaded = store.load()
    assert len(loaded) == len(points)
    assert [p.score for p in loaded if p.study == changed.study] == [0.99]
    assert store.load(model="other") == []
    assert not list(store.path.parent.glob(".surface.json.*"))  # no temp files left behind
    assert store.remove(changed.study) and len(store.load()) == len(points) - 1
    json.loads(store.path.read_text())
    # the atomic write keeps the permissions a plain open() would give (not mkstemp's 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert store.path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_store_refuses_a_corrupt_file(tmp_path):
    path = tmp_path / "surface.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="surface.json"):
        SurfaceStore(path).load()


def test_fit_recovers_a_smooth_function():
    model = SurfaceModel().fit(make_points(grid_coords(5)))  # 25 samples
    assert model.n_points_ == 25 and not model.few_points_
    rng = np.random.default_rng(1)
    test = [(rng.uniform(1.7, 3.8), rng.uniform(0.1, 0.9)) for _ in range(30)]
    for param in ("log10_elr", "reinit_frac", "freeze_frac", "log10_head_lr_mult"):
        mean, _ = model.predict_param(param, np.array([x for x, _ in test]), np.array([s for _, s in test]))
        expected = np.array([truth(x, s)[param] for x, s in test])
        rmse = float(np.sqrt(np.mean((mean - expected) ** 2)))
        spread = float(np.ptp(model.y_[param]))
        assert rmse < 0.05 * spread, (param, rmse, spread)
    pred = model.predict(3.0, 0.5)
    assert abs(pred.protocol.log10_elr - truth(3.0, 0.5)["log10_elr"]) < 0.05
    assert 0.0 <= pred.protocol.freeze_frac <= 1.0 and 0.0 <= pred.protocol.reinit_frac <= 1.0


def test_uncertainty_grows_away_from_the_data():
    # points only at small N and high similarity
    model = SurfaceModel().fit(make_points([(x, s) for x in (1.5, 2.0, 2.5) for s in (0.7, 0.85, 1.0)]))
    near = model.predict(2.0, 0.85).std
    far = model.predict(4.5, 0.0).std
    for param in near:
        assert far[param] > 3 * near[param], (param, near[param], far[param])
    assert any("extrapolation" in n for n in model.predict(4.5, 0.0).notes)


def test_few_points_say_so_and_widen():
    few = SurfaceModel().fit(make_points([(2.0, 0.5), (3.0, 0.2)]))
    pred = few.predict(2.5, 0.4)
    assert pred.few_points and pred.n_points == 2
    assert any("only 2" in n for n in pred.notes)
    prior = surface_prior(pred, num_groups=8)
    many = SurfaceModel().fit(make_points(grid_coords(5)))
    prior_many = surface_prior(many.predict(2.5, 0.4), num_groups=8)
    for name in ("log10_elr", "freeze_frac", "reinit_frac", "head_lr_mult"):
        w_few = prior.space.ranges[name].high - prior.space.ranges[name].low
        w_many = prior_many.space.ranges[name].high - prior_many.space.ranges[name].low
        assert w_few >= w_many - 1e-9, name
    # with few points the ELR half-width is 2 x the quadrant width (two decades either side)
    elr, c = prior.space.ranges["log10_elr"], prior.centre.log10_elr
    assert elr.high - c >= min(2 * WIDTHS["log10_elr"], 0.5 - c) - 1e-9
    assert c - elr.low >= min(2 * WIDTHS["log10_elr"], c + 3.5) - 1e-9


def test_surface_prior_centre_inside_its_space():
    model = SurfaceModel().fit(make_points(grid_coords(4)))
    for x, s in [(1.0, 0.0), (2.5, 0.5), (5.0, 1.0)]:
        prior = surface_prior(model.predict(x, s), num_groups=8)
        assert prior.kind == "surface"
        for name, rng in prior.space.ranges.items():
            assert rng.low - 1e-12 <= getattr(prior.centre, name) <= rng.high + 1e-12, name
        assert json.dumps(prior.to_dict())


def test_grid_info_and_html(tmp_path):
    model = SurfaceModel().fit(make_points(grid_coords(3)))
    info = surface_grid_info(model, "freeze_frac", 7)
    assert info.mean.shape == (7, 7) and info.std.shape == (7, 7)
    assert info.mean.min() >= 0.0 and info.mean.max() <= 1.0
    assert len(info.points_value) == 9 and info.points_label[0] == "study-0"
    # the grid reproduces the measured values at the measured points
    exact = surface_grid_info(model, "log10_elr", (info.points_log10_n[:1], info.points_similarity[:1]))
    assert abs(exact.mean[0, 0] - model.y_["log10_elr"][0]) < 0.05
    path = write_surface_html(model, tmp_path / "surface.html", grid=8)
    html = path.read_text()
    assert "plotly" in html.lower() and "study-8" in html and len(html) > 1_000_000  # plotly inline


def test_sweep_spec(tmp_path):
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text("model: fashion-source\ntargets: [builtin:digits]\nsizes: [100, 300]\nseeds: 2\n"
                         "trials: 3\nresolution: 16\nsteps: 12\n")
    spec = load_sweep_spec(spec_path)
    assert spec.seeds == [0, 1] and spec.sizes == [100, 300] and spec.trials == 3
    base = spec.base_settings()
    assert base.resolution == 16 and base.steps == 12 and base.model == "fashion-source"
    spec_path.write_text("model: m\ntargets: [a]\nsizes: [10]\nresolutoin: 16\n")
    with pytest.raises(UserError, match="resolutoin"):
        load_sweep_spec(spec_path)
    shipped = load_sweep_spec("studies/sweep-small.yaml")
    assert shipped.sizes == [100, 300, 1000] and shipped.seeds == [0, 1] and shipped.trials == 20
