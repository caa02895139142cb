"""Progress display for long jobs on stderr: during the search a bar for the whole study and one for the
trial in flight; outside it (the pick's cross-validation, the final retrain) a bar per training run.
When stderr is not a terminal (a log file, nohup, CI, a batch scheduler), ``PlainUI`` writes one
plain line per stage and per trial instead, with the time left in the job's budget."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from autotransfer.core.schema import FREEZE_ATTR, REINIT_ATTR

__all__ = ["NullUI", "RichUI", "PlainUI", "make_ui", "trial_label"]


def trial_label(trial: Any, protocol: Any) -> str:
    """``trial 3 [portfolio:#0] elr=0.3 f=0 r=2 one-stage``: what the trial runs."""
    label = trial.user_attrs.get("source") or "tpe"
    f, r = trial.user_attrs.get(FREEZE_ATTR), trial.user_attrs.get(REINIT_ATTR)
    schedule = getattr(protocol, "schedule", "one-stage")
    return f"trial {trial.number} [{label}] elr={protocol.elr:.3g} f={f} r={r} {schedule}"


def _time_left(clock: Any) -> str:
    """``; 3 min 20 s left in the budget``, or ``""`` without a budget."""
    from autotransfer.core.budget import format_duration

    left = clock.left() if clock is not None else None
    return "" if left is None else f"; {format_duration(left)} left in the budget"


def make_ui(console: Console | None = None) -> "NullUI":
    """``RichUI`` on a terminal, ``PlainUI`` when ``console`` (stderr by default) is not one."""
    console = console or Console(stderr=True)
    return RichUI(console) if console.is_terminal else PlainUI(console)


class NullUI:
    """Silent progress (library use, tests)."""

    def stage(self, text: str) -> None: ...

    def note(self, text: str) -> None: ...

    def search_start(self, total: int, done: int) -> None: ...

    def search_advance(self, done: int) -> None: ...

    def search_end(self) -> None: ...

    def trial_start(self, trial: Any, protocol: Any) -> None: ...

    def trial_progress(self, step: int, total: int) -> None: ...

    def trial_end(self, trial: Any) -> None: ...

    def budget_start(self, clock: Any) -> None: ...

    def close(self) -> None: ...


class PlainUI(NullUI):
    """One plain line per stage, note and trial on stderr, for logs: no bars, no colour."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.clock: Any = None
        self.total = 0
        self.in_search = False
        self.total_steps: int | None = None  # the training outside the search in flight
        self.started = 0.0

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()

    def stage(self, text: str) -> None:
        self._line(f"» {text}{_time_left(self.clock)}")

    def note(self, text: str) -> None:
        self._line(f"  {text}")

    def budget_start(self, clock: Any) -> None:
        self.clock = clock

    def search_end(self) -> None:
        self.in_search = False

    def search_start(self, total: int, done: int) -> None:
        self.total, self.in_search = total, True
        self._line(f"  search: {done} of {total} search trials done{_time_left(self.clock)}")

    def trial_start(self, trial: Any, protocol: Any) -> None:
        self._line(f"  {trial_label(trial, protocol)}: started")

    def trial_progress(self, step: int, total: int) -> None:
        """Outside the search (a retrain, ``train --config``): a line when a training starts and ends."""
        if self.in_search:
            return
        if self.total_steps is None and step <= 1:
            self.total_steps, self.started = total, time.monotonic()
            self._line(f"  training: {total} steps{_time_left(self.clock)}")
        if step >= total and self.total_steps is not None:
            self._line(f"  training: done in {time.monotonic() - self.started:.0f} s{_time_left(self.clock)}")
            self.total_steps = None

    def trial_end(self, trial: Any) -> None:
        seconds = trial.user_attrs.get("wall_time_s")
        took = f" in {float(seconds):.0f} s" if seconds is not None else ""
        state = trial.state.name.lower()
        value = f" {trial.value:.4f}" if trial.value is not None else ""
        why = ""
        if trial.user_attrs.get("budget_stopped_at") is not None:
            why = f" (stopped by the time budget at step {trial.user_attrs['budget_stopped_at']})"
        elif trial.user_attrs.get("fail_reason"):
            why = f" ({trial.user_attrs['fail_reason']})"
        self._line(f"  trial {trial.number}: {state}{value}{took}{why}{_time_left(self.clock)}")


class RichUI(NullUI):
    """Rich progress bars on stderr: the study (finished search trials) and the running trial (steps)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        # each task id is read only while its Progress is set, and is added together with it
        self.progress: Progress | None = None
        self.study_task = TaskID(0)
        self.trial_task = TaskID(0)
        self.run: Progress | None = None  # one training run outside the search
        self.run_task = TaskID(0)
        self.clock: Any = None  # the job's time budget (``core.budget.Deadline``), once planned

    def budget_start(self, clock: Any) -> None:
        self.clock = clock

    def stage(self, text: str) -> None:
        self._end_run()
        self.console.print(f"[bold cyan]»[/bold cyan] {text}")

    def note(self, text: str) -> None:
        self._end_run()
        self.console.print(f"  {text}", highlight=False)

    def search_start(self, total: int, done: int) -> None:
        self._end_run()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.study_task = self.progress.add_task("search trials", total=total, completed=min(done, total))
        self.trial_task = self.progress.add_task("trial", total=1, completed=0)

    def search_advance(self, done: int) -> None:
        if self.progress is not None:
            total = self.progress.tasks[0].total or done
            self.progress.update(self.study_task, completed=min(done, total))

    def search_end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def trial_start(self, trial: Any, protocol: Any) -> None:
        text = escape(trial_label(trial, protocol))
        if self.progress is not None:
            self.progress.update(self.study_task, description=f"search trials{_time_left(self.clock)}")
            self.progress.update(self.trial_task, description=text, completed=0)
        else:
            self.note(text)

    def trial_progress(self, step: int, total: int) -> None:
        """The running trial's bar during the search; outside it, a bar per training run (a run
        starts at step 1 and its bar is printed complete at its last step)."""
        if self.progress is not None:
            self.progress.update(self.trial_task, completed=step, total=total)
            return
        if self.run is None or step <= 1:
            self._end_run()
            self.run = Progress(
                TextColumn("  training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.run.start()
            self.run_task = self.run.add_task("training", total=total)
        self.run.update(self.run_task, completed=step, total=total)
        if step >= total:
            self._end_run()

    def _end_run(self) -> None:
        if self.run is not None:
            self.run.stop()
            self.run = None

    def close(self) -> None:
        """Stop any bar still drawn (the job ended or failed mid-run)."""
        self._end_run()
        self.search_end()
