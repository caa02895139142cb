"""Accuracy along protocol slices: exact numbers on hand-set studies; 2 tiny real studies, the HTML, the CLI."""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.trial import TrialState

from autotransfer.core.protocol import Protocol
from autotransfer.core.schema import CONTROL_ATTR
from autotransfer.core.settings import StudySettings
from autotransfer.pipeline.sweep import run_sweep
from autotransfer.report.slices import SLICE_PARAMS, load_slice_info, slice_info, study_slice
from autotransfer.report.surface_plots import slices_figure, write_surface_html
from autotransfer.search.storage import open_storage
from autotransfer.search.study import best_transfer_trial, load_study, search_trials
from autotransfer.surface import SurfaceModel, SurfaceStore
from tests.report.conftest import synthetic_study

_EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=", re.IGNORECASE)


# --- hand-set studies: exact numbers ------------------------------------------------------------


def test_slice_normalises_to_the_best_and_flags_pruned_trials():
    s = study_slice(synthetic_study())
    assert s is not None and s.study == "synthetic"
    # coordinates from the profile (no surface point): 160 images, similarity 0.6
    assert (s.n, s.similarity) == (160, 0.6) and s.log10_n == pytest.approx(math.log10(160))
    assert s.numbers.tolist() == [5, 6, 7, 8, 9]  # search trials only: the 5 controls are left out
    assert s.pruned.tolist() == [False, False, True, False, False]
    assert s.steps.tolist() == [12, 12, 4, 12, 12]  # the pruned trial is scored at its last report
    np.testing.assert_allclose(s.score, [0.40, 0.35, 0.05, 0.45, 0.20])
    assert s.best_index == 3 and s.numbers[s.best_index] == 8 and s.best_score == 0.45
    np.testing.assert_allclose(s.relative, [-0.05, -0.10, -0.40, 0.0, -0.25], atol=1e-12)
    np.testing.assert_allclose(s.values["log10_elr"][[1, 2, 3, 4]], [-1.5, -0.5, -1.0, -2.5])
    np.testing.assert_allclose(s.values["freeze_frac"][[1, 3]], [0.4, 0.6])
    np.testing.assert_allclose(s.values["reinit_frac"][[2, 3]], [0.5, 0.25])
    np.testing.assert_allclose(s.values["log10_head_lr_mult"][[1, 2, 3, 4]], np.log10([10.0, 3.0, 20.0, 5.0]))
    assert s.sources[:3] == ["prior", "survey:recommended", "survey:less-similar"]
    assert set(s.values) == set(SLICE_PARAMS)


def test_best_falls_back_to_the_best_search_trial_when_a_probe_control_wins():
    study = synthetic_study(probe=(0.9, 0.1))
    assert best_transfer_trial(study).user_attrs[CONTROL_ATTR] == "probe"
    s = study_slice(study)
    assert s.numbers[s.best_index] == 8 and s.best_score == 0.45 and s.relative.max() == 0.0


def test_a_study_without_a_completed_search_trial_is_left_out_with_a_note():
    only_pruned = [(Protocol(log10_elr=-1.0), None, {4: 0.1}, "prior")]
    info = slice_info([synthetic_study(search=only_pruned), synthetic_study()])
    assert len(info.studies) == 1 and len(info.notes) == 1 and "no completed search trial" in info.notes[0]
    assert info.params == list(SLICE_PARAMS) and "minus" in info.normalisation


def test_slices_figure_draws_one_trace_per_study_and_panel():
    a = study_slice(synthetic_study())
    b = a._replace(study="other", n=1000, similarity=0.2)
    fig = slices_figure(slice_info([])._replace(studies=[a, b]))
    per_study = [t for t in fig.data if t.legendgroup == "synthetic"]
    assert len(per_study) == 2 * len(SLICE_PARAMS)  # the trials and the best star, in every panel
    stars = [t for t in per_study if t.marker.symbol == "star"]
    assert [t.y[0] for t in stars] == [0.0] * len(SLICE_PARAMS)
    assert stars[0].x[0] == -1.0  # trial 8's log10 ELR
    trials = next(t for t in per_study if t.marker.symbol != "star")
    assert list(trials.marker.symbol) == ["circle", "circle", "circle-open", "circle", "circle"]
    other = next(t for t in fig.data if t.legendgroup == "other" and t.marker.symbol != "star")
    assert other.marker.symbol[0] == "square"  # the second size gets the second symbol
    assert trials.marker.color != other.marker.color  # coloured by similarity


# --- two tiny real studies from a sweep ---------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2 real studies (builtin:digits, 50 and 100 images, fashion-source, 16 px, 4 steps, 3 search trials)."""
    workdir = tmp_path_factory.mktemp("slices")
    url = f"sqlite:///{workdir / 'studies.db'}"
    base = StudySettings(resolution=16, batch_size=16, steps=4, eval_every=2, views=1, device="cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_sweep(
            ["builtin:digits"],
            [50, 100],
            "fashion-source",
            [0],
            trials=3,
            storage=url,
            store_path=workdir / "surface.json",
            base_settings=base,
            export_dir=workdir / "exports",
            runs_dir=workdir / "runs",
        )
    finally:
        torch.set_num_threads(before)
    assert [e.status for e in result.entries] == ["done", "done"]
    return workdir, url


def test_slices_of_real_studies_match_their_trials(sweep):
    workdir, url = sweep
    points = SurfaceStore(workdir / "surface.json").load()
    ghost = replace(points[0], study="not-in-storage")
    info = load_slice_info([*points, ghost], url)
    assert [s.study for s in info.studies] == [p.study for p in points]
    assert len(info.notes) == 1 and "not-in-storage" in info.notes[0] and "not in the storage" in info.notes[0]
    storage = open_storage(url, heartbeat=False)
    for s, p in zip(info.studies, points):
        assert (s.n, s.similarity, s.log10_n) == (p.n, p.similarity, p.log10_n)
        study = load_study(s.study, storage)
        trials = {t.number: t for t in search_trials(study)}
        assert sorted(trials) == s.numbers.tolist() and len(s.numbers) == 3  # every finished search trial
        assert s.pruned.tolist() == [trials[n].state == TrialState.PRUNED for n in s.numbers]
        for i, n in enumerate(s.numbers):
            t = trials[n]
            if t.state == TrialState.COMPLETE:
                assert s.score[i] == t.value
            else:
                assert s.score[i] == t.intermediate_values[max(t.intermediate_values)]
            assert s.values["log10_elr"][i] == t.params["log10_elr"]
            assert s.values["log10_head_lr_mult"][i] == pytest.approx(math.log10(t.params["head_lr_mult"]))
        complete = ~s.pruned
        assert s.best_score == s.score[complete].max() and s.relative[s.best_index] <= 0.0
        np.testing.assert_allclose(s.relative, s.score - s.best_score)
        assert s.relative[complete].max() == 0.0
        best = best_transfer_trial(study)
        if CONTROL_ATTR not in best.user_attrs:  # the surface point's protocol is the marked best
            assert s.numbers[s.best_index] == best.number and s.score[s.best_index] == p.score
            assert s.values["log10_elr"][s.best_index] == pytest.approx(p.protocol["log10_elr"])


def test_surface_html_contains_the_slices_and_is_self_contained(sweep, tmp_path):
    workdir, url = sweep
    points = SurfaceStore(workdir / "surface.json").load()
    model = SurfaceModel().fit(points)
    html = write_surface_html(model, tmp_path / "surface.html", grid=6, storage=url).read_text()
    assert "accuracy along protocol slices" in html and "study best" in html
    assert all(p.study in html for p in points)
    assert not _EXTERNAL_SCRIPT.search(html) and len(html) > 1_000_000  # plotly inline, nothing fetched
    # no storage: the surface alone, with no slices; a missing storage file: a note, not an error
    plain = write_surface_html(model, tmp_path / "plain.html", grid=6).read_text()
    assert "accuracy along protocol slices" not in plain
    missing = write_surface_html(
        model, tmp_path / "missing.html", grid=6, storage=f"sqlite:///{tmp_path / 'nope.db'}"
    ).read_text()
    assert "accuracy along protocol slices" not in missing and "does not exist" in missing
    assert not (tmp_path / "nope.db").exists()  # drawing never creates a storage


def test_cli_surface_html_passes_the_storage_through(sweep, tmp_path, monkeypatch, capsys):
    from autotransfer.cli import main

    workdir, url = sweep
    out = tmp_path / "cli.html"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "autotransfer",
            "surface",
            "--store",
            str(workdir / "surface.json"),
            "--storage",
            url,
            "--html",
            str(out),
            "--format",
            "json",
        ],
    )
    try:
        main()
    except SystemExit as done:
        assert done.code in (0, None)
    payload = json.loads(capsys.readouterr().out)
    assert payload["points"] == 2 and Path(payload["html"]) == out
    html = out.read_text()
    assert "accuracy along protocol slices" in html and not _EXTERNAL_SCRIPT.search(html)
