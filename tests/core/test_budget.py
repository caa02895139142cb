"""The job's time budget: durations as users write them, the clock, and the compute ledger."""

from __future__ import annotations

import time

import pytest

from autotransfer.core.budget import Deadline, Ledger, format_duration, parse_duration
from autotransfer.core.errors import UserError


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("600", 600),
        ("90s", 90),
        ("10m", 600),
        ("1h", 3600),
        ("1.5h", 5400),
        ("1h30m", 5400),
        (" 2 min ", 120),
        (45, 45),
    ],
)
def test_durations_as_users_write_them(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0", "-5", "abc", "10x", "", "5m3", "1e9999", "m", "nan"])
def test_a_bad_duration_is_one_line_naming_the_option(text):
    with pytest.raises(UserError, match="--time-budget") as err:
        parse_duration(text)
    assert "\n" not in str(err.value)


def test_format_duration():
    assert format_duration(42.3) == "42 s"
    assert format_duration(75) == "1 min 15 s"
    assert format_duration(120) == "2 min"
    assert format_duration(3720) == "1 h 2 min"


def test_deadline_counts_down_and_holds_back_a_reserve():
    clock = Deadline.after(100.0)
    left = clock.left()
    assert left is not None and 99.0 < left <= 100.0
    assert not clock.expired()
    assert clock.earlier(100.0).expired()  # everything held back for later stages
    none = Deadline.after(None)
    assert none.left() is None and not none.expired() and not none.earlier(1e9).expired()
    short = Deadline.after(0.01)
    time.sleep(0.02)
    assert short.expired() and short.left() == 0.0


def test_ledger_in_trainings():
    ledger = Ledger()
    ledger.add("search", 30.0)
    ledger.add("search", 10.0)
    ledger.add("final model", 20.0, trainings=2)
    assert ledger.in_trainings(40.0) is None  # no unit measured yet
    ledger.training_s = 10.0
    d = ledger.to_dict()
    assert d["stages"] == {"search": 40.0, "final model": 20.0}
    assert d["total_s"] == 60.0
    assert d["in_trainings"] == {"search": 4.0, "final model": 2.0, "total": 6.0}
    assert d["trainings_run"] == {"final model": 2.0}
