"""Progress display for long jobs on stderr: during the search a bar for the whole study and one for the
trial in flight; outside it (the pick's cross-validation, the final retrain) a bar per training run."""

from __future__ import annotations

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

__all__ = ["NullUI", "RichUI"]


class NullUI:
    """Silent progress (library use, tests)."""

    def stage(self, text: str) -> None: ...

    def note(self, text: str) -> None: ...

    def search_start(self, total: int, done: int) -> None: ...

    def search_advance(self, done: int) -> None: ...

    def search_end(self) -> None: ...

    def trial_start(self, trial: Any, protocol: Any) -> None: ...

    def trial_progress(self, step: int, total: int) -> None: ...

    def close(self) -> None: ...


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
        label = trial.user_attrs.get("source") or "tpe"
        f, r = trial.user_attrs.get(FREEZE_ATTR), trial.user_attrs.get(REINIT_ATTR)
        text = escape(f"trial {trial.number} [{label}] elr={protocol.elr:.3g} f={f} r={r}")  # "[tpe]" is no tag
        if self.progress is not None:
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
