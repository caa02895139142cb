"""Progress on stderr: bars on a terminal; one plain line per stage and trial in a log (issue 31),
with the time left in the job's budget; labels in brackets survive rich markup."""

from __future__ import annotations

import io
from types import SimpleNamespace

from optuna.trial import TrialState
from rich.console import Console

from autotransfer.core.budget import Deadline
from autotransfer.core.protocol import Protocol
from autotransfer.search.progress import PlainUI, RichUI, make_ui


def _trial(number=3, **attrs):
    return SimpleNamespace(
        number=number,
        user_attrs={"source": "portfolio:#0", "freeze": 0, "reinit": 2, **attrs},
        state=TrialState.COMPLETE,
        value=0.8125,
    )


def test_a_log_gets_a_plain_line_per_stage_and_trial_with_the_time_left():
    out = io.StringIO()
    ui = make_ui(Console(file=out, force_terminal=False, width=200))
    assert isinstance(ui, PlainUI)
    ui.stage("estimating the task")
    ui.budget_start(Deadline.after(600.0))
    ui.search_start(total=8, done=0)
    ui.trial_start(_trial(), Protocol(log10_elr=-0.5))
    ui.trial_progress(5, 88)  # inside the search: no line per step
    ui.trial_end(_trial(wall_time_s=21.4))
    ui.trial_end(_trial(4, wall_time_s=9.0, budget_stopped_at=40))
    ui.search_end()
    ui.trial_progress(1, 88)
    ui.trial_progress(88, 88)
    lines = out.getvalue().splitlines()
    assert lines[0] == "» estimating the task"
    assert lines[1].startswith("  search: 0 of 8 search trials done; ") and lines[1].endswith("left in the budget")
    assert lines[2] == "  trial 3 [portfolio:#0] elr=0.316 f=0 r=2 one-stage: started"
    assert lines[3].startswith("  trial 3: complete 0.8125 in 21 s; ")
    assert "stopped by the time budget at step 40" in lines[4]
    assert lines[5].startswith("  training: 88 steps") and lines[6].startswith("  training: done in ")
    assert len(lines) == 7


def test_bracketed_labels_survive_rich_markup_in_the_trial_bar():
    out = io.StringIO()
    ui = RichUI(Console(file=out, force_terminal=True, width=200, color_system=None))
    ui.trial_start(_trial(source="control:probe#0"), Protocol())  # outside the search: a note
    text = out.getvalue()
    assert "[control:probe#0]" in text
    ui.close()
