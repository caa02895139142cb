"""A tiny real sweep (2 targets x 2 sizes, 3 trials, 16 px, fashion-source) end to end, then resumed."""

from __future__ import annotations

import time

import pytest

from autotransfer.core.settings import StudySettings
from autotransfer.pipeline.sweep import run_sweep
from autotransfer.report.surface_plots import surface_figure
from autotransfer.search.storage import open_storage
from autotransfer.search.study import load_study, search_trials
from autotransfer.surface import POINT_ATTR, SurfaceModel, SurfaceStore, prior_from_prediction


@pytest.mark.slow
def test_tiny_sweep_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRANSFER_SURFACE", str(tmp_path / "surface.json"))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    base = StudySettings(resolution=16, batch_size=16, steps=12, eval_every=4, views=2, device="cpu")
    targets = ["builtin:digits", "builtin:digits?classes=0-4"]
    seen: list[tuple[int, int, str]] = []
    kwargs = dict(
        trials=3,
        storage=storage,
        store_path=tmp_path / "surface.json",
        base_settings=base,
        export_dir=tmp_path / "exports",
        runs_dir=tmp_path / "runs",
    )
    result = run_sweep(
        targets,
        [80, 1000],
        "fashion-source",
        [0],
        on_study=lambda k, total, e: seen.append((k, total, e.status)),
        **kwargs,
    )
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(e.status == "done" for e in result.entries)
    capped = [e for e in result.entries if e.target.endswith("0-4") and e.size == 1000][0]
    assert capped.n < 1000 and any("capped" in n for n in capped.notes)
    assert capped.study.endswith(f"-n{capped.n}-s0")

    points = SurfaceStore(tmp_path / "surface.json").load()
    assert sorted(p.study for p in points) == sorted(e.study for e in result.entries)
    store = open_storage(storage)
    for p in points:
        study = load_study(p.study, store)
        assert len(search_trials(study)) == 3
        assert study.user_attrs[POINT_ATTR] == p.to_dict()
        assert 0.0 <= p.similarity <= 1.0 and p.excess and 0.0 < p.score <= 1.0
    assert sorted(p.n for p in points) == sorted(e.n for e in result.entries)
    # the coordinate counts the images the estimate saw: train + val, never the test split
    assert all(0.75 * p.n <= 10**p.log10_n < p.n for p in points)

    # resumable: a second run finds every study finished and records the same points
    t0 = time.perf_counter()
    again = run_sweep(targets, [80, 1000], "fashion-source", [0], **kwargs)
    assert all(e.status == "done" for e in again.entries)
    for e in again.entries:
        assert len(search_trials(load_study(e.study, store))) == 3
    assert len(SurfaceStore(tmp_path / "surface.json").load()) == 4
    print(f"resume of 4 finished studies: {time.perf_counter() - t0:.1f} s")

    # the surface fits (few points) and gives a prior; the dashboard hook draws it
    model = SurfaceModel().fit(points)
    pred = model.predict(2.5, points[0].similarity)
    assert pred.few_points is False and pred.n_points == 4
    prior = prior_from_prediction(pred, num_groups=points[0].num_groups)
    assert prior.kind == "surface"
    fig = surface_figure(load_study(points[0].study, store))
    assert fig is not None and any(t.name == "this study" for t in fig.data)
