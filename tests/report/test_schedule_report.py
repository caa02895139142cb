"""The reports show the schedule of the best protocol: the rich summary, the HTML report, the
dashboard note, the prior table, the model card, ``tune``'s prior line; importances and the
prior-against-found rows handle a categorical ``schedule`` (docs/design.md, "Schedules")."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from rich.console import Console

from autotransfer.core.protocol import Protocol, ProtocolSpace, describe_schedule
from autotransfer.core.settings import PriorSpec
from autotransfer.report import figures as F
from autotransfer.report.dashboard import study_note
from autotransfer.report.html import report_html
from autotransfer.search.study import read_attr
from tests.report.conftest import synthetic_study

LPFT = Protocol(log10_elr=-1.0, head_lr_mult=20.0, freeze_frac=0.6, reinit_frac=0.25, schedule="lp-ft", stage_frac=0.4)


def schedule_study():
    """The synthetic study with a varied schedule; the best trial (0.50) is lp-ft, 40% first stage."""
    search = [
        (Protocol(log10_elr=-1.5, freeze_frac=0.4), 0.40, {4: 0.3, 12: 0.40}, "prior"),
        (LPFT, 0.50, {4: 0.3, 12: 0.50}, "search"),
        (replace(LPFT, schedule="gradual", log10_elr=-2.0, stage_frac=0.6), 0.45, {4: 0.3, 12: 0.45}, "search"),
        (Protocol(log10_elr=-2.5, head_lr_mult=5.0, freeze_frac=0.2), 0.20, {4: 0.1, 12: 0.20}, "search"),
        (replace(LPFT, log10_elr=-3.0, schedule="gradual", stage_frac=0.2), 0.15, {4: 0.1, 12: 0.15}, "search"),
    ]
    return synthetic_study(search=search)


def test_describe_schedule_words():
    assert describe_schedule("one-stage", 0.3) == "one-stage"
    assert describe_schedule("lp-ft", 0.3) == "lp-ft (first stage 30% of the budget)"
    assert describe_schedule("gradual", 0.25) == "gradual (last group unfrozen at 25% of the budget)"


def test_overview_html_and_dashboard_note_show_the_best_schedule():
    study = schedule_study()
    ov = F.overview_info(study)
    assert ov.schedule == "lp-ft (first stage 40% of the budget)"
    assert "schedule lp-ft (first stage 40% of the budget)" in report_html(study)
    assert "; schedule lp-ft (first stage 40% of the budget)" in study_note(study)
    # a study before schedules: one-stage
    assert F.overview_info(synthetic_study()).schedule == "one-stage"


def test_prior_found_rows_and_importances_handle_the_categorical_schedule():
    study = schedule_study()
    info = F.prior_found_info(study)
    rows = {r.param: r for r in info.rows}
    assert rows["schedule"].found == "lp-ft" and rows["schedule"].prior_pos is None
    assert rows["stage_frac"].found == pytest.approx(0.4)
    assert rows["stage_frac"].found_pos == pytest.approx((0.4 - 0.1) / 0.7)
    text = {row[0]: row for row in F.prior_found_rows(info, "accuracy")}
    assert text["schedule"][3] == "lp-ft" and text["schedule"][2] == ""
    importance = F.importance_info(study)
    assert importance.reason is None and "schedule" in importance.params
    assert math.isclose(sum(importance.importances), 1.0, rel_tol=1e-6)


def test_a_one_stage_only_study_has_no_schedule_rows():
    from autotransfer.core.schema import ATTR

    study = synthetic_study()
    study.set_user_attr(ATTR["space"], ProtocolSpace(schedules=("one-stage",)).to_dict())
    params = [r.param for r in F.prior_found_info(study).rows]
    assert "schedule" not in params and "stage_frac" not in params and "bn_mode" in params
    # a space stored before schedules existed reads as one-stage only, too
    space = {k: v for k, v in ProtocolSpace().to_dict().items() if k != "schedules"}
    space["ranges"].pop("stage_frac")
    study.set_user_attr(ATTR["space"], space)
    assert "schedule" not in [r.param for r in F.prior_found_info(study).rows]


def test_summary_table_shows_the_schedule():
    from autotransfer.pipeline.outcome import TuneResult
    from autotransfer.report.summary import summary_table
    from autotransfer.search.study import read_settings

    study = schedule_study()
    result = TuneResult(
        study_name="s",
        storage="sqlite:///x.db",
        settings=read_settings(study),
        best_protocol=LPFT,
        best_trial=6,
        val_score=0.5,
        test_score=None,
        controls={},
        negative_transfer=False,
        export_path=None,
        model_path=None,
        n_search_trials=5,
        profile=None,
        prior=None,
        integers=(3, 1),
    )
    console = Console(width=200, record=True)
    console.print(summary_table(result))
    out = console.export_text()
    assert "schedule" in out and "lp-ft (first stage 40% of the budget)" in out


def test_describe_prior_names_the_centre_schedule():
    from autotransfer.pipeline.outcome import describe_prior

    study = schedule_study()
    prior = read_attr(study, "prior")
    # the synthetic study searches every schedule: a one-stage centre is named too
    one = {**prior, "centre": Protocol().to_dict()}
    assert describe_prior(PriorSpec.parse("quadrant"), one).endswith("; centre schedule one-stage")
    lpft = {**prior, "centre": LPFT.to_dict()}
    assert describe_prior(PriorSpec.parse("quadrant"), lpft).endswith(
        "; centre schedule lp-ft (first stage 40% of the budget)"
    )
    # one-stage only (or a prior stored before schedules existed): as before
    old = {**prior, "space": {k: v for k, v in prior["space"].items() if k != "schedules"}}
    old["centre"] = {k: v for k, v in prior["centre"].items() if k not in ("schedule", "stage_frac")}
    assert "schedule" not in describe_prior(PriorSpec.parse("quadrant"), old)


def test_prior_table_shows_the_schedule():
    from autotransfer.prior.quadrant import Prior
    from autotransfer.report.profile_table import prior_table

    study = schedule_study()
    prior = Prior.from_dict(read_attr(study, "prior"))
    prior = replace(prior, centre=LPFT)
    console = Console(width=200, record=True)
    console.print(prior_table(prior))
    out = console.export_text()
    assert "lp-ft (first stage 40% of the budget)" in out and "one-stage, lp-ft, gradual" in out
    assert "stage_frac" in out
    one = replace(prior, centre=Protocol(), space=ProtocolSpace(schedules=("one-stage",)))
    console = Console(width=200, record=True)
    console.print(prior_table(one))
    out = console.export_text()
    assert "stage_frac" not in out and "schedule" in out


def test_model_card_lists_the_schedule():
    from autotransfer.handback.model_card import model_card

    config = {"autotransfer": {"protocol": LPFT.to_dict(), "settings": {"target": "builtin:digits"}}}
    assert "| schedule | lp-ft (first stage 40% of the budget) |" in model_card(config, "m")
    old = {"autotransfer": {"protocol": {"log10_elr": -1.0}, "settings": {}}}
    assert "| schedule | one-stage |" in model_card(old, "m")
