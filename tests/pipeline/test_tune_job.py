"""``autotransfer.tune``: the job as the CLI runs it (issue 31): outputs under ``out``, the CLI's
defaults (time budget, surface prior), no prints, progress through ``logging`` unless asked."""

from __future__ import annotations

import logging

import pytest

import autotransfer
import autotransfer.pipeline.tune as tune_module
from autotransfer.core.errors import UserError
from autotransfer.core.settings import StudySettings
from autotransfer.pipeline.tune_job import LoggingUI

TINY = dict(model="fashion-source", n=160, resolution=16, batch_size=16, steps=12, views=2, device="cpu")


def test_a_tiny_job_writes_under_out_prints_nothing_and_logs(tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO, logger="autotransfer")
    result = autotransfer.tune("builtin:digits", out=tmp_path / "o", trials=2, study="api", **TINY)
    assert result.model_path == tmp_path / "o" / "runs" / "api"
    assert (result.model_path / "model.safetensors").exists()
    assert result.export_path == tmp_path / "o" / "exports" / "api.yaml" and result.export_path.exists()
    assert (tmp_path / "o" / "autotransfer.db").exists()
    out, err = capfd.readouterr()
    assert out == "" and "Trial 0 finished" not in err  # no prints, Optuna's per-trial lines quiet
    messages = [r.getMessage() for r in caplog.records if r.name == "autotransfer"]
    assert any(m.startswith("controls + search") for m in messages)
    assert any(m.startswith("trial ") for m in messages)
    assert any(m.startswith("forecast before any trial: accuracy") for m in messages)  # issue 30
    assert result.ledger is not None and result.plan is None  # --trials alone: no time limit
    # the surface is where the CLI keeps it, and the note says why a tiny study is not on it
    assert any("not recorded on the surface" in n and "surface.json" in n for n in result.notes)


def test_defaults_are_the_clis(tmp_path, monkeypatch):
    seen = {}

    def fake_tune(settings, **kwargs):
        seen.update(settings=settings, **kwargs)
        return "result"

    monkeypatch.setattr(tune_module, "tune", fake_tune)
    assert autotransfer.tune("builtin:digits", out=tmp_path) == "result"
    assert seen["time_budget"] == "auto"  # neither --trials nor --time-budget: the default budget
    assert seen["surface_store"] == tmp_path.resolve() / "surface.json"
    assert seen["runs_dir"] == tmp_path.resolve() / "runs" and seen["export_dir"] == tmp_path.resolve() / "exports"
    assert isinstance(seen["ui"], LoggingUI)
    autotransfer.tune("builtin:digits", out=tmp_path, time_budget="90s")
    assert seen["time_budget"] == 90.0
    autotransfer.tune("builtin:digits", out=tmp_path, trials=5)
    assert seen["time_budget"] is None and seen["settings"].trials == 5
    given = StudySettings(target="builtin:digits", trials=3)
    autotransfer.tune(given, out=tmp_path)
    assert seen["settings"] is given and seen["time_budget"] is None


def test_bad_input_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="--time-budget"):
        autotransfer.tune("builtin:digits", out=tmp_path, time_budget="soon")
    with pytest.raises(UserError, match="options"):
        autotransfer.tune(StudySettings(target="builtin:digits"), out=tmp_path, n=5)
    with pytest.raises(UserError):
        autotransfer.tune("builtin:digits", out=tmp_path, study="../x")
