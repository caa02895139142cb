"""``tune``'s data-curve stage (issue 30): a tiny real run on digits measures the curve through the
stage, records it on the study, the ledger and the JSON summary; ``--no-data-curve`` skips it; a
resume keeps it; the plan holds its time or says why not."""

from __future__ import annotations

import pytest

import autotransfer
from autotransfer.core.schema import ATTR
from autotransfer.pipeline.plan import MIN_SEARCH_TRAININGS, plan_job

TINY = dict(model="fashion-source", n=160, resolution=16, batch_size=16, steps=12, views=2, device="cpu")


def test_the_curve_runs_through_the_stage_and_a_resume_keeps_it(tmp_path):
    from autotransfer.report.dashboard import VIEW_IDS, study_views
    from autotransfer.search.storage import open_storage
    from autotransfer.search.study import load_study

    out = tmp_path / "o"
    # --trials alone: no time budget, so by default no curve
    off = autotransfer.tune("builtin:digits", out=out, trials=2, study="dc", **TINY)
    assert off.data_curve is None and "data curve" not in off.ledger["stages"]

    on = autotransfer.tune("builtin:digits", out=out, trials=2, study="dc", data_curve=True, **TINY)
    curve = on.data_curve
    assert curve is not None and on.to_dict()["data_curve"] == curve
    # 25%, 50%, 100% of the 120 training images, each scored on the 40 validation + test images
    assert [p["images"] for p in curve["points"]] == [30, 60, 120]
    assert {p["scored_on"] for p in curve["points"]} == {40}
    assert curve["labelled"] == 160 and curve["share"] == pytest.approx(140 / 160)
    assert curve["line"].startswith("data curve: ") and curve["line"] in on.notes
    assert curve["prior"]["tasks"]  # corrected by the shipped past tasks
    assert on.ledger["stages"]["data curve"] > 0 and on.ledger["trainings_run"]["data curve"] > 0
    study = load_study("dc", open_storage(f"sqlite:///{out / 'autotransfer.db'}"))
    assert study.user_attrs[ATTR["data_curve"]]["curve"]["line"] == curve["line"]
    assert VIEW_IDS["data_curve"] in study_views(study)

    again = autotransfer.tune("builtin:digits", out=out, trials=2, study="dc", data_curve=False, **TINY)
    assert again.data_curve == curve and "data curve" not in again.ledger["stages"]
    assert any("kept the one measured for trial" in n for n in again.notes)


def test_the_curve_reuses_the_trials_own_model(tmp_path):
    result = autotransfer.tune("builtin:digits", out=tmp_path, trials=2, study="dc", data_curve=True, **TINY)
    curve = result.data_curve
    assert curve is not None
    # 25% and 50% trained and scored on validation + test; 100% is the trial's kept model, on test alone
    assert [(p["images"], p["scored_on"]) for p in curve["points"]] == [(30, 40), (60, 40), (120, 20)]
    assert 0 < result.ledger["trainings_run"]["data curve"] < 2


def test_the_plan_holds_the_curve_or_says_why_not():
    roomy = plan_job(budget_s=1000, left_s=1000, training_s=10, members=3, data_curve=2.0)
    assert roomy.data_curve_s == 20 and "data curve" in roomy.describe()
    assert roomy.search_s == pytest.approx(1000 - roomy.final_s - 20)
    tight = plan_job(budget_s=80, left_s=70, training_s=10, members=3, data_curve=2.0)
    assert tight.data_curve_s == 0 and any(n.startswith("data curve skipped") for n in tight.notes)
    assert tight.search_s == pytest.approx(70 - tight.final_s)  # the search keeps it all
    held = plan_job(budget_s=80, left_s=70, training_s=10, members=3, data_curve=2.0, data_curve_held=True)
    assert held.data_curve_s == 20 and not any(n.startswith("data curve") for n in held.notes)
    assert held.search_s is not None and held.search_s < MIN_SEARCH_TRAININGS * 10
    assert plan_job(budget_s=None, left_s=None, training_s=10, members=3, data_curve=2.0).data_curve_s == 20


@pytest.mark.parametrize(("flag", "expected"), [(None, None), ("--data-curve", True), ("--no-data-curve", False)])
def test_the_cli_flag_reaches_the_job(monkeypatch, tmp_path, flag, expected):
    from typer.testing import CliRunner

    import autotransfer.pipeline.tune_job as tune_job_module
    from autotransfer.cli import app
    from autotransfer.core.errors import UserError

    seen = {}

    def fake(target, **kwargs):
        seen.update(kwargs)
        raise UserError("stopped here")

    monkeypatch.setattr(tune_job_module, "tune_job", fake)
    args = ["tune", "builtin:digits", "--out", str(tmp_path)] + ([flag] if flag else [])
    done = CliRunner().invoke(app, args)
    assert isinstance(done.exception, UserError) and seen["data_curve"] is expected
