"""The anytime numbers (``report.anytime``) and the ledger's rows, without plotly."""

from __future__ import annotations

import datetime as dt

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from autotransfer.core.schema import ATTR, CONTROL_ATTR, HISTORY_ATTR
from autotransfer.report.anytime import anytime_info, ledger_table
from autotransfer.report.summary import ledger_rows


def _trial(n, value, state=TrialState.COMPLETE, control=None, seconds=10.0, history=None):
    attrs = {"wall_time_s": seconds}
    if control:
        attrs[CONTROL_ATTR] = control
    if history:
        attrs[HISTORY_ATTR] = history
    start = dt.datetime(2026, 12, 7, 12, 0, 0) + dt.timedelta(minutes=n)
    return create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs=attrs,
        intermediate_values={1: value},
    ), start


def _study(ledger=None):
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(ATTR["settings"], {"metric": "accuracy"})
    if ledger:
        study.set_user_attr(ATTR["ledger"], ledger)
    for t, start in [
        _trial(0, 0.9, control="probe", seconds=2.0),  # a control: compute, never the best
        _trial(1, 0.5, history=[[1, 0.4], [2, 0.5], [3, 0.6]]),  # settled 0.5
        _trial(2, 0.3, state=TrialState.PRUNED, seconds=4.0),
        _trial(3, 0.8, history=[[1, 0.7], [2, 0.8], [3, 0.9]]),  # settled 0.8
        _trial(4, 0.6),
    ]:
        t.datetime_start, t.datetime_complete = start, start + dt.timedelta(seconds=30)
        study.add_trial(t)
    return study


def test_anytime_curve_is_the_running_best_settled_score_against_compute():
    info = anytime_info(_study({"training_s": 10.0}))
    assert info.numbers == [0, 1, 2, 3, 4]
    assert info.seconds == [2.0, 12.0, 16.0, 26.0, 36.0]
    assert info.trainings == pytest.approx([0.2, 1.2, 1.6, 2.6, 3.6])
    assert info.best[0] is None and info.best[1:] == pytest.approx([0.5, 0.5, 0.8, 0.8])
    assert anytime_info(_study()).trainings is None  # no ledger: seconds only


def test_ledger_rows_and_table():
    ledger = {
        "stages": {"search": 40.0, "final model": 20.0},
        "total_s": 60.0,
        "training_s": 10.0,
        "in_trainings": {"search": 4.0, "final model": 2.0, "total": 6.0},
    }
    rows = dict(ledger_rows(ledger))
    assert rows["  search"] == "40 s (4.00 trainings)" and rows["  total"] == "60 s (6.00 trainings)"
    assert ledger_rows(None) == []
    assert ledger_table(_study(ledger)) == [
        ["search", "40", "4.00"],
        ["final model", "20", "2.00"],
        ["total", "60", "6.00"],
    ]
