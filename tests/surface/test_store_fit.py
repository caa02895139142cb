"""The surface store round-trips; the GP fit recovers a smooth function, widens away from data and with few
points; the residual fit follows the quadrant rules plus what the points add, and falls back to them."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from autotransfer.core.errors import UserError
from autotransfer.core.protocol import Protocol
from autotransfer.pipeline.sweep import load_sweep_spec
from autotransfer.prior.quadrant import WIDTHS
from autotransfer.report.surface_plots import surface_grid_info, write_surface_html
from autotransfer.surface import (
    SurfaceModel,
    SurfacePoint,
    SurfaceStore,
    prior_at_coordinates,
    prior_from_prediction,
)
from autotransfer.surface.fit import quadrant_values


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
        protocol = Protocol(
            log10_elr=t["log10_elr"],
            head_lr_mult=10 ** t["log10_head_lr_mult"],
            freeze_frac=t["freeze_frac"],
            reinit_frac=t["reinit_frac"],
        )
        points.append(
            SurfacePoint(
                study=f"study-{i}",
                target=f"builtin:t{i % 3}",
                model="fashion-source",
                n=int(10**x),
                seed=0,
                log10_n=x,
                similarity=s,
                protocol=protocol.to_dict(),
                score=0.5 + 0.01 * i,
                metric="accuracy",
                excess=[0.1, 0.2, 0.3],
            )
        )
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
    prior = prior_from_prediction(pred, num_groups=8)
    many = SurfaceModel().fit(make_points(grid_coords(5)))
    prior_many = prior_from_prediction(many.predict(2.5, 0.4), num_groups=8)
    for name in ("log10_elr", "freeze_frac", "reinit_frac", "head_lr_mult"):
        w_few = prior.spread[name]  # the start-up draws' spread (the searched space is wide either way)
        w_many = prior_many.spread[name]
        assert w_few >= w_many - 1e-9, name
    # with few points the ELR spread is at least 2 x the quadrant spread (two decades either side)
    assert prior.spread["log10_elr"] >= 2 * WIDTHS["log10_elr"] - 1e-9


def test_surface_prior_centre_inside_its_space():
    model = SurfaceModel().fit(make_points(grid_coords(4)))
    for x, s in [(1.0, 0.0), (2.5, 0.5), (5.0, 1.0)]:
        prior = prior_from_prediction(model.predict(x, s), num_groups=8)
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
    spec_path.write_text(
        "model: fashion-source\ntargets: [builtin:digits]\nsizes: [100, 300]\nseeds: 2\n"
        "trials: 3\nresolution: 16\nsteps: 12\n"
    )
    spec = load_sweep_spec(spec_path)
    assert spec.seeds == [0, 1] and spec.sizes == [100, 300] and spec.trials == 3
    base = spec.base_settings()
    assert base.resolution == 16 and base.steps == 12 and base.model == "fashion-source"
    spec_path.write_text("model: m\ntargets: [a]\nsizes: [10]\nresolutoin: 16\n")
    with pytest.raises(UserError, match="resolutoin"):
        load_sweep_spec(spec_path)
    shipped = load_sweep_spec("studies/sweep-small.yaml")
    assert shipped.sizes == [100, 300, 1000] and shipped.seeds == [0, 1] and shipped.trials == 20


# --- the task fields and the residual fit ---------------------------------------------------------
G = 5  # depth groups of the synthetic model


def task_inputs(x: float, s: float) -> dict:
    """The quadrant rules' inputs of a synthetic task at (log10 N, similarity): an excess profile
    rising with depth (more for far targets) and a transferability that follows similarity."""
    return {
        "excess": [0.02 * (k + 1) * (1.2 - s) for k in range(G)],
        "num_classes": 10,
        "transferability": 0.2 + 0.5 * s,
    }


def q_at(x: float, s: float) -> dict[str, float]:
    inputs = task_inputs(x, s)
    return quadrant_values(
        x, s, inputs["excess"], G, num_classes=inputs["num_classes"], transferability=inputs["transferability"]
    )


def offset(x: float, s: float) -> dict[str, float]:
    """A smooth correction to the quadrant rules (fractions left alone: they must stay in [0, 1])."""
    return {
        "log10_elr": 0.6 * math.sin(3.0 * x) * (0.5 + s),
        "log10_head_lr_mult": -0.4 * math.cos(2.5 * x),
        "freeze_frac": 0.0,
        "reinit_frac": 0.0,
    }


def task_points(coords, *, with_fields: bool = True, noise: float = 0.0, smooth: bool = True, seed: int = 0):
    """Points whose best protocol is the quadrant value + ``offset`` (when ``smooth``) + iid noise on the
    log parameters; ``with_fields=False`` records them as before the task fields existed."""
    rng = np.random.default_rng(seed)
    points = []
    for i, (x, s) in enumerate(coords):
        q, off = q_at(x, s), offset(x, s)
        y = {k: q[k] + (off[k] if smooth else 0.0) for k in q}
        y["log10_elr"] += noise * rng.standard_normal()
        y["log10_head_lr_mult"] += noise / 2 * rng.standard_normal()
        protocol = Protocol(
            log10_elr=y["log10_elr"],
            head_lr_mult=10 ** y["log10_head_lr_mult"],
            freeze_frac=y["freeze_frac"],
            reinit_frac=y["reinit_frac"],
        )
        inputs = task_inputs(x, s)
        points.append(
            SurfacePoint(
                study=f"task-{i}",
                target=f"builtin:t{i}",
                model="fashion-source",
                n=int(10**x),
                seed=0,
                log10_n=x,
                similarity=s,
                protocol=protocol.to_dict(),
                score=0.5,
                metric="accuracy",
                excess=inputs["excess"],
                num_groups=G,
                num_classes=inputs["num_classes"] if with_fields else 0,
                transferability=inputs["transferability"] if with_fields else None,
            )
        )
    return points


def task_coords():
    return [(x, s) for x in np.linspace(1.5, 3.0, 6) for s in np.linspace(0.2, 0.9, 5)]


def test_task_fields_round_trip_and_old_points_load(tmp_path):
    points = task_points(task_coords()[:3])
    store = SurfaceStore(tmp_path / "surface.json")
    store.add(points)
    loaded = store.load()
    assert [(p.num_classes, p.transferability) for p in loaded] == [(10, p.transferability) for p in points]
    assert loaded[1].transferability == pytest.approx(task_inputs(1.5, 0.375)["transferability"])
    # a point written before the fields existed still loads, as "unknown"
    old = {k: v for k, v in points[0].to_dict().items() if k not in ("num_classes", "transferability")}
    restored = SurfacePoint.from_dict(old)
    assert restored.num_classes == 0 and restored.transferability is None
    payload = json.loads(store.path.read_text())
    payload["points"] = [old]
    store.path.write_text(json.dumps(payload))
    assert store.load()[0].num_classes == 0
    with pytest.raises(ValueError, match="transferability"):
        SurfacePoint.from_dict({**points[0].to_dict(), "transferability": 1.5})
    with pytest.raises(ValueError, match="num_classes"):
        SurfacePoint.from_dict({**points[0].to_dict(), "num_classes": -1})


def test_residual_fit_recovers_the_offset_and_returns_to_the_rules_far_away():
    model = SurfaceModel().fit(task_points(task_coords()))
    assert model.residual_ and set(model.residual_gps_) == set(model.params)
    rng = np.random.default_rng(3)
    for x, s in [(rng.uniform(1.6, 2.9), rng.uniform(0.25, 0.85)) for _ in range(8)]:
        q = q_at(x, s)
        pred = model.predict(x, s, baseline=q)
        assert pred.residual and pred.baseline == pytest.approx(q)
        want = {k: q[k] + offset(x, s)[k] for k in q}
        assert pred.protocol.log10_elr == pytest.approx(want["log10_elr"], abs=0.08), (x, s)
        assert math.log10(pred.protocol.head_lr_mult) == pytest.approx(want["log10_head_lr_mult"], abs=0.05)
        assert pred.protocol.freeze_frac == pytest.approx(q["freeze_frac"], abs=1e-3)
        assert pred.protocol.reinit_frac == pytest.approx(q["reinit_frac"], abs=1e-3)
    # far beyond the measured sizes the residual GP's zero mean takes over: back to the quadrant rules
    for x, s in [(8.0, 0.5), (-4.0, 0.3)]:
        q = q_at(x, s)
        pred = model.predict(x, s, baseline=q)
        assert pred.protocol.log10_elr == pytest.approx(q["log10_elr"], abs=0.02), (x, s)
        assert math.log10(pred.protocol.head_lr_mult) == pytest.approx(q["log10_head_lr_mult"], abs=0.02)
        assert any("extrapolation" in n for n in pred.notes)
    # the plots still draw (the plain surface over log10 N x similarity)
    info = surface_grid_info(model, "log10_elr", 6)
    assert info.mean.shape == (6, 6) and np.all(np.isfinite(info.std))


def test_pure_noise_residuals_give_the_rules_and_narrow_ranges():
    sigma = 0.3
    points = task_points(task_coords(), noise=sigma, smooth=False, seed=7)
    model = SurfaceModel().fit(points)
    assert model.residual_
    residual_sd = float(np.std(model.y_["log10_elr"] - model.baseline_["log10_elr"]))
    assert residual_sd > 0.2  # the points really scatter around the rules
    queries = [(x, s) for x in np.linspace(1.6, 2.9, 5) for s in np.linspace(0.25, 0.85, 5)]
    dev, latent = [], []
    for x, s in queries:
        q = q_at(x, s)
        pred = model.predict(x, s, baseline=q)
        dev.append(abs(pred.protocol.log10_elr - q["log10_elr"]))
        latent.append(pred.std["log10_elr"])
    # close to the rules: on average within 3 standard errors of the mean of the noise draws
    assert np.mean(dev) < 3 * sigma / math.sqrt(len(points)) and np.max(dev) < sigma, (np.mean(dev), np.max(dev))
    # the scatter of noisy optima is not uncertainty about where to search: the latent std is
    # well below it, while the predictive std (noise=True) carries it
    x, s = queries[12]
    _, noisy = model.predict_param(
        "log10_elr", np.array([x]), np.array([s]), baseline=np.array([q_at(x, s)["log10_elr"]]), noise=True
    )
    assert np.mean(latent) < sigma / 2 < float(noisy[0]), (np.mean(latent), noisy)
    prior = prior_from_prediction(model.predict(x, s, baseline=q_at(x, s)), num_groups=G)
    assert prior.spread["log10_elr"] == pytest.approx(
        WIDTHS["log10_elr"]
    )  # the quadrant spread: not widened by the noise


def test_fallback_to_the_plain_gp_is_noted(tmp_path):
    coords = task_coords()
    old = SurfaceModel().fit(task_points(coords, with_fields=False))
    assert not old.residual_ and old.residual_gps_ == {}
    q = q_at(2.2, 0.5)
    pred = old.predict(2.2, 0.5, baseline=q)
    assert not pred.residual and pred.baseline is None
    assert any("lack num_classes" in n for n in pred.notes)
    plain_elr = pred.protocol.log10_elr
    # a residual-capable model asked without a baseline: the plain GP too, noted
    new = SurfaceModel().fit(task_points(coords))
    no_base = new.predict(2.2, 0.5)
    assert not no_base.residual and any("no quadrant baseline" in n for n in no_base.notes)
    assert no_base.protocol.log10_elr == pytest.approx(plain_elr, abs=1e-9)  # same plain GP, same points
    # prior_at_coordinates: the target's task fields switch the residual fit on, and the rationale says so
    path = tmp_path / "surface.json"
    SurfaceStore(path).add(task_points(coords))
    inputs = task_inputs(2.2, 0.5)
    with_fields = prior_at_coordinates(
        path,
        model="fashion-source",
        log10_n=2.2,
        similarity=0.5,
        num_groups=G,
        excess=inputs["excess"],
        num_classes=10,
        transferability=inputs["transferability"],
    )
    assert "residuals" in with_fields.rationale[0] and "quadrant" in with_fields.rationale[1]
    assert with_fields.centre.log10_elr == pytest.approx(q["log10_elr"] + offset(2.2, 0.5)["log10_elr"], abs=0.08)
    without = prior_at_coordinates(path, model="fashion-source", log10_n=2.2, similarity=0.5, num_groups=G)
    assert "constant mean" in without.rationale[0]
    assert any("no quadrant baseline" in line for line in without.rationale)
    # points recorded without a transferability: the target's baseline ignores its own, and says so
    SurfaceStore(path).add(
        [SurfacePoint.from_dict({**p.to_dict(), "transferability": None}) for p in task_points(coords)]
    )
    ignored = prior_at_coordinates(
        path,
        model="fashion-source",
        log10_n=2.2,
        similarity=0.5,
        num_groups=G,
        excess=inputs["excess"],
        num_classes=10,
        transferability=0.9,
    )
    assert any("no surface point records a transferability" in line for line in ignored.rationale)
    q_plain = quadrant_values(2.2, 0.5, inputs["excess"], G, num_classes=10)
    assert f"(quadrant {q_plain['log10_elr']:.3g}," in ignored.rationale[1]
    with pytest.raises(UserError, match="excess profile has 3 values"):
        prior_at_coordinates(
            path,
            model="fashion-source",
            log10_n=2.2,
            similarity=0.5,
            num_groups=G,
            excess=[0.1, 0.2, 0.3],
            num_classes=10,
        )


def test_point_from_study_records_the_task_fields():
    from autotransfer.core.schema import ATTR
    from autotransfer.surface.store import fields_from_study, point_from_study
    from tests.report.conftest import synthetic_study

    study = synthetic_study()
    point = point_from_study(study)
    assert point.num_classes == 10 and point.transferability is None  # the profile measured no LogME score
    assert fields_from_study(study) == (10, None)
    profile = study.user_attrs[ATTR["profile"]]
    study.set_user_attr(ATTR["profile"], {**profile, "transferability_score": 0.42})
    assert point_from_study(study).transferability == pytest.approx(0.42)
    # quadrant_values reads the centre of the prior the study was made with (quadrant_prior(2.2, 0.6, ...))
    centre = study.user_attrs[ATTR["prior"]]["centre"]
    q = quadrant_values(2.2, 0.6, point.excess, 5, num_classes=10)
    assert q == pytest.approx(
        {
            "log10_elr": centre["log10_elr"],
            "reinit_frac": centre["reinit_frac"],
            "freeze_frac": centre["freeze_frac"],
            "log10_head_lr_mult": math.log10(centre["head_lr_mult"]),
        }
    )


def test_neighbours_are_one_per_target_nearest_first_and_round_trip_in_the_prior(tmp_path):
    from autotransfer.prior.quadrant import Prior

    coords = [(2.0, 0.2), (2.05, 0.22), (2.0, 0.6), (3.0, 0.2), (3.5, 0.9), (2.1, 0.25)]
    points = make_points(coords)  # targets t0, t1, t2, t0, t1, t2
    model = SurfaceModel().fit(points)
    near = model.neighbours(2.0, 0.2, 3)
    # study-0 is on the query; study-1 (t1) and study-5 (t2) come next; study-3 (t0 again) is skipped
    assert [p.study for p in near] == ["study-0", "study-1", "study-5"]
    assert model.neighbours(2.0, 0.2, 0) == [] and len(model.neighbours(2.0, 0.2, 10)) == 3
    assert model.nearest(3.4, 0.85).study == "study-4"
    path = tmp_path / "surface.json"
    SurfaceStore(path).add(points)
    prior = prior_at_coordinates(path, model="fashion-source", log10_n=2.0, similarity=0.2, num_groups=8, neighbours=2)
    assert [s for s, _ in prior.candidates] == ["surface:study-0", "surface:study-1"]
    assert prior.candidates[0][1] == Protocol.from_dict(points[0].protocol)
    again = Prior.from_dict(json.loads(json.dumps(prior.to_dict())))
    assert again.candidates == prior.candidates
    assert (
        prior_at_coordinates(
            path, model="fashion-source", log10_n=2.0, similarity=0.2, num_groups=8, neighbours=0
        ).candidates
        == []
    )
    with pytest.raises(ValueError, match="k must be >= 0"):
        model.neighbours(2.0, 0.2, -1)
