"""Schedules in the search (issue 18): a study searches ``StudySettings.schedules``; with one-stage
only its trials carry no schedule parameter (the old search); enqueued protocols fit the searched
schedules; a requeued trial keeps its schedule; an old study reads as one-stage only; the CLI
refuses an unknown schedule in one line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autotransfer.core.protocol import SCHEDULES, ProtocolSpace
from autotransfer.core.schema import ATTR, CONTROL_ATTR, SOURCE_ATTR, UNFROZEN_ATTR
from autotransfer.prior import linear_probe_protocol, recommended_protocol
from autotransfer.search.run import build_runner, run_search
from autotransfer.search.storage import open_storage, requeue_trial
from autotransfer.search.study import (
    create_study,
    load_study,
    make_pruner,
    make_sampler,
    read_settings,
    read_space,
    resume_overrides,
)
from autotransfer.train.schedule import unfreeze_steps
from tests.search.conftest import prepared_tiny

LP_FT = replace(recommended_protocol(), schedule="lp-ft", stage_frac=0.5)
PROBE = (linear_probe_protocol(), {CONTROL_ATTR: "probe", SOURCE_ATTR: "control:probe#0"})


def _study(name, url, settings, enqueue):
    """A real tiny study (digits, fashion-source, 16 px, 12 steps) created over the wide space."""
    settings, prepared = prepared_tiny(replace(settings, prune=False))
    store = open_storage(url, heartbeat=False)
    create_study(name, store, settings, profile=None, prior=None, space=ProtocolSpace(), enqueue=enqueue)
    study = load_study(name, store, sampler=make_sampler(settings.seed), pruner=make_pruner(settings))
    return study, settings, prepared


def _expected_unfrozen(trial, steps):
    p, a = trial.params, trial.user_attrs
    return [
        list(u)
        for u in unfreeze_steps(steps, p["schedule"], p["stage_frac"], a["freeze"], a["reinit"], a["num_groups"])
    ]


def test_a_study_over_every_schedule_records_schedule_params(tiny_settings, storage_url):
    enqueue = [PROBE, (LP_FT, {SOURCE_ATTR: "prior"}), (recommended_protocol(), {SOURCE_ATTR: "survey:recommended"})]
    study, settings, prepared = _study("all", storage_url, replace(tiny_settings, trials=3), enqueue)
    assert settings.schedules == SCHEDULES and read_space(study).schedules == SCHEDULES
    runner = build_runner(study, settings, prepared)
    run_search(study, runner, 3)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    assert all(t.params["schedule"] in SCHEDULES and 0.1 <= t.params["stage_frac"] <= 0.8 for t in trials)
    probe, lp_ft, survey, sampled = trials
    assert probe.params["schedule"] == "one-stage" and UNFROZEN_ATTR not in probe.user_attrs
    assert survey.params["schedule"] == "one-stage" and UNFROZEN_ATTR not in survey.user_attrs
    # the LP-FT candidate: every pretrained group joined at step round(0.5 * 12) + 1 = 7
    assert lp_ft.params["schedule"] == "lp-ft" and lp_ft.params["stage_frac"] == 0.5
    assert lp_ft.user_attrs[UNFROZEN_ATTR] == _expected_unfrozen(lp_ft, settings.steps)
    assert {s for s, _ in lp_ft.user_attrs[UNFROZEN_ATTR]} == {7}
    if sampled.params["schedule"] != "one-stage":
        assert sampled.user_attrs.get(UNFROZEN_ATTR, []) == _expected_unfrozen(sampled, settings.steps)

    # a dead trial, enqueued or sampled, is queued again with its (categorical) schedule and re-runs it
    assert requeue_trial(study, lp_ft) and requeue_trial(study, sampled)
    run_search(study, runner, 5)
    for dead, rerun in zip((lp_ft, sampled), study.trials[-2:]):
        assert rerun.state == TrialState.COMPLETE and rerun.params == dead.params
        assert rerun.user_attrs.get(UNFROZEN_ATTR) == dead.user_attrs.get(UNFROZEN_ATTR)


def test_a_one_stage_study_suggests_no_schedule(tiny_settings, storage_url):
    settings = replace(tiny_settings, trials=2, schedules=("one-stage",))
    study, settings, prepared = _study("one", storage_url, settings, [(LP_FT, {SOURCE_ATTR: "prior"})])
    # the study's space follows its settings, and the enqueued LP-FT protocol was made one-stage
    assert read_space(study).schedules == ("one-stage",) and read_settings(study).schedules == ("one-stage",)
    assert study.trials[0].system_attrs["fixed_params"]["schedule"] == "one-stage"
    run_search(study, build_runner(study, settings, prepared), 2)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        assert "schedule" not in trial.params and "stage_frac" not in trial.params
        assert UNFROZEN_ATTR not in trial.user_attrs
    # the sampled trial's parameters are exactly the ones searched before schedules existed
    assert set(trials[1].params) == set(ProtocolSpace(schedules=("one-stage",)).ranges) - {"stage_frac"} | {"bn_mode"}


def test_enqueued_protocols_take_a_searched_schedule(tiny_settings, storage_url):
    """Without one-stage, enqueued protocols run the first searched schedule (a categorical must hold
    its value); the linear probe (f = G) trains the same under every schedule."""
    settings = replace(tiny_settings, trials=1, schedules=("gradual", "lp-ft"))
    study, settings, prepared = _study("no-one-stage", storage_url, settings, [PROBE])
    assert settings.schedules == ("lp-ft", "gradual")  # in SCHEDULES order
    run_search(study, build_runner(study, settings, prepared), 1)
    probe = study.trials[0]
    assert probe.state == TrialState.COMPLETE and probe.params["schedule"] == "lp-ft"
    assert UNFROZEN_ATTR not in probe.user_attrs  # nothing pretrained trains: nothing waited


def test_a_study_recorded_before_schedules_reads_one_stage_only(tiny_settings, storage_url):
    settings, _ = prepared_tiny(tiny_settings)
    store = open_storage(storage_url, heartbeat=False)
    study = create_study("old", store, settings, profile=None, prior=None, space=ProtocolSpace())
    old_settings = {k: v for k, v in study.user_attrs[ATTR["settings"]].items() if k != "schedules"}
    old_space = dict(study.user_attrs[ATTR["space"]])
    old_space.pop("schedules")
    old_space["ranges"] = {k: v for k, v in old_space["ranges"].items() if k != "stage_frac"}
    study.set_user_attr(ATTR["settings"], old_settings)
    study.set_user_attr(ATTR["space"], old_space)
    stored = read_settings(study)
    assert stored.schedules == ("one-stage",) and not read_space(study).searches_schedule
    note = resume_overrides(stored, settings)
    assert note is not None and "--schedules one-stage (this run: one-stage,lp-ft,gradual)" in note
    assert resume_overrides(stored, replace(settings, schedules=("one-stage",))) is None


def test_cli_refuses_an_unknown_schedule_in_one_line(tmp_path: Path):
    from tests.test_cli import ENTRY, assert_one_line_error, run_cli

    if not ENTRY.exists():
        import pytest

        pytest.skip("the autotransfer console script is not installed")
    done = run_cli(
        "tune", "builtin:digits", "--schedules", "one-stage,bogus", "--out", str(tmp_path / "o"), cwd=tmp_path
    )
    assert_one_line_error(done, "--schedules", "'bogus'", "one-stage, lp-ft, gradual")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.db"))


def test_optuna_categorical_holds_only_its_choices():
    """Why enqueued schedules are fitted to the study's: an enqueued value outside a categorical's
    choices fails the trial (optuna raises ValueError)."""
    study = optuna.create_study()
    study.enqueue_trial({"schedule": "one-stage"})
    study.optimize(
        lambda t: len(t.suggest_categorical("schedule", ["lp-ft", "gradual"])), n_trials=1, catch=(ValueError,)
    )
    assert study.trials[0].state == TrialState.FAIL
